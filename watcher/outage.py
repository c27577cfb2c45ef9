"""Quiet, truthful logs while the FLORA API is down.

A failed sweep every ``interval`` seconds used to log several lines each time (86,000 a day at interval 5).
Now an outage is told in a handful of lines: the first failure (``api.unavailable``), a reminder with the
count of failed sweeps and the time since the last success after 1, 5, 15 and 60 minutes and then every hour
(``api.still_unavailable``), and one line when a sweep succeeds again, with the outage's length
(``api.recovered``). While an outage is known, the per-request lines of the API client and the per-sweep
lines drop to debug.

``decide`` is the pure rule (state in, state and at most one line out; the time is an argument);
``OutageLog`` is the thin shell that keeps the state and writes the line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

# Reminders, counted from the first failed sweep of the outage; after the last one, every LAST_GAP_MS.
REMINDERS_MS: tuple[int, ...] = (60_000, 300_000, 900_000, 3_600_000)
LAST_GAP_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class OutageState:
    last_success_ms: int | None = None  # the last successful sweep (None: none since the process started)
    since_ms: int | None = None  # the first failed sweep of the current outage; None while the API is fine
    failed_sweeps: int = 0
    reminders: int = 0  # reminders written in this outage

    @property
    def ongoing(self) -> bool:
        return self.since_ms is not None


@dataclass(frozen=True, slots=True)
class Line:
    event: str
    level: str  # "warning" | "info"
    fields: dict[str, Any] = field(default_factory=dict)


def reminder_due_ms(since_ms: int, reminders: int) -> int:
    """When reminder number ``reminders`` (0-based) of an outage that began at ``since_ms`` is due."""
    if reminders < len(REMINDERS_MS):
        return since_ms + REMINDERS_MS[reminders]
    return since_ms + REMINDERS_MS[-1] + (reminders - len(REMINDERS_MS) + 1) * LAST_GAP_MS


def decide(state: OutageState, *, ok: bool, now_ms: int, error: str | None = None) -> tuple[OutageState, Line | None]:
    """The outage state after one sweep, and the line to log (None: nothing to say). Pure."""
    if ok:
        if state.since_ms is None:
            return replace(state, last_success_ms=now_ms), None
        line = Line("api.recovered", "info", {
            "outage_s": _seconds(now_ms - state.since_ms),
            "failed_sweeps": state.failed_sweeps,
        })
        return OutageState(last_success_ms=now_ms), line
    if state.since_ms is None:
        line = Line("api.unavailable", "warning", {
            "error": error,
            "last_success_s_ago": None if state.last_success_ms is None else _seconds(now_ms - state.last_success_ms),
            "note": "reminders follow after 1, 5, 15 and 60 minutes, then hourly; one line when it recovers",
        })
        return replace(state, since_ms=now_ms, failed_sweeps=1, reminders=0), line
    failed = state.failed_sweeps + 1
    if now_ms < reminder_due_ms(state.since_ms, state.reminders):
        return replace(state, failed_sweeps=failed), None
    reminders = state.reminders + 1
    while now_ms >= reminder_due_ms(state.since_ms, reminders):  # after a long stall, skip the missed ones
        reminders += 1
    line = Line("api.still_unavailable", "warning", {
        "error": error,
        "failed_sweeps": failed,
        "outage_s": _seconds(now_ms - state.since_ms),
        "last_success_s_ago": None if state.last_success_ms is None else _seconds(now_ms - state.last_success_ms),
    })
    return replace(state, failed_sweeps=failed, reminders=reminders), line


def _seconds(ms: int) -> int:
    return max(0, ms // 1000)


class OutageLog:
    """Keeps the outage state across sweeps and logs what ``decide`` says."""

    def __init__(self, logger: Any) -> None:
        self.log = logger
        self.state = OutageState()

    @property
    def ongoing(self) -> bool:
        return self.state.ongoing

    def sweep_done(self, *, ok: bool, now_ms: int, error: str | None = None) -> None:
        self.state, line = decide(self.state, ok=ok, now_ms=now_ms, error=error)
        if line is not None:
            getattr(self.log, line.level)(line.event, **line.fields)
