"""Readiness: does this instance do its job in its role? Pure: the facts in, one decision out (``/readyz``, the
status page's banner and ``/api/v1/status`` all show it).

An instance has one of three roles:

* ``sweeper``: it sweeps (the SQLite store's only instance, or the PostgreSQL instance holding the sweeper
  lease) and delivers. Ready while a sweep succeeded within ``sweep_window_s`` (three sweep intervals).
* ``standby``: another instance holds the lease of its watch scope; it delivers and stands by to take over.
  Ready while its lease heartbeat succeeded within ``heartbeat_window_s`` (the lease: after that the others
  count it dead and take its claims).
* ``starting``: its state store has not opened yet.

In every role it is not ready while shutting down, while its state store is unreachable, or while a supervised
task (a sink worker, the sweep loop, the lease keeper, ...) is down; the reason says which, in that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SWEEPER, STANDBY, STARTING = "sweeper", "standby", "starting"


@dataclass(frozen=True, slots=True)
class Facts:
    now_ms: int
    role: str  # SWEEPER | STANDBY | STARTING
    stopping: bool = False
    store_error: str | None = None  # why the state store does not answer (None: it does)
    tasks_down: Mapping[str, str] = field(default_factory=dict)  # supervised task -> why it is down
    last_sweep_ok_ms: int | None = None
    last_sweep_error: str | None = None  # the last failed sweep's reason, when it failed after the last good one
    sweep_window_s: float = 15.0
    last_heartbeat_ok_ms: int | None = None  # a standby's last successful lease tick
    heartbeat_window_s: float = 15.0


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    role: str
    reason: str

    def line(self) -> str:
        """The ``/readyz`` body: ``ok: sweeper, last successful sweep 2.1s ago`` or
        ``not ready: standby, state store unreachable: connection refused``."""
        return f"{'ok' if self.ready else 'not ready'}: {self.role}, {self.reason}"


def _age_s(now_ms: int, then_ms: int) -> float:
    return max(0, now_ms - then_ms) / 1000


def _with(reason: str, error: str | None) -> str:
    return f"{reason}: {error}" if error else reason


def decide(f: Facts) -> Readiness:
    """Whether the instance is ready, and the one-line reason. Pure."""

    def no(reason: str) -> Readiness:
        return Readiness(False, f.role, reason)

    if f.stopping:
        return no("shutting down")
    if f.store_error is not None:
        return no(f"state store unreachable: {f.store_error}")
    if f.tasks_down:
        name = sorted(f.tasks_down)[0]
        more = len(f.tasks_down) - 1
        return no(f"task {name} down: {f.tasks_down[name]}" + (f" (and {more} more)" if more else ""))
    if f.role == STARTING:
        return no("opening the state store")
    if f.role == STANDBY:
        if f.last_heartbeat_ok_ms is None:
            return no("no lease heartbeat yet")
        age = _age_s(f.now_ms, f.last_heartbeat_ok_ms)
        if age > f.heartbeat_window_s:
            return no(f"last lease heartbeat {age:.0f}s ago (limit {f.heartbeat_window_s:g}s)")
        return Readiness(True, f.role, f"lease heartbeat {age:.1f}s ago, another instance sweeps")
    if f.last_sweep_ok_ms is None:
        return no(_with("no successful sweep yet", f.last_sweep_error))
    age = _age_s(f.now_ms, f.last_sweep_ok_ms)
    if age > f.sweep_window_s:
        return no(_with(f"last successful sweep {age:.0f}s ago (limit {f.sweep_window_s:g}s)", f.last_sweep_error))
    return Readiness(True, f.role, f"last successful sweep {age:.1f}s ago")
