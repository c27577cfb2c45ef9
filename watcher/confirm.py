"""Callbacks → events: every recorded FLORA callback is confirmed with the API, and the API's view decides.

The ingress records a verified delivery (its id, run, type, workspace) and answers; this module does the work
after the answer. A supervised task (``Confirmer.run``) takes the recorded deliveries still pending from the
state store and, for each one:

* a callback that is no run event, of a resource not watched, or of another workspace is done at once
  (``scope_verdict``, pure);
* a run the watcher does not track yet (started since the last sweep) is looked for in the top pages of its
  listing (``look``: the daemon's loop reads them between its sweeps, for every callback waiting at that
  moment at once): the list item carries what an event needs (project, technique or model) and the listing's
  filters are the watched scope, so a run it does not show is left to the sweeps (``unlisted``);
* a tracked run still active is fetched at once (``FloraClient.get_run``: its ``poll_url``, else the technique
  route, else ``/runs/{id}``) and goes through the sweep's rules and commit (``Sweeper.confirm``): the same
  transition table, the same event id, the same outbox. While the API still shows it active (the callback beat
  it), it is fetched on its own again after 0.25, 0.5, 1 and 2 s, then left to the sweeps (``still_active``).

Then the delivery is marked done with its outcome. A delivery recorded but not yet done when the process dies is
picked up again at the next start (after the first sweep). With several instances on PostgreSQL only the
instance holding the sweep lease confirms (its commits are fenced by the lease); any instance's ingress records,
and the sweeper picks the records up from the shared store (``poll_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog

from watcher.clock import Clock
from watcher.errors import StoreError, WatcherError
from watcher.model import RESOURCE_GENERATIONS, RESOURCE_TECHNIQUE_RUNS, EventType
from watcher.store_api import RecordedCallback

if TYPE_CHECKING:
    from watcher.api import FloraClient
    from watcher.store_api import StateStore
    from watcher.sweep import Sweeper

log = structlog.get_logger("watcher.confirm")

T = TypeVar("T")
R = TypeVar("R")
RETRY_DELAYS_S: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # while the API still shows the run active
BATCH = 256  # recorded deliveries taken from the store at a time
RUN_EVENTS = frozenset({str(EventType.COMPLETED), str(EventType.FAILED)})


class Outcome(enum.StrEnum):
    """What became of one recorded delivery (the metric label; stored with the delivery)."""

    CONFIRMED = "confirmed"  # the API showed the run finished: its event is in the outbox (ours or the sweep's)
    KNOWN = "known"  # the watcher had already seen the run finish (polling was first)
    UNLISTED = "unlisted"  # its listing (with the watched filters) did not show it: left to the sweeps
    STILL_ACTIVE = "still_active"  # the API still showed it active after the retries: left to the sweeps
    API_ERROR = "api_error"  # the API could not be asked: left to the sweeps
    OUT_OF_SCOPE = "out_of_scope"  # another workspace, or a resource not watched
    IGNORED = "ignored"  # not a run.completed / run.failed callback
    ERROR = "error"  # an unexpected error (a bug, logged): left to the sweeps


def resource_of(run_type: str | None) -> str:
    return RESOURCE_GENERATIONS if run_type == "generation" else RESOURCE_TECHNIQUE_RUNS


def scope_verdict(cb: RecordedCallback, *, resources: Collection[str], workspaces: Collection[str]) -> Outcome | None:
    """Pure: the outcome of a delivery that needs no request (None: confirm it with the API). Project and
    technique filters cannot be told from a callback: the listing decides those."""
    if cb.type not in RUN_EVENTS:
        return Outcome.IGNORED
    if resource_of(cb.run_type) not in resources:
        return Outcome.OUT_OF_SCOPE
    if workspaces and cb.workspace_id is not None and cb.workspace_id not in workspaces:
        return Outcome.OUT_OF_SCOPE
    return None


class GroupCommit(Generic[T, R]):
    """Writes that arrive while one is in flight go together in the next one (a group commit): ``submit``
    waits for its own item's result. ``write`` takes a batch and returns one result per item; when it raises,
    every item of that batch gets the error. Writes run one at a time, in order."""

    def __init__(self, write: Callable[[list[T]], Awaitable[list[R]]], *, limit: int = 512) -> None:
        self.write = write
        self.limit = limit
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:self.limit], self._pending[self.limit:]
            try:
                results = await self.write([item for item, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(BaseException):
                await self._flusher


class Confirmer:
    """Takes recorded deliveries from the store and confirms their runs (see the module docstring).

    ``sweeper`` is the daemon's ``Sweeper`` (``tracked``, ``confirm``, ``watch``); ``client()`` the current API
    client; ``look(wanted)`` has the daemon read the top pages of the listings for these runs (resource → run
    ids) between its sweeps; ``active()`` says whether this instance confirms now (it sweeps, and has swept
    once since it took over); ``poll_s``: how often to look at the store for deliveries other instances
    recorded (None: only when ``kick``ed, and at ``idle_s``).
    """

    def __init__(self, *, sweeper: Sweeper, store: StateStore, client: Callable[[], FloraClient], clock: Clock,
                 look: Callable[[Mapping[str, Collection[str]]], Awaitable[object]],
                 active: Callable[[], bool], on_outcome: Callable[[str, Outcome, float], None] | None = None,
                 poll_s: float | None = None, idle_s: float = 5.0, concurrency: int = 64) -> None:
        self.sweeper = sweeper
        self.store = store
        self.client = client
        self.clock = clock
        self.look = look
        self.active = active
        self.on_outcome = on_outcome or (lambda run_id, outcome, latency: None)
        self.poll_s = poll_s
        self.idle_s = idle_s
        self._slots = asyncio.Semaphore(concurrency)
        self._kick = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._finishes: GroupCommit[tuple[str, str], None] = GroupCommit(self._finish)
        self.counts: dict[str, int] = {}

    async def _finish(self, outcomes: list[tuple[str, str]]) -> list[None]:
        await self.store.finish_callbacks(outcomes, now_ms=self.clock.now_ms())
        return [None] * len(outcomes)

    def kick(self) -> None:
        """A delivery was just recorded here: look at the store now."""
        self._kick.set()

    @property
    def pending(self) -> int:
        return len(self._inflight)

    async def run(self) -> None:
        """Until cancelled: wait for a kick (or ``poll_s``/``idle_s``), then start a confirmation for every
        recorded delivery not yet done. Cancelling it cancels the confirmations in flight; their deliveries stay
        recorded, not done, and are taken again later."""
        try:
            while True:
                wait = self.poll_s if self.poll_s is not None else self.idle_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), wait)
                self._kick.clear()
                if self.active():
                    await self.take()
        finally:
            for task in list(self._inflight.values()):
                task.cancel()
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def take(self) -> int:
        """Start a confirmation for each recorded delivery not done and not in flight; returns how many."""
        rows: list[RecordedCallback] = await self.store.pending_callbacks(limit=BATCH, exclude=list(self._inflight))
        for row in rows:
            task = asyncio.create_task(self._one(row), name=f"confirm-{row.delivery_id}")
            self._inflight[row.delivery_id] = task
            task.add_done_callback(functools.partial(self._done, row.delivery_id))
        if len(rows) == BATCH:
            self._kick.set()  # more are waiting
        return len(rows)

    def _done(self, delivery_id: str, task: asyncio.Task[None]) -> None:
        self._inflight.pop(delivery_id, None)

    async def drain(self) -> None:
        """Take and finish every recorded delivery (tests, ``--once``)."""
        while await self.take() or self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    async def _one(self, row: RecordedCallback) -> None:
        async with self._slots:
            watch = self.sweeper.watch
            outcome = scope_verdict(row, resources=watch.resources, workspaces=watch.workspace_id)
            try:
                if outcome is None:
                    try:
                        outcome = await self.confirm(row)
                    except StoreError:
                        raise
                    except Exception as exc:  # a bug: logged once, and the sweeps still see the run
                        log.exception("callback.crashed", delivery_id=row.delivery_id, run_id=row.run_id,
                                      error=f"{type(exc).__name__}: {exc}")
                        outcome = Outcome.ERROR
                await self._finishes.submit((row.delivery_id, str(outcome)))
            except StoreError as exc:  # LeaseLost too: the delivery stays recorded, the sweeper takes it (again)
                log.warning("callback.unconfirmed", delivery_id=row.delivery_id, run_id=row.run_id,
                            error=f"{type(exc).__name__}: {str(exc)[:200]}", note="taken again later")
                return
        now = self.clock.now_ms()
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        latency = max(0.0, (now - row.received_ms) / 1000)
        self.on_outcome(row.run_id, outcome, latency)
        (log.info if outcome is Outcome.CONFIRMED else log.debug)(
            "callback.done", delivery_id=row.delivery_id, run_id=row.run_id, outcome=str(outcome),
            seconds=round(latency, 3))

    async def confirm(self, row: RecordedCallback) -> Outcome:
        """Ask the API about the run of ``row`` until it shows it finished (see the module docstring). A run
        near the top of its listing (untracked, or created after its listing's new-run floor) is looked for in
        the listing, with every other callback waiting then; an older tracked run, and a tracked run asked again,
        is fetched on its own."""
        run_id, resource = row.run_id, resource_of(row.run_type)
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS_S)):
            if delay:
                await self.clock.sleep(delay)
            tracked = self.sweeper.tracked.get(run_id)
            if tracked is not None and tracked.terminal:
                return Outcome.KNOWN if attempt == 0 else Outcome.CONFIRMED
            try:
                # A retry of a tracked run asks for it alone: the look may not have reached it (a busy listing
                # pushes a run down faster than a look reads), and one request settles it.
                if tracked is None or (attempt == 0 and self.sweeper.on_top(tracked)):
                    await self.look({resource: [run_id]})
                else:
                    run = await self.client().get_run(run_id, poll_url=tracked.run.poll_url,
                                                      technique_id=tracked.run.technique_id)
                    await self.sweeper.confirm(run)
            except StoreError:
                raise
            except WatcherError as exc:  # the API (or the sweep that was to look) failed
                log.debug("callback.api_failed", run_id=run_id, error=str(exc)[:200])
                return Outcome.API_ERROR
            now = self.sweeper.tracked.get(run_id)
            if now is None:
                # Never tracked: its listing (with the watched filters) did not show it. Tracked before and
                # gone now: it finished and was forgotten, its event decided.
                return Outcome.UNLISTED if tracked is None else Outcome.KNOWN
            if now.terminal:
                return Outcome.CONFIRMED
        return Outcome.STILL_ACTIVE


class Looks:
    """Runs callbacks named, waiting for the sweep loop to look for them in their listings.

    ``request`` (the confirmer) adds run ids and waits until a look — or a full sweep — that started after the
    request has finished (re-raising what it raised). The sweep loop ``take``s everything waiting before it
    starts one and ``settle``s the waiters after; ``event`` is set while requests wait, ``on_request`` wakes
    the loop."""

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        self.wanted: dict[str, set[str]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self.event = asyncio.Event()
        self.on_request = on_request or (lambda: None)

    def __bool__(self) -> bool:
        return bool(self._waiters)

    async def request(self, wanted: Mapping[str, Collection[str]]) -> None:
        for resource, ids in wanted.items():
            self.wanted.setdefault(resource, set()).update(ids)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.event.set()
        self.on_request()
        await waiter

    def take(self) -> tuple[dict[str, set[str]], list[asyncio.Future[None]]]:
        wanted, waiters = self.wanted, self._waiters
        self.wanted, self._waiters = {}, []
        self.event.clear()
        return wanted, waiters

    @staticmethod
    def settle(waiters: list[asyncio.Future[None]], error: BaseException | None = None) -> None:
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def cancel_all(self) -> None:
        _, waiters = self.take()
        for waiter in waiters:
            waiter.cancel()
