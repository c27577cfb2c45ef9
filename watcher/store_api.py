"""The state store as the engine sees it: one ``typing.Protocol`` that every store implementation satisfies.

The sweep, the dispatcher, the daemon and the status server depend on :class:`StateStore` and the value types
here (``Delivery``, ``DeliveryRow``, ``SinkState``, ``Outcome``, the delivery states), never on a concrete store.
``store.AsyncStore`` (SQLite on one worker thread) and ``store_pg.PgStore`` implement it; what they share is
written once in ``store_sql``. Another backend (an in-memory double) implements the same coroutines and passes
the same tests.

Guarantees every implementation keeps:

* ``commit_sweep`` writes tracked runs, events, one pending delivery per (new event, sink) and the meta keys in
  ONE transaction, durable when it returns, before anything is sent. An event id that already exists adds no
  delivery (re-detection after a crash sends nothing twice); it returns the ids it inserted.
  ``commit_and_claim`` does the same and, in that transaction, claims new deliveries for this process's sink
  workers as ``due_deliveries`` would (run order kept), so they are handed over without a read.
* Events are stored as their exact JSON body bytes, so every retry and replay sends the same bytes.
* Every backend error surfaces as ``errors.StoreError`` with a message an operator can act on.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from watcher.model import Event, TrackedRun

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"  # the states of a delivery
RETRY = "retry"  # an outcome: try again at its next_attempt_ms (the row stays pending)


# ------------------------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class Delivery:
    """One pending delivery, as the dispatcher sends it. ``body`` is the exact JSON the receiver gets."""

    id: int
    event_id: str
    sink: str
    attempts: int
    created_ms: int
    next_attempt_ms: int
    body: bytes
    run_id: str = ""

    @functools.cached_property
    def event(self) -> Event:
        return Event.from_dict(json.loads(self.body))

    @classmethod
    def new(cls, id: int, event: Event, sink: str, now_ms: int, body: bytes) -> Delivery:
        """A delivery just inserted by a sweep commit, carrying the ``event`` it was built from (not parsed
        again from ``body``)."""
        delivery = cls(id, event.id, sink, 0, now_ms, now_ms, body, event.run_id)
        delivery.__dict__["event"] = event  # the cached_property's slot
        return delivery


@dataclass(frozen=True, slots=True)
class SweepCommit:
    """What ``commit_and_claim`` committed: the ids of the events new to the store, and of their new deliveries
    the ones it claimed for this process's sink workers (hand-off: the workers send them without reading
    them back; on PostgreSQL they are claimed in the commit's transaction, so no other instance sends them).

    ``claimed``: in id order (the order a claim reads them), at most the ``take`` limit of each sink, never one
    behind an earlier pending delivery of the same run to the same sink (a claim would not give it either).
    ``left``: sink -> how many of its new deliveries were not claimed for being over its limit (due now, in
    the outbox). ``behind``: sink -> the runs whose new delivery waits behind an earlier pending one (claimable
    once that one is settled)."""

    new_ids: list[str]
    claimed: list[Delivery] = field(default_factory=list)
    left: dict[str, int] = field(default_factory=dict)
    behind: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One line of ``flora-watcher deliveries``: a pending delivery or a dead letter."""

    id: int
    event_id: str
    event_type: str
    run_id: str
    sink: str
    state: str
    attempts: int
    created_ms: int
    next_attempt_ms: int
    last_error: str | None
    last_status: int | None
    last_attempt_ms: int | None
    delivered_ms: int | None
    dead_ms: int | None


@dataclass(frozen=True, slots=True)
class SinkState:
    """Health of one sink. ``disabled_reason`` set = the sink is disabled (e.g. its receiver answered 410)."""

    name: str
    disabled_reason: str | None = None
    disabled_ms: int | None = None
    last_success_ms: int | None = None
    last_failure_ms: int | None = None
    last_error: str | None = None
    consecutive_failures: int = 0

    @property
    def disabled(self) -> bool:
        return self.disabled_reason is not None


@dataclass(frozen=True, slots=True)
class RecordedCallback:
    """A FLORA callback the ingress verified and recorded (``record_callbacks``), until it is done."""

    delivery_id: str  # "whd_…": the primary key, so a replayed delivery is recorded once
    run_id: str
    type: str  # "run.completed" | "run.failed" (as FLORA sent it)
    run_type: str | None
    workspace_id: str | None
    received_ms: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """One delivery's outcome for ``record_outcomes``.

    ``state``: ``delivered`` (whatever state the row was in: delivered is the truth), ``retry`` (try again at
    ``next_attempt_ms``; only a pending row changes) or ``dead`` (only a pending row changes). ``attempted``:
    the outcome follows a send (counted in ``attempts``). ``health``: True/False counts as a success/failure
    of the sink in its health record; None leaves it alone.
    """

    delivery_id: int
    sink: str
    state: str
    now_ms: int
    status: int | None = None
    error: str | None = None
    next_attempt_ms: int | None = None
    attempted: bool = True
    health: bool | None = None


# ------------------------------------------------------------------------------------------ the protocol


