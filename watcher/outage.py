"""Quiet, truthful logs while something the daemon needs is down: the FLORA API, or the state store.

A failed sweep every ``interval`` seconds used to log several lines each time (86,000 a day at interval 5).
Now an outage is told in a handful of lines: the first failure (``api.unavailable``), a reminder with the
count of failed sweeps and the time since the last success after 1, 5, 15 and 60 minutes and then every hour
(``api.still_unavailable``), and one line when a sweep succeeds again, with the outage's length
(``api.recovered``). While an outage is known, the per-request lines of the API client and the per-sweep
lines drop to debug. A state store that is away (PostgreSQL down or restarting, SQLite locked or its disk full)
is told the same way: ``store.unavailable``, ``store.still_unavailable``, ``store.recovered`` (``StoreHealth``,
shared by every part of the daemon that uses the store).

``decide`` is the pure rule (state in, state and at most one line out; the time is an argument);
``OutageLog`` is the thin shell that keeps the state and writes the line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from watcher.policy import retry_delay

# Reminders, counted from the first failed sweep of the outage; after the last one, every LAST_GAP_MS.
REMINDERS_MS: tuple[int, ...] = (60_000, 300_000, 900_000, 3_600_000)
LAST_GAP_MS = 3_600_000
# A part of the daemon that finds the state store away tries again after 0.5 s, doubling to 5 s (jittered):
# cheap for the database, and back within seconds of its return.
STORE_RETRY_FIRST_S = 0.5
STORE_RETRY_MAX_S = 5.0


def store_retry_s(attempt: int, rand: float) -> float:
    """Seconds before trying the state store again after ``attempt + 1`` failures in a row. Pure."""
    return retry_delay(attempt, rand, first=STORE_RETRY_FIRST_S, cap=STORE_RETRY_MAX_S)


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


def decide(state: OutageState, *, ok: bool, now_ms: int, error: str | None = None, subject: str = "api",
           counted: str = "failed_sweeps") -> tuple[OutageState, Line | None]:
    """The outage state after one attempt (a sweep, for the API), and the line to log (None: nothing to say).
    ``subject`` names the lines (``api.unavailable``, ``store.unavailable``, ...), ``counted`` the field that
    counts the failed attempts. Pure."""
    if ok:
        if state.since_ms is None:
            return replace(state, last_success_ms=now_ms), None
        line = Line(f"{subject}.recovered", "info", {
            "outage_s": _seconds(now_ms - state.since_ms),
            counted: state.failed_sweeps,
        })
        return OutageState(last_success_ms=now_ms), line
    if state.since_ms is None:
        line = Line(f"{subject}.unavailable", "warning", {
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
    line = Line(f"{subject}.still_unavailable", "warning", {
        "error": error,
        counted: failed,
        "outage_s": _seconds(now_ms - state.since_ms),
        "last_success_s_ago": None if state.last_success_ms is None else _seconds(now_ms - state.last_success_ms),
    })
    return replace(state, failed_sweeps=failed, reminders=reminders), line


def _seconds(ms: int) -> int:
    return max(0, ms // 1000)


class OutageLog:
    """Keeps the outage state across attempts and logs what ``decide`` says."""

    def __init__(self, logger: Any, *, subject: str = "api", counted: str = "failed_sweeps") -> None:
        self.log = logger
        self.subject = subject
        self.counted = counted
        self.state = OutageState()

    @property
    def ongoing(self) -> bool:
        return self.state.ongoing

    def observe(self, *, ok: bool, now_ms: int, error: str | None = None) -> None:
        self.state, line = decide(self.state, ok=ok, now_ms=now_ms, error=error, subject=self.subject,
                                  counted=self.counted)
        if line is not None:
            getattr(self.log, line.level)(line.event, **line.fields)

    def sweep_done(self, *, ok: bool, now_ms: int, error: str | None = None) -> None:
        self.observe(ok=ok, now_ms=now_ms, error=error)


class StoreHealth:
    """Whether the state store answers, as every part of the daemon that uses it finds out (the sweep loop, each
    sink worker, the outcome log, the lease keeper): one outage, logged once by ``OutageLog`` (``store.*``).

    The outage begins with the first part that fails and ends when every part that failed has succeeded again
    (a store that still takes reads but refuses writes is still down for the part that writes). ``reason`` is
    the first failing part's error, for ``/readyz``; ``on_change(ok, reason)`` is told when the outage begins
    and ends."""

    def __init__(self, logger: Any, now_ms: Callable[[], int],
                 on_change: Callable[[bool, str | None], None] | None = None) -> None:
        self.outage = OutageLog(logger, subject="store", counted="failures")
        self.now_ms = now_ms
        self.on_change = on_change
        self.failing: dict[str, str] = {}  # part -> its last error
        # Told when a call succeeds while some part is failing: the store answers, so the parts waiting out
        # their backoff (the sink workers, up to 5 s) may try again at once.
        self.on_answer: list[Callable[[], None]] = []

    @property
    def ok(self) -> bool:
        return not self.failing

    @property
    def reason(self) -> str | None:
        return next(iter(self.failing.values()), None)

    def failed(self, part: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else str(error)
        was_ok = not self.failing
        self.failing[part] = text
        self.outage.observe(ok=False, now_ms=self.now_ms(), error=f"{part}: {text}")
        if was_ok and self.on_change is not None:
            self.on_change(False, text)

    def forget(self, part: str) -> None:
        """``part`` no longer uses the store (a removed sink worker, a sweeper turned standby): its failure no
        longer keeps the outage open. Unlike ``succeeded``, it says nothing about the store answering."""
        if part in self.failing:
            del self.failing[part]
            if not self.failing:
                self.outage.observe(ok=True, now_ms=self.now_ms())
                if self.on_change is not None:
                    self.on_change(True, None)

    def _answered(self) -> None:
        for listener in self.on_answer:
            listener()

    def succeeded(self, part: str) -> None:
        if part not in self.failing:  # the common case: one dict lookup
            if self.failing:
                self._answered()
            return
        del self.failing[part]
        self._answered()
        if not self.failing:
            self.outage.observe(ok=True, now_ms=self.now_ms())
            if self.on_change is not None:
                self.on_change(True, None)
