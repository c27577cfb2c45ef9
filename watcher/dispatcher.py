"""Delivery: one worker per sink reading that sink's pending deliveries from the outbox.

Shell: the sink transports, ``policy`` decides what happens after an attempt (retry at a time, dead letter,
disable; whether the sink's circuit breaker opens or closes), the store records it.

How a worker keeps up without giving up durability:

* A sweep commit hands its new deliveries over (``hand_off``, ``sweep.Handoff``): the store claims them for this
  process's workers in the commit's own transaction (``StateStore.commit_and_claim``; on PostgreSQL the claim
  columns are set there, so no other instance sends them, exactly as if our worker had claimed them right after
  the commit) and the worker queues them with their events, without reading the outbox or parsing a body. A
  worker takes at most ``HANDOFF_MAX`` in hand, nothing while paused, disabled, stopping or waiting for the
  store, and a chat sink forming groups takes none: what it does not take stays in the outbox, due. Run order
  holds: a delivery behind an earlier pending one of its run is not handed over (``SweepCommit.behind``) and is
  claimed once that one is settled here (at once when this worker does not hold that one as handed over). So a
  steady flow is sent without a claim (tests/integration/test_delivery_cost.py counts them). A worker holding
  deliveries still claims every ``RENEW_EVERY_MS``: on PostgreSQL a claim renews its claims on what it holds.
* The outbox is read (a claim) only when it may hold something this worker does not: at the start, after a
  claim that filled its batch, after a claimed delivery is settled (a later one of its run may wait), when a
  commit left some (``left``, ``behind``), when the idle recheck (``IDLE_RECHECK_S``) finds one due (a retry,
  a ``replay`` from another process), after a pause ends, when the store was away, and on ``wake()``, which the
  daemon calls once a turn (a sweep or a standby's turn: how another PostgreSQL instance takes over what a dead
  one had claimed, its claims being due to an idle recheck only when they expire). It
  claims due deliveries in batches (``store.due_deliveries``) and sends up to ``concurrency`` of them at
  once (sink key; webhook and exec default to 8, every other sink sends one at a time). Like TCP's slow
  start, a worker begins with one request in flight and doubles that with each success up to
  ``concurrency``, halving it on each retryable failure: a receiver that fails (or answers 410) sees one
  request, not eight. The store never
  hands out a delivery while an earlier delivery of the same run to the same sink is still pending, so the
  events of one run arrive in order.
* Outcomes go through one ``OutcomeLog`` per dispatcher, a group commit: every outcome recorded while a commit
  is running joins the next one, so a busy outbox costs one transaction (one fsync) per batch, not three
  per delivery. The next send does not wait for the previous outcome's commit (at most ``MAX_UNCOMMITTED``
  wait per worker), but a delivery counts as done only once its outcome is committed, and a claimed delivery
  is not claimed again before that, so a crash re-sends at most what was in flight or awaiting its commit
  (same id, same bytes).
* The circuit breaker (``policy.Breaker``) pauses a sink whose receiver is unreachable or refuses everything:
  then one probe at a time, at most 5 s apart; the first success resumes the sink and makes all its pending
  deliveries due at once. A receiver that accepts some events is up: each failing event keeps its own backoff.
  The pause is recorded in the store (``sink_paused.<name>``, what ``status`` shows). A daemon that starts
  with a sink recorded as paused keeps it paused and probes it at the recorded time (the receiver is most
  likely still down: no burst at it, and the pause keeps the time it began); a worker that starts without
  one — ``--once``, or a sink a reload changed, whose new configuration deserves a try at once — clears a
  record it finds, so ``status`` never shows a pause nobody keeps.

* A state store that is away (PostgreSQL restarting, SQLite locked or its disk full: ``StoreUnavailable``) is an
  outage to wait out, not a reason to end: every store call of a worker, and the outcome log's commits, try
  again with backoff (0.5 s doubling to 5 s) until the store answers — or at once when another part's call
  succeeds (``StoreHealth.on_answer``: a sweep commit, the lease keeper) — tell ``StoreHealth`` (quiet logs,
  ``/readyz``), and the worker drops what it had claimed but not started (another instance may take those
  over while our heartbeat is stale). An outcome waits in memory for its commit, so a delivery sent during the
  outage is not sent again. Each worker runs under the daemon's ``Supervisor`` (task ``sink:<name>``): a worker
  that still dies (a bug) is logged at once, restarted with backoff and named by ``/readyz`` while down.

Every wait goes through the injected ``Clock``. While sends are in flight a worker waits only for one of them
to finish (or a wakeup), never on the clock, so a test clock moves only when the worker is really idle.
Workers are independent, so a slow or failing sink never delays another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import DeliveryConfig
from watcher.crashpoints import crash_point
from watcher.errors import DeliveryError, Reason, StoreUnavailable
from watcher.outage import StoreHealth, store_retry_s
from watcher.policy import Breaker, breaker_after, breaker_mode, decide_failure, group_key, group_ready_ms
from watcher.sinks.spec import BatchSink, GroupSink, Sink
from watcher.store_api import DEAD, DELIVERED, RETRY, Delivery, Outcome, StateStore, SweepCommit
from watcher.supervisor import Supervisor

T = TypeVar("T")

log = structlog.get_logger("watcher.dispatcher")
_stdlog = logging.getLogger("watcher.dispatcher")  # its level decides what structlog's filter_by_level lets through

CLAIM_BATCH = 200  # due deliveries read per claim ...
REFILL_BELOW = 50  # ... when fewer than this (or than the concurrency) are claimed and waiting
BATCH_MAX = 256  # deliveries per send_many call (file sink)
GROUP_CLAIM = 5_000  # a grouping (chat) sink reads this many due deliveries at once
MAX_UNCOMMITTED = 256  # sent deliveries of one worker whose outcome is not committed yet, at most
IDLE_RECHECK_S = 2.0  # an idle worker looks at the outbox at least this often (`replay` from another process)
# A worker takes a sweep commit's new deliveries in hand while it holds fewer than this: about what its claims
# hold (CLAIM_BATCH + REFILL_BELOW), so with several PostgreSQL instances a backlog is still shared among them.
HANDOFF_MAX = 250
# A worker holding deliveries claims at least this often (a claim renews, on PostgreSQL, its claims on what it
# holds once half their time is gone): what a commit handed over is not read back, and a steady flow makes no
# other claim, yet another instance must not take a held delivery whose claim ran out (store_pg.CLAIM_MS, 300 s).
RENEW_EVERY_MS = 60_000
DEFAULT_CONCURRENCY = 8  # webhook and exec sinks; the others send one at a time
CONCURRENT_TYPES = frozenset({"webhook", "exec"})


def sink_concurrency(sink: Sink) -> int:
    """Requests a sink may have in flight: its ``concurrency`` key, else 8 for webhook/exec and 1 for the rest
    (chat platforms pace per webhook; files and stdout are written in order)."""
    cfg = getattr(sink, "config", None)
    value = getattr(getattr(cfg, "options", None), "concurrency", None)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return DEFAULT_CONCURRENCY if getattr(cfg, "type", None) in CONCURRENT_TYPES else 1


@dataclass(slots=True)
class SinkHealth:
    """In-memory view of one sink for `status` and metrics."""

    disabled_reason: str | None = None
    delivered: int = 0
    failed: int = 0


class _Abandoned(Exception):
    """The worker is stopping while the state store is away: what waited for it is left (still pending in the
    outbox, sent again after the next start)."""


class OutcomeLog:
    """Group commit of delivery outcomes. ``record`` returns once the outcome is committed; outcomes recorded
    while a commit runs are committed together by the next one. A commit the store cannot take now
    (``StoreUnavailable``) is tried again with backoff, joined by what was recorded meanwhile, until it goes
    through or ``abandon()`` (a shutdown that cannot wait longer) gives up on it."""

    def __init__(self, store: StateStore, *, clock: Clock = SYSTEM_CLOCK, rand: random.Random | None = None,
                 health: StoreHealth | None = None) -> None:
        self.store = store
        self.clock = clock
        self.rand = rand or random.Random()
        self.health = health
        self._pending: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._abandoned = asyncio.Event()
        self._nudge = asyncio.Event()  # ends a wait for the store early: abandoned, or the store answered again
        self.commits = 0
        self.recorded = 0

    async def record(self, outcome: Outcome) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="delivery-outcomes")
        # Shielded: a cancelled sender (shutdown) does not cancel the commit others wait for too.
        await asyncio.shield(future)

    async def _flush(self) -> None:
        attempt = 0
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self.store.record_outcomes([outcome for outcome, _ in batch])
            except StoreUnavailable as exc:
                if self._abandoned.is_set():
                    _fail(batch, exc)
                    continue
                if self.health is not None:
                    self.health.failed("outcomes", exc)
                self._pending[:0] = batch  # tried again, with what is recorded meanwhile
                self._nudge.clear()
                with contextlib.suppress(TimeoutError):
                    await self.clock.wait_for(self._nudge.wait(), store_retry_s(attempt, self.rand.random()))
                attempt += 1
                continue
            except Exception as exc:
                _fail(batch, exc)
                continue
            except BaseException:
                for _, future in batch:
                    future.cancel()
                raise
            attempt = 0
            if self.health is not None:
                self.health.succeeded("outcomes")
            self.commits += 1
            self.recorded += len(batch)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def abandon(self) -> None:
        """Stop waiting for a store that is away: outcomes not committed yet fail (their deliveries stay pending
        in the outbox and are sent again after the next start)."""
        self._abandoned.set()
        self._nudge.set()

    def store_answered(self) -> None:
        """Another call on the state store just succeeded: a commit waiting out an outage is tried now."""
        self._nudge.set()

    async def close(self, within: float | None = None, *, abandon: bool = False) -> None:
        """Wait for the commit in progress (and those queued behind it), at most ``within`` seconds of the
        clock; then, with ``abandon``, give up on what the store did not take."""
        flusher = self._flusher
        if flusher is None or flusher.done():
            return
        with contextlib.suppress(Exception):
            await self.clock.wait_for(asyncio.shield(flusher), within)
        if not flusher.done() and abandon:
            self.abandon()
            with contextlib.suppress(Exception):
                await flusher


def _fail(batch: list[tuple[Outcome, asyncio.Future[None]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


class SinkWorker:
    def __init__(
        self,
        sink: Sink,
        store: StateStore,
        *,
        cfg: DeliveryConfig,
        clock: Clock,
        rand: random.Random,
        disabled_reason: str | None = None,
        on_outcome: Callable[[str, str], None] | None = None,
        outcomes: OutcomeLog | None = None,
        concurrency: int | None = None,
        store_health: StoreHealth | None = None,
        ride_out: bool = True,
        paused: tuple[int, int | None] | None = None,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.rand = rand
        self.on_outcome = on_outcome
        self.store_health = store_health
        self.ride_out = ride_out  # wait out a store outage (False: ``--once``, which fails fast instead)
        self.outcomes = outcomes or OutcomeLog(store, clock=clock, rand=rand, health=store_health)
        self._nudge = asyncio.Event()  # ends a wait for the state store: stop(), or the store answered elsewhere
        self._store_away = False  # the last store call of this worker failed with StoreUnavailable
        self.concurrency = concurrency or sink_concurrency(sink)
        self.health = SinkHealth(disabled_reason=disabled_reason)
        # A pause recorded by an earlier process goes on (the receiver is most likely still down; its first probe
        # is due at the recorded time, and `status` keeps the time it began); a worker starting without one
        # clears any stale record at its first pump.
        self.breaker = Breaker() if paused is None else Breaker(
            failures=1, streak_start_ms=paused[0], open=True, opened_ms=paused[0],
            next_probe_ms=paused[1] if paused[1] is not None else paused[0])
        self._live = False  # run_forever is running (a handed delivery would be sent)
        self._stale_pause = paused is None  # clear a pause record left by an earlier process (first pump)
        self.window = 1  # sends allowed in flight now: slow start up to `concurrency`
        self.wakeup = asyncio.Event()
        self.stopping = False
        self.attempted = 0
        self._queue: deque[Delivery] = deque()  # claimed, not started yet
        self._claimed: set[int] = set()  # delivery ids queued or in flight
        self._in_flight: set[int] = set()  # of those, in flight: sending, or its outcome not committed yet
        self._running: set[asyncio.Task[None]] = set()  # a send, then the commit of its outcome
        self._sending = 0  # of those, still sending
        self._claimed_at: int | None = None  # the `now` of the last claim
        # The outbox may hold deliveries due for this worker that it does not hold: claim at the next pump. Not
        # needed for what a sweep commit hands over (``take``), so a steady flow is sent without a claim.
        self._unread = True
        # Of the ids held, those handed over by a commit (not claimed) -> the number of claims answered when
        # they came: a claim answered since then may have left out a delivery waiting behind one of them (run
        # order), so its settling reads the outbox again.
        self._handed: dict[int, int] = {}
        self._handed_runs: dict[str, int] = {}  # run id -> how many of its deliveries handed over are held
        self._claims = 0  # claims answered
        self._claiming = False  # a claim is awaiting its rows
        self._handed_in_claim: set[int] = set()  # handed over while that claim was on its way: not new in it
        self._behind: set[str] = set()  # held runs (handed over) with a new delivery waiting behind theirs
        self._renew_at: int | None = None  # when to claim, if nothing else does, to renew the claims on what is held
        self._error: BaseException | None = None
        self._disabling = False  # a 410 disabled the sink and the store does not know yet
        options = getattr(getattr(sink, "config", None), "options", None)
        wait = getattr(options, "group_wait", None)
        # Chat sinks group a burst into one message per group (group_wait, group_by).
        self.group_wait_ms: int | None = (
            None if wait is None or not isinstance(sink, GroupSink) else max(0, round(float(wait) * 1000)))
        self.group_by: tuple[str, ...] = tuple(getattr(options, "group_by", ()) or ())
        self._group_due_ms: int | None = None  # when the next held group becomes ready
        self._cursor: tuple[int, int] | None = None  # (next_attempt_ms, id) of the last delivery held
        self._flushing = False  # deliver_due (--once): groups go out without waiting
        # A sink that writes many events at once (the file sink's send_many) gets them in batches.
        self.batch_max = BATCH_MAX if isinstance(sink, BatchSink) else 1

    def _outcome(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(self.name, outcome)

    def stop(self) -> None:
        self.stopping = True
        self._nudge.set()
        self.wakeup.set()

    def look(self) -> None:
        """Read the outbox at the next pump (deliveries committed without a hand-off, a replay)."""
        self._unread = True
        self.wakeup.set()

    def store_answered(self) -> None:
        """Another call on the state store just succeeded: a call of this worker waiting out an outage is tried
        now, not after the rest of its backoff (up to 5 s)."""
        if self._store_away:
            self._nudge.set()

    @property
    def part(self) -> str:
        """This worker's name for ``StoreHealth`` and the supervisor."""
        return f"sink:{self.name}"

    # ------------------------------------------------------------------------------------------ loop

    async def run_forever(self) -> None:
        """Deliver until ``stop()``; then let the sends in flight finish (``Dispatcher.stop`` bounds that). A run
        after a crash (the supervisor's restart) starts from the outbox again."""
        self._restart()
        self._live = True
        try:
            while not self.stopping:
                self._raise_failure()
                try:
                    if await self._pump():
                        continue
                    if self.stopping:
                        break
                    await self._idle()
                except _Abandoned:
                    break
            self._queue.clear()
            while self._running:
                await asyncio.wait(set(self._running))
            self._raise_failure()
        finally:
            self._live = False
            for task in self._running:
                task.cancel()
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)

    async def deliver_due(self) -> int:
        """Send everything due now and wait for the outcomes, without waiting for retries (``--once``).
        Returns how many sends were started."""
        before = self.attempted
        self._unread = True  # everything due now: read the outbox
        self._flushing = True  # nothing waits for group_wait: what is here now is the whole group
        try:
            return await self._deliver_due(before)
        finally:
            self._flushing = False

    async def _deliver_due(self, before: int) -> int:
        while not self.stopping:
            progressed = await self._pump()
            if self._running:
                await self._wait(None)
                self._raise_failure()
            elif not progressed:
                break
        return self.attempted - before

    def _restart(self) -> None:
        """Forget what a previous run of this worker held in memory (its sends were cancelled when it ended):
        claims come from the outbox again. The breaker, the health counters and a disabled state are kept."""
        self._queue.clear()
        self._claimed.clear()
        self._in_flight.clear()
        self._handed.clear()
        self._handed_runs.clear()
        self._handed_in_claim.clear()
        self._behind.clear()
        self._renew_at = None
        self._unread = True
        self._error = None
        self._cursor = None
        self._group_due_ms = None
        self.window = 1

    def _raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def _store(self, call: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
        """``await call(*args, **kwargs)``, a call on the state store that rides out an outage: on
        StoreUnavailable it tells StoreHealth, drops what was claimed but not started, waits (backoff on the
        clock, cut short by ``stop()``) and tries again. Without ``ride_out`` (``--once``) the error is raised."""
        attempt = 0
        while True:
            try:
                result = await call(*args, **kwargs)
            except StoreUnavailable as exc:
                if not self.ride_out:
                    raise
                if self.stopping:
                    raise _Abandoned from exc
                self._store_away = True
                if self.store_health is not None:
                    self.store_health.failed(self.part, exc)
                self._drop_queue()
                self._nudge.clear()
                with contextlib.suppress(TimeoutError):
                    await self.clock.wait_for(self._nudge.wait(), store_retry_s(attempt, self.rand.random()))
                attempt += 1
                continue
            if self._store_away:
                self._store_away = False
                if self.store_health is not None:
                    self.store_health.succeeded(self.part)
            return result

    def _drop_queue(self) -> None:
        """Claimed but not started: left to the outbox (claimed again when the store answers; on PostgreSQL
        another instance may take them meanwhile, when our heartbeat is older than the lease)."""
        self._forget_queue()

    def _forget_queue(self) -> None:
        for delivery in self._queue:
            self._claimed.discard(delivery.id)
            self._release_handed(delivery)
        self._queue.clear()
        self._cursor = None
        self._unread = True  # read again when sending resumes

    # ---------------------------------------------------------------------------------- hand-off

    def room(self) -> int:
        """How many of a sweep commit's new deliveries this worker takes in hand now (claimed for it in that
        commit, ``StateStore.commit_and_claim``): none unless it is running and sending (not stopping, paused,
        disabled, waiting for the store, nor a chat sink forming groups, which reads its bursts itself)."""
        if not self._accepting():
            return 0
        return max(0, HANDOFF_MAX - len(self._claimed))

    def _accepting(self) -> bool:
        return (self._live and not self.stopping and not self.breaker.open and self.group_wait_ms is None
                and self.health.disabled_reason is None and not self._store_away)

    def take(self, deliveries: Sequence[Delivery], *, left: int = 0, behind: Iterable[str] = ()) -> None:
        """A sweep commit's new deliveries for this sink: ``deliveries`` claimed for this worker (queued now, sent
        without reading them back), ``left`` more due in the outbox (claimed at the next pump), and the runs whose
        new delivery waits ``behind`` an earlier one (claimed once that one is settled here)."""
        for run_id in behind:
            if run_id in self._handed_runs:
                self._behind.add(run_id)  # read back once this worker settles the one it holds
            else:
                # The one it waits for is not held here as handed over: claimed (its settling reads the outbox),
                # waiting for a retry, held by another instance, or already settled here (PostgreSQL: its outcome
                # committed after the commit's look): read the outbox now.
                self._unread = True
        if left:
            self._unread = True
        if deliveries and not self._accepting():
            # Paused, stopping, or the store went away since the commit: they stay in the outbox (on PostgreSQL
            # claimed for this instance, which its own claims may take again) and are read back.
            self._unread = True
        elif deliveries:
            for delivery in deliveries:
                if delivery.id in self._claimed:
                    continue
                self._claimed.add(delivery.id)
                self._handed[delivery.id] = self._claims
                self._handed_runs[delivery.run_id] = self._handed_runs.get(delivery.run_id, 0) + 1
                self._queue.append(delivery)
                if self._claiming:
                    self._handed_in_claim.add(delivery.id)
            if self._renew_at is None:
                self._renew_at = self.clock.now_ms() + RENEW_EVERY_MS
        if deliveries or left or self._unread:
            self.wakeup.set()

    def _release_handed(self, delivery: Delivery) -> None:
        """``delivery`` leaves this worker's hands. One handed over by a commit whose run has a delivery waiting
        behind it, or that was held while a claim was answered (which may have left such a one out), makes the
        outbox be read again; so does every claimed one (a later delivery of its run may wait)."""
        gen = self._handed.pop(delivery.id, None)
        if gen is None:
            self._unread = True
            return
        if gen != self._claims:
            self._unread = True
        run_id = delivery.run_id
        left = self._handed_runs.get(run_id, 0) - 1
        if left > 0:
            self._handed_runs[run_id] = left
            return
        self._handed_runs.pop(run_id, None)
        if run_id in self._behind:
            self._behind.discard(run_id)
            self._unread = True

    async def _pump(self) -> bool:
        """Claim what may be sent now and start sends up to the concurrency. True when something started
        or changed (dead-lettered), so the caller looks again before sleeping."""
        self.wakeup.clear()
        if self._stale_pause:
            await self._store(self.store.set_sink_pause, self.name, since_ms=None, next_probe_ms=None)
            self._stale_pause = False
        now = self.clock.now_ms()
        if self.health.disabled_reason is not None:
            return await self._dead_letter_due(now)
        mode = breaker_mode(self.breaker, now)
        if mode == "wait":
            return False
        if mode == "probe":
            if self._running:
                return False  # one request at a time while the receiver is down
            delivery = await self._store(self.store.oldest_pending, self.name)
            if delivery is None:
                return False
            self._claimed.add(delivery.id)
            self._start([delivery], probe=True)
            return True
        if self.group_wait_ms is not None:
            await self._claim(now, GROUP_CLAIM)  # a whole burst, so it becomes one message per group
        elif self._unread and len(self._queue) < max(self.concurrency, REFILL_BELOW):
            await self._claim(now)
        elif self._renew_at is not None and now >= self._renew_at:
            await self._claim(now, 0)  # nothing new wanted: only the renewal of the claims on what is held
        if self.group_wait_ms is not None:
            return self._start_groups(now)
        started = False
        while self._queue and self._may_start():
            if self.batch_max > 1:  # a file: many events, one write and one fsync
                batch = [self._queue.popleft() for _ in range(min(self.batch_max, len(self._queue)))]
            else:
                batch = [self._queue.popleft()]
            self._start(batch, probe=False)
            started = True
        return started

    def _may_start(self) -> bool:
        return (self._sending < self.window and len(self._running) < self.window + MAX_UNCOMMITTED
                and not self.stopping and not self.breaker.open)

    def _start_groups(self, now: int) -> bool:
        """Chat sinks: the queue as groups (``group_by``); a group is sent, as one message, once ``group_wait``
        has passed since its first event was queued. Remembers when the next held group is ready."""
        groups: dict[tuple[object, ...], list[Delivery]] = {}
        for delivery in self._queue:
            event = delivery.event
            groups.setdefault(group_key(event.type, event.data, self.group_by), []).append(delivery)
        assert self.group_wait_ms is not None
        started: set[int] = set()
        self._group_due_ms = None
        for members in groups.values():
            ready = group_ready_ms([d.created_ms for d in members], self.group_wait_ms)
            if ready > now and not self._flushing:
                self._group_due_ms = ready if self._group_due_ms is None else min(self._group_due_ms, ready)
                continue
            if not self._may_start():
                break
            self._start(members, probe=False)
            started.update(d.id for d in members)
        if started:
            self._queue = deque(d for d in self._queue if d.id not in started)
        return bool(started)

    async def _claim(self, now: int, batch: int = CLAIM_BATCH) -> None:
        # What this worker holds is left out of the claim (``exclude``; PostgreSQL renews our claims on it). It
        # must be, not just skipped below: the claim may be answered after a held delivery's outcome was
        # committed and the delivery let go (PostgreSQL commits outcomes on another connection), and it would
        # look new. Copies: the store reads them on its own thread.
        self._claiming = True
        try:
            if self.group_wait_ms is not None and self._queue and self._cursor is not None:
                # A chat sink holding a burst reads only what came after it, not the whole burst again; the
                # cursor is dropped after every send, so a delivery behind it (run order) is read then.
                rows = await self._store(self.store.due_deliveries, self.name, now, batch, after=self._cursor,
                                         exclude=tuple(self._in_flight))
            else:
                rows = await self._store(self.store.due_deliveries, self.name, now, batch,
                                         exclude=tuple(self._claimed))
        finally:
            self._claiming = False
        # What a commit handed over while the claim was on its way may be in its rows (read before that
        # delivery was settled here, and let go): not new.
        handed, self._handed_in_claim = self._handed_in_claim, set()
        self._renew_at = now + RENEW_EVERY_MS if self._claimed or rows else None
        if batch == 0:
            return
        self._claims += 1
        self._claimed_at = now
        self._unread = len(rows) >= batch  # a full batch: more may be waiting
        for delivery in rows:
            if delivery.id not in self._claimed and delivery.id not in handed:
                self._claimed.add(delivery.id)
                self._queue.append(delivery)
        if self.group_wait_ms is not None and self._queue:
            self._cursor = max((d.next_attempt_ms, d.id) for d in self._queue)

    def _start(self, batch: list[Delivery], *, probe: bool) -> None:
        """Send ``batch`` (one delivery, or a chat sink's group as one message) in a task of its own."""
        self.attempted += 1
        self._sending += 1
        self._in_flight.update(d.id for d in batch)
        task = asyncio.create_task(self._deliver(batch, probe=probe), name=f"send:{self.name}:{batch[0].id}")
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._cursor = None
        if not task.cancelled():
            error = task.exception()
            if error is not None and self._error is None and not isinstance(error, _Abandoned):
                self._error = error
        self.wakeup.set()

    async def _idle(self) -> None:
        """Sleep until something may be sent: a send finishing, a wakeup (new events, stop), the next due
        delivery or probe, or the periodic recheck."""
        if self._running:
            await self._wait(None)  # a send or a commit finishing sets the wakeup
            return
        now = self.clock.now_ms()
        waits = [IDLE_RECHECK_S]
        if self.breaker.open:
            if self.breaker.next_probe_ms is not None:
                waits.append((self.breaker.next_probe_ms - now) / 1000.0)
        elif self.health.disabled_reason is None:
            nxt = await self._store(self.store.next_due_ms, self.name, self._claimed_at)
            if nxt is not None:
                if nxt <= now:
                    self._unread = True  # due now and not read: a retry, a replay, what a commit left
                waits.append((nxt - now) / 1000.0)
            if self._queue and self._group_due_ms is not None:
                waits.append((self._group_due_ms - now) / 1000.0)
        await self._wait(max(0.0, min(waits)))

    async def _wait(self, seconds: float | None) -> None:
        """Until the wakeup is set or, when ``seconds`` is given, that much of the clock's time has passed."""
        if self.wakeup.is_set():
            return
        if seconds is not None and seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await self.clock.wait_for(self.wakeup.wait(), seconds)

    # -------------------------------------------------------------------------------------- disabled

    async def _dead_letter_due(self, now: int) -> bool:
        due = await self._store(self.store.due_deliveries, self.name, now, CLAIM_BATCH)
        if not due:
            return False
        if not self._disabling:
            await self._pick_up_reenable()  # read after `due`: replay re-queues and re-enables in one transaction
        if self.health.disabled_reason is None:
            return True
        error = f"sink disabled: {self.health.disabled_reason}"
        for delivery in due:
            await self._record([delivery], DEAD, now, error=error, attempted=False)
            self._outcome("dead")
        return True

    async def _pick_up_reenable(self) -> None:
        """`flora-watcher replay` (another process) re-enables a disabled sink in the store; a running daemon
        must send the re-queued deliveries, not dead-letter them again."""
        state = (await self._store(self.store.sink_states)).get(self.name)
        if state is None or state.disabled_reason is None:
            self.health.disabled_reason = None
            log.info("sink.reenabled", sink=self.name)

    # ------------------------------------------------------------------------------------------ send

    def _releaser(self) -> Callable[[], None]:
        """Ends the send part of one delivery, once: another send may start. Called as soon as the worker's
        in-memory state (breaker, window, disabled) reflects the answer, before its outcome is committed."""
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._sending -= 1
                self.wakeup.set()

        return release

    async def _record(self, batch: list[Delivery], state: str, now: int, **fields: object) -> None:
        """One outcome for every delivery of ``batch`` (a group is marked together), committed together. The
        outcome log waits out a store outage; it fails with StoreUnavailable only once abandoned (shutdown)."""
        try:
            if len(batch) == 1:  # the usual case: awaited directly (gather would wrap it in a task of its own)
                await self.outcomes.record(Outcome(batch[0].id, self.name, state, now, **fields))  # type: ignore[arg-type]
            else:
                await asyncio.gather(*(self.outcomes.record(Outcome(d.id, self.name, state, now, **fields))  # type: ignore[arg-type]
                                       for d in batch))
        except StoreUnavailable as exc:
            raise _Abandoned from exc

    async def _send(self, batch: list[Delivery]):
        if len(batch) == 1:
            return await self.sink.send(batch[0].event, body=batch[0].body)
        if self.batch_max > 1:
            return await self.sink.send_many([d.event for d in batch], [d.body for d in batch])  # type: ignore[attr-defined]
        return await self.sink.send_group([d.event for d in batch])  # type: ignore[attr-defined]

    async def _deliver(self, batch: list[Delivery], *, probe: bool) -> None:
        release = self._releaser()
        first = batch[0]
        try:
            if self.health.disabled_reason is not None:
                release()
                await self._record(batch, DEAD, self.clock.now_ms(), attempted=False,
                                   error=f"sink disabled: {self.health.disabled_reason}")
                for _ in batch:
                    self._outcome("dead")
                return
            try:
                crash_point("before_send")
                result = await self._send(batch)
                crash_point("after_send")
            except DeliveryError as exc:
                await self._failed(batch, exc, probe=probe, release=release)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in a sink must not kill the worker or lose the delivery
                log.exception("delivery.sink_crashed", sink=self.name, event_id=first.event_id)
                await self._failed(batch, DeliveryError(
                    f"sink raised {type(exc).__name__}", retryable=True, reason=Reason.IO_ERROR), probe=probe,
                    release=release)
                return
            now = self.clock.now_ms()
            was_open = self.breaker.open
            self.breaker = breaker_after(self.breaker, ok=True, now_ms=now)
            self.window = min(self.concurrency, self.window * 2)
            release()
            await self._record(batch, DELIVERED, now, status=result.status, health=True)
            self.health.delivered += len(batch)
            for _ in batch:
                self._outcome("delivered")
            attempts = max(d.attempts for d in batch) + 1
            # Debug for a first-try success (thousands a second when busy); info once it took retries. A debug
            # line is not even built unless the level lets it through (structlog would bind a logger, build the
            # line and drop it: ~4 µs a delivery).
            if attempts > 1 or len(batch) > 1 or _stdlog.isEnabledFor(logging.DEBUG):
                (log.info if attempts > 1 or len(batch) > 1 else log.debug)(
                    "delivery.done", sink=self.name, event_id=first.event_id, attempts=attempts,
                    status=result.status, **({"grouped": len(batch)} if len(batch) > 1 else {}))
            if was_open:
                await self._resumed(now)
        finally:
            release()
            self._settled(batch)

    def _settled(self, batch: list[Delivery]) -> None:
        """The deliveries of ``batch`` leave this worker's hands (outcome committed, or given up on). A claimed
        one may have kept a later delivery of its run waiting, and so may a handed one whose run has one
        behind it: the outbox is read again."""
        for d in batch:
            self._claimed.discard(d.id)
            self._in_flight.discard(d.id)
            self._release_handed(d)

    async def _failed(self, batch: list[Delivery], exc: DeliveryError, *, probe: bool,
                      release: Callable[[], None]) -> None:
        """One verdict for the batch (a group is retried, dead-lettered or disabled together)."""
        now = self.clock.now_ms()
        first = batch[0]
        attempts = max(d.attempts for d in batch) + 1
        verdict = decide_failure(exc, attempts=attempts, created_ms=min(d.created_ms for d in batch), now_ms=now,
                                 rand=self.rand.random(), cfg=self.cfg)
        was_open = self.breaker.open
        self.breaker = breaker_after(self.breaker, ok=False if exc.retryable else None, now_ms=now, probe=probe,
                                     retry_after=exc.retry_after)
        self.health.failed += len(batch)
        if exc.retryable:
            self.window = max(1, self.window // 2)
        disabled = f"receiver answered {exc.status or 'gone'}: destination gone; fix the sink and replay"
        if verdict.action == "disable":
            self.health.disabled_reason = disabled  # before the next send may start
            self._disabling = True  # not in the store yet: no `replay` to pick up before it is
        release()
        error = exc.message[:500]
        fields = dict(sink=self.name, event_id=first.event_id, attempts=attempts, reason=str(exc.reason),
                      status=exc.status, error=exc.message[:300], **({"grouped": len(batch)} if len(batch) > 1 else {}))
        if verdict.action == "retry":
            assert verdict.next_attempt_ms is not None
            await self._record(batch, RETRY, now, status=exc.status, error=error,
                               next_attempt_ms=verdict.next_attempt_ms, health=False)
            for _ in batch:
                self._outcome("retry")
            log.info("delivery.retry_scheduled", in_s=round((verdict.next_attempt_ms - now) / 1000, 2),
                     probe=probe or None, **fields)
        elif verdict.action == "disable":
            await self._record(batch, DEAD, now, status=exc.status, error=error, health=False)
            await self._store(self.store.set_sink_state, self.name, disabled_reason=disabled, now_ms=now)
            self._disabling = False
            self._outcome("disabled")
            for _ in batch[1:]:
                self._outcome("dead")
            log.error("sink.disabled", **fields, hint="the receiver says this destination is gone (410)")
        else:
            await self._record(batch, DEAD, now, status=exc.status, error=error, health=False)
            for _ in batch:
                self._outcome("dead")
            log.warning("delivery.dead_lettered", verdict=verdict.reason, **fields,
                        hint="inspect with `flora-watcher deliveries --failed`, re-send with `flora-watcher replay`")
        if self.breaker.open and not was_open:
            await self._paused(now, exc)
        elif self.breaker.open and probe:
            await self._store(self.store.set_sink_pause, self.name, since_ms=self.breaker.opened_ms,
                              next_probe_ms=self.breaker.next_probe_ms)
            log.debug("sink.probe_failed", sink=self.name, next_probe_in_s=self._probe_in_s(now),
                      error=exc.message[:300])

    def _probe_in_s(self, now: int) -> float | None:
        nxt = self.breaker.next_probe_ms
        return None if nxt is None else round((nxt - now) / 1000, 2)

    async def _paused(self, now: int, exc: DeliveryError) -> None:
        """The breaker opened: drop what was claimed but not started (it stays pending) and say so."""
        self._forget_queue()
        await self._store(self.store.set_sink_pause, self.name, since_ms=now, next_probe_ms=self.breaker.next_probe_ms)
        log.warning("sink.paused", sink=self.name, failures=self.breaker.failures,
                    failing_for_s=round((now - (self.breaker.streak_start_ms or now)) / 1000, 2),
                    reason=str(exc.reason), status=exc.status, error=exc.message[:300],
                    next_probe_in_s=self._probe_in_s(now),
                    hint="the receiver is unreachable or refuses everything; one probe at a time until it answers")

    async def _resumed(self, now: int) -> None:
        """The first success after a pause: every pending delivery of this sink is due now."""
        made_due = await self._store(self.store.make_due, self.name, now)
        await self._store(self.store.set_sink_pause, self.name, since_ms=None, next_probe_ms=None)
        log.info("sink.resumed", sink=self.name, made_due=made_due)
        self._unread = True
        self.wakeup.set()


class Dispatcher:
    """Owns one ``SinkWorker`` per sink, run as supervised tasks (``sink:<name>``), and the shared group commit
    of outcomes."""

    def __init__(
        self,
        sinks: Mapping[str, Sink],
        store: StateStore,
        *,
        cfg: DeliveryConfig,
        clock: Clock,
        rand: random.Random | None = None,
        disabled: Mapping[str, str | None] | None = None,
        on_outcome: Callable[[str, str], None] | None = None,
        supervisor: Supervisor | None = None,
        fatal: Callable[[BaseException], bool] | None = None,
        health: StoreHealth | None = None,
        ride_out: bool = True,
        paused: Mapping[str, tuple[int, int | None]] | None = None,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.rand = rand or random.Random()
        self.on_outcome = on_outcome
        self.health = health
        self.ride_out = ride_out
        self.supervisor = supervisor or Supervisor(clock=clock, rand=self.rand)
        self.fatal = fatal  # errors no restart of a worker can cure (the daemon stops on them)
        self.outcomes = OutcomeLog(store, clock=clock, rand=self.rand, health=health)
        if not ride_out:
            self.outcomes.abandon()
        self.workers: dict[str, SinkWorker] = {
            name: self._worker(sink, (disabled or {}).get(name), (paused or {}).get(name))
            for name, sink in sinks.items()
        }
        self.tasks: dict[str, asyncio.Task] = {}
        self._started = False
        if health is not None:
            health.on_answer.append(self._store_answered)

    def _worker(self, sink: Sink, disabled_reason: str | None,
                paused: tuple[int, int | None] | None = None) -> SinkWorker:
        return SinkWorker(sink, self.store, cfg=self.cfg, clock=self.clock, rand=self.rand,
                          disabled_reason=disabled_reason, on_outcome=self.on_outcome, outcomes=self.outcomes,
                          store_health=self.health, ride_out=self.ride_out, paused=paused)

    def _store_answered(self) -> None:
        """The state store answered a call while some part was waiting it out: they all try again now."""
        self.outcomes.store_answered()
        for worker in self.workers.values():
            worker.store_answered()

    # ---------------------------------------------------------------- hand-off (sweep.Handoff)

    def take_limits(self) -> dict[str, int]:
        """Sink -> how many of the next sweep commit's new deliveries its worker takes in hand."""
        return {name: worker.room() for name, worker in self.workers.items()}

    def hand_off(self, commit: SweepCommit) -> None:
        """A sweep commit's new deliveries: those it claimed go to their workers' queues (sent without a read of
        the outbox); a worker with more left in the outbox, or with a delivery behind one it holds, is told."""
        claimed: dict[str, list[Delivery]] = {}
        for delivery in commit.claimed:
            claimed.setdefault(delivery.sink, []).append(delivery)
        for name in {*claimed, *commit.left, *commit.behind}:
            worker = self.workers.get(name)
            if worker is not None:  # a sink removed meanwhile: its deliveries stay in the outbox
                worker.take(claimed.get(name, ()), left=commit.left.get(name, 0), behind=commit.behind.get(name, ()))

    def _run(self, worker: SinkWorker) -> None:
        kwargs = {} if self.fatal is None else {"fatal": self.fatal}
        self.tasks[worker.name] = self.supervisor.start(worker.part, worker.run_forever, **kwargs)

    def start(self) -> None:
        self._started = True
        for worker in self.workers.values():
            self._run(worker)

    def add(self, sink: Sink, *, disabled_reason: str | None = None) -> None:
        """A new worker for ``sink`` (a reload added or changed it); started at once if the dispatcher runs."""
        worker = self._worker(sink, disabled_reason)
        self.workers[sink.name] = worker
        if self._started:
            self._run(worker)

    async def remove(self, name: str, grace: float) -> None:
        """Stop one sink's worker: sends in flight may finish within ``grace``; its deliveries stay in the
        outbox (a worker of the same name picks them up, or they are dead-lettered if the sink is gone)."""
        worker = self.workers.pop(name, None)
        if worker is None:
            return
        self.supervisor.retire(worker.part)
        worker.stop()
        if self.health is not None:  # a worker that is gone waits for the store no more
            self.health.forget(worker.part)
        task = self.tasks.pop(name, None)
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await self.clock.wait_for(task, grace)
        await self.outcomes.close(grace)

    def set_config(self, cfg: DeliveryConfig) -> None:
        """A reloaded [delivery] section applies to every worker's next decision."""
        self.cfg = cfg
        for worker in self.workers.values():
            worker.cfg = cfg

    def wake(self) -> None:
        """Every worker looks at the outbox now (deliveries committed without a hand-off, a replay)."""
        for worker in self.workers.values():
            worker.look()

    async def drain_due(self) -> None:
        """Deliver everything due now on every sink, concurrently, without waiting for retries (``--once``)."""
        await asyncio.gather(*(w.deliver_due() for w in self.workers.values()))

    async def stop(self, grace: float) -> int:
        """Stop the workers: sends in flight may finish within ``grace`` seconds and their outcomes are recorded;
        after that the rest is cancelled (it stays pending and is sent after the next start), and outcomes a
        state store that is away did not take are given up. Returns how many workers had to be cancelled."""
        for worker in self.workers.values():
            self.supervisor.retire(worker.part)
            worker.stop()
        tasks = list(self.tasks.values())
        if not tasks:
            await self.outcomes.close(grace, abandon=True)
            return 0
        with contextlib.suppress(TimeoutError):
            await self.clock.wait_for(asyncio.wait(tasks), grace)
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("delivery.drain_timeout", cancelled=len(pending),
                        note="their deliveries stay pending and are sent after the next start")
        await self.outcomes.close(0 if pending else grace, abandon=True)
        self.tasks.clear()
        return len(pending)