class StateStore(Protocol):
    """Every coroutine the engine awaits on its state store."""

    @property
    def path(self) -> str: ...  # where the state lives, for log lines and `status`

    # --- meta: small key/value strings ("first_start_ms", "high_watermark_ms:<filters>", ...)
    async def get_meta(self, key: str) -> str | None: ...
    async def all_meta(self) -> dict[str, str]: ...
    async def set_meta(self, items: dict[str, str]) -> None: ...
    async def ensure_meta(self, key: str, value: str) -> str: ...  # set once; returns the stored value

    # --- tracked runs and the sweep's one write
    async def load_tracked(self) -> dict[str, TrackedRun]: ...
    async def commit_sweep(
        self,
        *,
        upserts: Iterable[TrackedRun],
        deletes: Iterable[str],
        events: Iterable[tuple[Event, Sequence[str]]],  # (event, names of the sinks it goes to)
        meta: dict[str, str],
        now_ms: int,
    ) -> list[str]: ...
    async def commit_and_claim(  # commit_sweep, and claim for this process up to take[sink] of the new deliveries
        self,
        *,
        upserts: Iterable[TrackedRun],
        deletes: Iterable[str],
        events: Iterable[tuple[Event, Sequence[str]]],
        meta: dict[str, str],
        now_ms: int,
        take: Mapping[str, int],
    ) -> SweepCommit: ...

    # --- the outbox
    async def due_deliveries(self, sink: str, now_ms: int, limit: int = 100, after: tuple[int, int] | None = None,
                             exclude: Collection[int] = ()) -> list[Delivery]: ...  # exclude: held, left out
    async def oldest_pending(self, sink: str) -> Delivery | None: ...  # queued first, due or not (a probe)
    async def next_due_ms(self, sink: str, after_ms: int | None = None) -> int | None: ...
    async def record_outcomes(self, outcomes: Sequence[Outcome]) -> None: ...  # many outcomes, one transaction
    async def make_due(self, sink: str, now_ms: int) -> int: ...  # every pending delivery of the sink, due now
    async def dead_letter_sink(self, sink: str, *, now_ms: int, reason: str) -> int: ...
    async def pending_counts(self) -> dict[str, int]: ...
    async def oldest_pending_ms(self) -> int | None: ...
    async def list_deliveries(
        self, *, failed: bool, limit: int = 100, sink: str | None = None
    ) -> list[DeliveryRow]: ...
    async def replay(self, event_ids: Sequence[str], *, now_ms: int, sink: str | None = None) -> int: ...
    async def replay_failed(self, *, now_ms: int, sink: str | None = None) -> int: ...

    # --- sink state (a 410 disables a sink until replay or a config change; health for `status`)
    async def set_sink_state(self, sink: str, *, disabled_reason: str | None, now_ms: int) -> None: ...
    async def sink_states(self) -> dict[str, SinkState]: ...
    async def set_sink_pause(self, sink: str, *, since_ms: int | None, next_probe_ms: int | None) -> None: ...
    async def sink_pauses(self) -> dict[str, tuple[int, int | None]]: ...  # the circuit breaker's paused sinks

    # --- events, status, maintenance
    async def get_event(self, event_id: str) -> Event | None: ...
    async def events_exist(self, ids: Sequence[str]) -> set[str]: ...
    async def list_events(  # the history, oldest first, each with its insertion sequence number
        self, *, after_seq: int = 0, since_ms: int | None = None, types: Sequence[str] = (), limit: int | None = None
    ) -> list[tuple[int, Event]]: ...
    async def failure_counts(self, *, since_ms: int) -> dict[str | None, int]: ...  # error_code -> run.failed
    async def delivery_counts(self) -> dict[str, dict[str, int]]: ...  # sink -> {"pending", "dead"}
    async def summary(self) -> dict[str, Any]: ...
    async def prune(self, *, now_ms: int, keep_done_ms: int, keep_dead_ms: int | None = None) -> int: ...
    async def integrity_check(self) -> str: ...
    # --- FLORA callbacks the ingress recorded (CONTRACT §9)
    async def record_callbacks(self, callbacks: Sequence[RecordedCallback]) -> list[bool]: ...  # one transaction;
    # each False when its id was recorded before
    async def pending_callbacks(self, *, limit: int = 256,
                                exclude: Collection[str] = ()) -> list[RecordedCallback]: ...  # oldest first
    async def finish_callbacks(self, outcomes: Sequence[tuple[str, str]], *, now_ms: int) -> None: ...  # (id, outcome)
    async def callback_counts(self, *, since_ms: int) -> dict[str, Any]: ...  # outcome/pending -> n, last_received_ms

    async def aclose(self) -> None: ...


class AdminStore(Protocol):
    """What the admin commands (``status``, ``deliveries``, ``events``, ``replay``) call, blocking: the SQLite
    ``store.Store``, or a PostgreSQL store run to completion by ``store_pg.BlockingStore``. Each method is the
    ``StateStore`` coroutine of the same name and parameters (tests/unit/test_store_protocols.py holds them
    alike), so a rename fails mypy or that test instead of silently dropping what a command shows."""

    @property
    def path(self) -> str: ...

    def get_meta(self, key: str) -> str | None: ...
    def pending_counts(self) -> dict[str, int]: ...
    def list_deliveries(self, *, failed: bool, limit: int = 100, sink: str | None = None) -> list[DeliveryRow]: ...
    def replay(self, event_ids: Sequence[str], *, now_ms: int, sink: str | None = None) -> int: ...
    def replay_failed(self, *, now_ms: int, sink: str | None = None) -> int: ...
    def sink_states(self) -> dict[str, SinkState]: ...
    def sink_pauses(self) -> dict[str, tuple[int, int | None]]: ...
    def events_exist(self, ids: Sequence[str]) -> set[str]: ...
    def list_events(
        self, *, after_seq: int = 0, since_ms: int | None = None, types: Sequence[str] = (), limit: int | None = None
    ) -> list[tuple[int, Event]]: ...
    def summary(self) -> dict[str, Any]: ...
    def callback_counts(self, *, since_ms: int) -> dict[str, Any]: ...
    def close(self) -> None: ...
