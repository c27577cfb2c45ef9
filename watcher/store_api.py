"""The state store as the engine sees it: one ``typing.Protocol`` that every store implementation satisfies.

The sweep, the dispatcher, the daemon and the status server depend on :class:`StateStore`, never on a concrete
store. ``store.AsyncStore`` (SQLite on one worker thread) implements it; another backend (PostgreSQL, an
in-memory double) implements the same coroutines and passes the same tests.

Guarantees every implementation keeps:

* ``commit_sweep`` writes tracked runs, events, one pending delivery per (new event, sink) and the meta keys in
  ONE transaction, durable when it returns, before anything is sent. An event id that already exists adds no
  delivery (re-detection after a crash sends nothing twice); it returns the ids it inserted.
* Events are stored as their exact JSON body bytes, so every retry and replay sends the same bytes.
* Every backend error surfaces as ``errors.StoreError`` with a message an operator can act on.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any, Protocol

from watcher.model import Event, TrackedRun
from watcher.store import Delivery, DeliveryRow, Outcome, SinkState


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

    # --- the outbox
    async def due_deliveries(self, sink: str, now_ms: int, limit: int = 100, after: tuple[int, int] | None = None,
                             exclude: Collection[int] = ()) -> list[Delivery]: ...  # exclude: a hint (see Store)
    async def oldest_pending(self, sink: str) -> Delivery | None: ...  # queued first, due or not (a probe)
    async def next_due_ms(self, sink: str, after_ms: int | None = None) -> int | None: ...
    async def record_outcomes(self, outcomes: Sequence[Outcome]) -> None: ...  # many outcomes, one transaction
    async def make_due(self, sink: str, now_ms: int) -> int: ...  # every pending delivery of the sink, due now
    async def mark_delivered(self, delivery_id: int, now_ms: int, status: int | None = None) -> bool: ...
    async def mark_retry(
        self, delivery_id: int, *, now_ms: int, next_attempt_ms: int, error: str, status: int | None
    ) -> bool: ...
    async def mark_dead(
        self, delivery_id: int, *, now_ms: int, error: str, status: int | None, attempted: bool = True
    ) -> bool: ...
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
    async def record_sink_result(self, sink: str, *, ok: bool, now_ms: int, error: str | None = None) -> None: ...
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
    async def aclose(self) -> None: ...
