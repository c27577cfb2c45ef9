"""What the daemon tells the rest of the program: one observer interface.

The daemon does the work (sweep, deliver, reload, stop) and reports it; everything that only *shows* the
work subscribes here: the Prometheus metrics (``metrics.Metrics``), systemd's ``STATUS=``/``READY=1``/watchdog
(``systemd.SystemdObserver``), the ``/readyz`` health record (``HealthObserver`` below), the terminal's live
table (``liveview.LiveViewObserver``) and, later, a status page. An observer overrides any of these methods:

- ``on_state(state, report)``: the lifecycle moved: READY (startup done, or a reload done or rejected),
  RELOADING, STOPPING (shutdown began), STOPPED (sweeps and deliveries are over).
- ``on_sweep(report)``: a sweep ended, successfully or not.
- ``on_delivery(sink, outcome)``: one delivery attempt ended: delivered | retry | dead | disabled.
- ``on_task(name, what, error)``: a supervised task (``watcher.supervisor``) ``crashed`` (with the error) or was
  ``restarted``.
- ``on_store(ok, error)``: the state store stopped answering (``ok`` False, with the reason) or answers again.
- ``on_ingress(outcome, reason)``: one request reached the ingress (``[ingress]``): accepted | duplicate |
  rejected (``reason``: the ``signing.Rejection`` value) | unrecorded.
- ``on_callback(run_id, outcome, seconds)``: a recorded callback is done (``confirm.Outcome``), ``seconds``
  after it was received.
- ``on_events(events)``: events stored outside a sweep (a callback's look or confirmation), new to the store.

Calls are synchronous, on the event loop, in subscription order. An observer must not block; one that raises
is logged and skipped, never the daemon's problem. ``Report`` is a snapshot of what the daemon knows; its
``runs`` mapping is the daemon's own, to be read, never changed, and not kept across calls.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from watcher.model import Event, TrackedRun
from watcher.sweep import SweepResult

log = structlog.get_logger("watcher.observer")


class State(enum.StrEnum):
    READY = "ready"
    RELOADING = "reloading"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Report:
    """The daemon's picture after a sweep (or at a state change)."""

    now_ms: int  # wall-clock ms (the daemon's clock)
    monotonic: float  # the daemon's clock, seconds
    runs: Mapping[str, TrackedRun]  # every tracked run by id (active and recently ended)
    sinks: tuple[str, ...]  # configured sink names
    interval: float  # [watch].interval in force, seconds
    outbox: Mapping[str, int] = field(default_factory=dict)  # pending deliveries by sink
    oldest_pending_age_s: float | None = None  # age of the oldest pending delivery
    sweep: SweepResult | None = None  # the last sweep; None before the first one (and on a standby instance)
    api_wait_s: float = 0.0  # seconds the API client waited for its request budget or a 429 during that sweep
    store_error: str | None = None  # why the state store does not answer now (None: it does)

    @property
    def active(self) -> int:
        """Tracked runs not yet terminal."""
        return sum(1 for t in self.runs.values() if not t.terminal)

    @property
    def pending(self) -> int:
        return sum(self.outbox.values())

    @property
    def api_ok(self) -> bool:
        """The last sweep reached the API (True before the first sweep; a sweep that failed on a state store
        that is away says nothing against the API)."""
        return self.sweep is None or self.sweep.ok or self.store_error is not None

    @property
    def new_events(self) -> list[Event]:
        """Events the last sweep stored for the first time (in detection order)."""
        if self.sweep is None or not self.sweep.new_event_ids:
            return []
        new = set(self.sweep.new_event_ids)
        return [e for e in self.sweep.events if e.id in new]


class Observer:
    """Base class: every method does nothing; subscribers override what they need."""

    def on_state(self, state: State, report: Report) -> None:
        return None

    def on_sweep(self, report: Report) -> None:
        return None

    def on_delivery(self, sink: str, outcome: str) -> None:
        return None

    def on_task(self, name: str, what: str, error: str | None) -> None:
        return None

    def on_store(self, ok: bool, error: str | None) -> None:
        return None

    def on_ingress(self, outcome: str, reason: str | None) -> None:
        return None

    def on_callback(self, run_id: str, outcome: str, seconds: float) -> None:
        return None

    def on_events(self, events: Sequence[Event]) -> None:
        return None


class Observers(Observer):
    """Fans every call out to the subscribers; one that raises is logged and the others still run."""

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.subscribers: list[Observer] = list(observers)

    def subscribe(self, observer: Observer) -> None:
        self.subscribers.append(observer)

    def unsubscribe(self, observer: Observer) -> None:
        if observer in self.subscribers:
            self.subscribers.remove(observer)

    def _each(self, method: str, *args: object) -> None:
        for observer in tuple(self.subscribers):
            try:
                getattr(observer, method)(*args)
            except Exception as exc:  # showing the work must never stop the work
                log.exception("observer.failed", observer=type(observer).__name__, call=method,
                              error=f"{type(exc).__name__}: {exc}")

    def on_state(self, state: State, report: Report) -> None:
        self._each("on_state", state, report)

    def on_sweep(self, report: Report) -> None:
        self._each("on_sweep", report)

    def on_delivery(self, sink: str, outcome: str) -> None:
        self._each("on_delivery", sink, outcome)

    def on_task(self, name: str, what: str, error: str | None) -> None:
        self._each("on_task", name, what, error)

    def on_store(self, ok: bool, error: str | None) -> None:
        self._each("on_store", ok, error)
    def on_ingress(self, outcome: str, reason: str | None) -> None:
        self._each("on_ingress", outcome, reason)

    def on_callback(self, run_id: str, outcome: str, seconds: float) -> None:
        self._each("on_callback", run_id, outcome, seconds)

    def on_events(self, events: Sequence[Event]) -> None:
        self._each("on_events", events)


class HealthObserver(Observer):
    """Keeps ``server.HealthSource`` (what ``/readyz`` answers) in step with the sweeps and the shutdown."""

    def __init__(self, health) -> None:  # server.HealthSource
        self.health = health

    def on_sweep(self, report: Report) -> None:
        if report.sweep is None:
            return
        if report.sweep.ok:
            self.health.sweep_ok(report.now_ms)
        else:
            self.health.sweep_failed(report.sweep.error or "the sweep failed")

    def on_state(self, state: State, report: Report) -> None:
        self.health.interval = report.interval  # a reload may change it
        if state is State.STOPPING:
            self.health.stopping = True  # /readyz answers 503 "shutting down" while deliveries drain
