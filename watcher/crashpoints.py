"""Test-only crash points, for the crash-consistency harness (docs/reliability.md).

Off unless ``FLORA_WATCHER_CRASH_POINTS`` names points (comma-separated); then, at a named point, the process
kills itself with SIGKILL with probability ``FLORA_WATCHER_CRASH_PROBABILITY`` (default 1.0). Points:

* ``after_commit`` — a sweep's transitions and deliveries are committed, nothing sent yet;
* ``before_send``  — a delivery was claimed and is about to be sent;
* ``after_send``   — the receiver confirmed (2xx / fsync / exit 0), the delivery is not yet recorded;
* ``catchup_batch`` — a batch of a deep window (the catch-up after a downtime) is committed, the window goes on;
* ``callback_answered`` — a FLORA callback is recorded and answered 200, its run not yet confirmed.

Never set these in production: the process dies on purpose.
"""

from __future__ import annotations

import os
import random
import signal

_POINTS = frozenset(p.strip() for p in os.environ.get("FLORA_WATCHER_CRASH_POINTS", "").split(",") if p.strip())
try:
    _PROBABILITY = float(os.environ.get("FLORA_WATCHER_CRASH_PROBABILITY", "1"))
except ValueError:
    _PROBABILITY = 1.0
_RNG = random.Random()

KNOWN_POINTS = ("after_commit", "before_send", "after_send", "catchup_batch", "callback_answered")


def crash_point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) when the harness asked for this point."""
    if _POINTS and name in _POINTS and _RNG.random() < _PROBABILITY:
        os.kill(os.getpid(), signal.SIGKILL)
