"""One sweep: listings and polls through the API client → ``transitions.detect`` → store commits.

Shell: it fetches and stores; ``plan.py`` decides how deep to list and whom to poll, ``transitions.py`` decides
what changed, ``routing.py`` which sinks an event goes to. What a sweep learned is committed (tracked runs,
events, one pending delivery per matching sink, watermarks) in one transaction before the dispatcher sends it.

A window that goes deep (the catch-up after a long downtime: every run created meanwhile) is committed batch by
batch, every ``CATCHUP_BATCH_PAGES`` pages: each batch's tracked runs, events and deliveries together with where
the listing stands (``catchup:<filters>`` in meta: the parts of the window still to read, each with its cursor).
The dispatcher sends a batch while the next one is read; memory is bounded by a batch (finished runs the batch
reported are forgotten once committed: the event ids in the store are the guard against a duplicate); and a
crash in the middle resumes where the last batch ended instead of reading everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog

from watcher import plan, routing
from watcher.api import FloraClient, ListPage
from watcher.clock import Clock
from watcher.config import SinkConfig, WatchConfig
from watcher.crashpoints import crash_point
from watcher.errors import ApiError, AuthError, BadResponseError, ClientRequestError, NotFoundError
from watcher.model import RESOURCE_TECHNIQUE_RUNS, Event, Run, RunStatus, TrackedRun
from watcher.normalize import RunMemo
from watcher.outage import OutageLog
from watcher.transitions import Context, detect, quick_observe
from watcher.transitions import final as finished  # (``_commit`` has a ``final`` flag of its own)

if TYPE_CHECKING:
    from watcher.store_api import StateStore, SweepCommit

log = structlog.get_logger("watcher.sweep")

PAGE_SIZE = 100
META_FIRST_START = "first_start_ms"
META_LAST_SWEEP = "last_sweep_ms"
META_LAST_SWEEP_OK = "last_sweep_ok_ms"
META_LAST_ERROR = "last_sweep_error"
META_LAST_RESYNC = "last_resync_ms"
CATCHUP_BATCH_PAGES = 20  # a deep window commits every this many pages (2,000 runs)
LOOK_PAGES = 5  # a look for runs a callback named reads at most this many pages of a listing


def hw_key(filters: plan.Filters) -> str:
    return f"high_watermark_ms:{filters.key}"


class Handoff(Protocol):
    """Where a commit's new deliveries go in this process (the dispatcher): the sweep asks how many each sink's
    worker takes in hand (``take_limits``), the store claims them for it in the commit's transaction
    (``StateStore.commit_and_claim``), and ``hand_off`` gives them over, so they are sent without being read
    back from the outbox."""

    def take_limits(self) -> Mapping[str, int]: ...

    def hand_off(self, commit: SweepCommit) -> None: ...


@dataclass(slots=True)
class SweepResult:
    ok: bool = True
    error: str | None = None
    pages: int = 0
    polls: int = 0
    observed: int = 0
    events: list[Event] = field(default_factory=list)
    new_event_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    new_events: int = 0  # events new to the store, all commits of the sweep (``events`` and ``new_event_ids``
    # hold the last commit's: a deep window commits batch by batch and forgets what it committed)
    commits: int = 0
    batched: dict[str, int] = field(default_factory=dict)  # new events by type in the commits before the last
    callback: bool = False  # a look or a confirmation for a callback (Sweeper.look/confirm), not a sweep


@dataclass(slots=True)
class _Pass:
    """What one sweep carries from its first request to its commit."""

    now: int  # local clock at the sweep's start (poll schedules, meta stamps)
    first_sweep: bool  # the first sweep of this process
    result: SweepResult = field(default_factory=SweepResult)
    dirty: set[str] = field(default_factory=set)  # run ids whose tracked row must be written (or deleted)
    seen: set[str] = field(default_factory=set)  # run ids a listing showed: they need no poll
    windows: dict[str, int | None] = field(default_factory=dict)  # filters key -> new watermark (window done)
    tops: dict[str, int] = field(default_factory=dict)  # filters key -> newest created_at listed this sweep
    segments: dict[str, list[plan.Segment]] = field(default_factory=dict)  # filters key -> parts still to read
    batch_pages: int = 0  # pages read since the last commit
    totals: dict[str, int] = field(default_factory=dict)  # filters key -> the listing's total_estimate
    completed: set[str] = field(default_factory=set)  # filters keys whose window was read to its end
    failed: dict[str, ApiError] = field(default_factory=dict)  # resource -> why its listing failed this sweep


class Sweeper:
    """Keeps the tracked runs in memory (mirrored in the store) and runs one sweep at a time."""

    def __init__(
        self,
        client: FloraClient,
        store: StateStore,
        *,
        watch: WatchConfig,
        sinks: Sequence[SinkConfig],
        clock: Clock,
        rand: random.Random | None = None,
        process_start_ms: int | None = None,
        on_commit: Callable[[SweepResult], None] | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.watch = watch
        self.sinks = tuple(sinks)
        self.clock = clock
        self.rand = rand or random.Random()
        self.process_start_ms = process_start_ms if process_start_ms is not None else clock.now_ms()
        self.on_commit = on_commit
        self.handoff: Handoff | None = None  # the sink workers, once they exist (the daemon sets it)
        self.on_progress = on_progress or (lambda: None)  # called per page and per poll: the loop is alive
        self.filters = self._listings(watch)
        self.enabled = frozenset(watch.events)
        self.unavailable: set[str] = set()  # resources that refused to be listed (404/403), until the next resync
        self._refusal_logged: set[str] = set()
        self.tracked: dict[str, TrackedRun] = {}
        self.high_watermarks: dict[str, int | None] = {}
        self.first_start_ms: int = 0
        self.last_resync_ms: int | None = None
        self.sweeps = 0
        self.outage = OutageLog(log)  # api.unavailable / still_unavailable / recovered, instead of a line a sweep
        self.catchups: dict[str, list[plan.Segment]] = {}  # filters key -> an unfinished deep window, as committed
        self.listing_totals: dict[str, int] = {}  # filters key -> total_estimate when its last window completed
        self._pruned: plan.Pruned | None = None  # the last full prune (what a deep window's batches go by)
        self.memo = RunMemo()  # the last list item of each tracked run: a run shown unchanged is not parsed again
        # Runs whose stall clock moved (progress moved) since their row was last written: run id -> when it first
        # moved unwritten. Written within ``plan.stall_clock_lag_ms`` and by ``flush`` on a clean stop.
        self.unsaved: dict[str, int] = {}
        self._commit_lock = asyncio.Lock()  # commits, and a confirmation from its observation to its commit

    # ------------------------------------------------------------------------------------------- lifecycle

    async def load(self) -> None:
        """Read tracked runs and watermarks; record the very first start once, forever."""
        now = str(self.clock.now_ms())
        first = await self.store.ensure_meta(META_FIRST_START, now)
        self.first_start_ms = int(first)
        if first == now:
            log.info("watcher.first_start", note="runs already finished now will not be reported")
        self.tracked = await self.store.load_tracked()
        self.unsaved = {}
        for f in self.filters:
            raw = await self.store.get_meta(hw_key(f))
            self.high_watermarks[f.key] = int(raw) if raw else None
            await self._load_catchup(f)
        active = sum(1 for t in self.tracked.values() if not t.terminal)
        log.info("watcher.state_loaded", tracked=len(self.tracked), active=active)

    async def _load_catchup(self, f: plan.Filters) -> None:
        total = await self.store.get_meta(plan.total_key(f))
        if total and total.isdigit():
            self.listing_totals[f.key] = int(total)
        raw = await self.store.get_meta(plan.catchup_key(f))
        try:
            segments = plan.parse_catchup(raw)
        except (ValueError, TypeError) as exc:
            log.warning("catchup.unreadable", filters=f.key, error=str(exc)[:200],
                        action="the window is read again from its newest run")
            segments = []
        if segments:
            self.catchups[f.key] = segments
            log.info("catchup.resumed", filters=f.key, runs_read=sum(s.read for s in segments),
                     parts=len(segments))

    def replace_config(self, watch: WatchConfig, sinks: Sequence[SinkConfig]) -> None:
        """Swap in a reloaded config (between sweeps)."""
        self.watch = watch
        self.sinks = tuple(sinks)
        self.enabled = frozenset(watch.events)
        new_filters = self._listings(watch)
        for f in new_filters:
            self.high_watermarks.setdefault(f.key, None)
        self.filters = new_filters
        self.catchups = {k: v for k, v in self.catchups.items() if any(f.key == k for f in new_filters)}
        self.last_resync_ms = None  # list the (new) active set in full on the next sweep

    @staticmethod
    def _listings(watch: WatchConfig) -> list[plan.Filters]:
        return plan.listings(watch.workspace_id, watch.project_id, watch.technique_id, watch.resources)

    def _refused(self, f: plan.Filters, exc: ApiError) -> bool:
        """Whether ``exc`` is a resource other than technique runs refusing to be listed (404, or 403 where the
        key works for technique runs): then that resource is skipped until the next resync, logged once at
        warning, and the sweep goes on. Anything else is the caller's to handle."""
        if f.resource == RESOURCE_TECHNIQUE_RUNS:
            return False
        if not (isinstance(exc, NotFoundError) or (isinstance(exc, AuthError) and exc.status == 403)):
            return False
        self.unavailable.add(f.resource)
        emit = log.debug if f.resource in self._refusal_logged else log.warning
        self._refusal_logged.add(f.resource)
        emit("api.resource_unavailable", resource=f.resource, status=exc.status, code=exc.code,
             retry="at the next resync", note="technique runs are still watched")
        return True

    async def _listing(self, f: plan.Filters, sw: _Pass, work: Callable[[], Awaitable[None]]) -> None:
        """``work()``, a listing of ``f``. Returns quietly when ``f``'s resource refused (see ``_refused``). A
        failure of this resource alone (404, another 4xx, a body that is not a listing) is noted in ``sw.failed``
        and the other resources are still listed; the sweep then counts as failed. Anything else (the API down,
        rate limited, the key refused) ends the listings at once."""
        if f.resource in sw.failed:
            return
        try:
            await work()
        except ApiError as exc:
            if self._refused(f, exc):
                return
            if isinstance(exc, AuthError) or not isinstance(exc, NotFoundError | ClientRequestError | BadResponseError):
                raise
            sw.failed[f.resource] = exc

    # ----------------------------------------------------------------------------------------------- sweep

    async def sweep(self) -> SweepResult:
        """One full sweep. Raises AuthError (fatal for the daemon); other API errors end the sweep early, and
        what was learned until then is still committed."""
        started = self.clock.monotonic()
        sw = _Pass(now=self.clock.now_ms(), first_sweep=self.sweeps == 0)
        result = sw.result
        self.client.quiet_failures = self.outage.ongoing
        try:
            try:
                if self._resync_due(sw.now):
                    await self._resync(sw)
                for f in self.filters:
                    if f.resource not in self.unavailable:
                        await self._listing(f, sw, functools.partial(self._window_into, f, sw))
                if sw.failed:  # one resource could not be listed; the others were
                    raise next(iter(sw.failed.values()))
                await self._poll_unsettled(sw)
            except AuthError:
                raise
            except ApiError as exc:
                result.ok = False
                result.error = f"{type(exc).__name__}: {exc}"
                log.debug("sweep.failed", error=result.error, observed=result.observed, pages=result.pages)
                # The listing failed: keep following the tracked runs one by one on their own schedule, a few
                # per sweep (as many as `concurrency`), so a broken list endpoint does not stall detection,
                # while a down API costs only a handful of requests per sweep.
                await self._poll_unsettled(sw, limit=self.watch.concurrency)
        except AuthError:
            result.ok, result.error = False, "authentication failed"
            await self._commit(sw, final=True)
            raise
        result.seconds = self.clock.monotonic() - started
        await self._commit(sw, final=True)
        self.sweeps += 1
        self.outage.sweep_done(ok=result.ok, now_ms=self.clock.now_ms(), error=result.error)
        # A quiet sweep is a debug line; one that found something is worth an info line. A failed sweep is told
        # by the outage lines (first failure, reminders, recovery), not once per sweep.
        emit = log.info if (result.new_events or sw.first_sweep) else log.debug
        emit(
            "sweep.finished", ok=result.ok, pages=result.pages, polls=result.polls, observed=result.observed,
            events=result.new_events, tracked=len(self.tracked), seconds=round(result.seconds, 3),
        )
        return result

    # ------------------------------------------------------------------------------------- callbacks

    async def look(self, wanted: Mapping[str, Collection[str]]) -> set[str]:
        """A quick look for runs a callback named: the top pages of each listing of the wanted resources
        (resource → run ids), newest first, each page observed exactly as a sweep observes it, until every
        wanted run of that resource was shown, the page reaches the new-run floor or ``LOOK_PAGES`` pages were
        read; then one commit of what changed (tracked runs and events; no watermarks: the next sweep's window
        reads these runs again and passes over the finished ones). A listing whose window is being caught up is
        left to the sweep. Returns the wanted run ids the listings showed (a run they did not show is outside
        the watched scope, or not listed yet: the sweeps will tell). Raises ApiError as a sweep does."""
        sw = _Pass(now=self.clock.now_ms(), first_sweep=False)
        found: set[str] = set()
        for f in self.filters:
            ids = set(wanted.get(f.resource, ()))
            if not ids or f.resource in self.unavailable or f.key in self.catchups:
                continue
            ctx = self._context(sw, f)
            pages = 0
            async with contextlib.aclosing(self._pages(f)) as listing:
                async for page in listing:
                    self._take_page(page.runs, ctx, sw)
                    pages += 1
                    shown = {run.run_id for run in page.runs} & ids
                    found |= shown
                    ids -= shown
                    stamps = [run.created_at for run in page.runs if run.created_at is not None]
                    floor = ctx.new_after_ms
                    if not ids or pages >= LOOK_PAGES or (floor is not None and stamps and min(stamps) < floor):
                        break
        await self._commit_observed(sw)
        return found

    def on_top(self, t: TrackedRun) -> bool:
        """Whether a look at the top of its listing shows ``t``: created after the new-run floor of a listing of
        its resource (or not yet on a floor). Older runs are fetched on their own instead."""
        created = t.run.created_at
        if created is None:
            return False
        for f in self.filters:
            if f.admits(t.run):
                floor = plan.new_after_for(self.high_watermarks.get(f.key))
                if floor is None or created >= floor:
                    return True
        return False

    async def confirm(self, run: Run) -> list[str]:
        """One run fetched for a callback, through the rules of a sweep's poll: observe, reschedule, then one
        commit of its row and events (on PostgreSQL fenced by the sweep lease, like any sweep commit). Returns
        the ids of events new to the store.

        Observation and commit happen under the commit lock: no other commit can write this run's new state
        before its event is stored (a kill -9 in between would lose the event), and when the commit fails the
        run's state in memory is put back, so the next sweep or confirmation decides again."""
        async with self._commit_lock:
            prev = self.tracked.get(run.run_id)
            sw = _Pass(now=self.clock.now_ms(), first_sweep=False)
            changed = self._observe(run, self._context(sw, None), sw, listed=False)
            first_s = min(max(self.watch.interval, 1.0), self.watch.poll_max_interval)
            self._reschedule(run.run_id, sw, changed=changed, first_s=first_s)
            try:
                return await self._commit_observed(sw, locked=True)
            except BaseException:
                if prev is None:
                    self.tracked.pop(run.run_id, None)
                else:
                    self.tracked[run.run_id] = prev
                raise

    async def _commit_observed(self, sw: _Pass, *, locked: bool = False) -> list[str]:
        """Commit the runs and events of a look or a confirmation (no watermarks, no prune, no sweep stamps)."""
        if not locked:
            async with self._commit_lock:
                return await self._commit_observed(sw, locked=True)
        upserts = [self.tracked[r] for r in sw.dirty if r in self.tracked]
        for run_id in sw.dirty:
            self.unsaved.pop(run_id, None)
        if not upserts and not sw.result.events:
            return []
        routed = [(e, routing.route(self.sinks, e)) for e in sw.result.events]
        new = await self._write(upserts=upserts, deletes=[], events=routed, meta={}, now_ms=sw.now)
        sw.result.new_event_ids = new
        sw.result.new_events = len(new)
        sw.result.commits = 1
        sw.result.callback = True
        if self.on_commit is not None:
            self.on_commit(sw.result)
        return new

    async def _resync(self, sw: _Pass) -> None:
        """List the active set (pending, then running) in full, so every active run is tracked. Every resource is
        asked again, also one that refused before."""
        refused_before, self.unavailable = self.unavailable, set()
        for f in self.filters:
            if f.resource not in self.unavailable:
                await self._listing(f, sw, functools.partial(self._resync_one, f, sw))
        for resource in refused_before - self.unavailable:
            if resource in {f.resource for f in self.filters}:
                log.info("api.resource_available", resource=resource)
                self._refusal_logged.discard(resource)
        if not sw.failed:  # a resource that failed is resynced again at the next sweep
            self.last_resync_ms = sw.now

    async def _resync_one(self, f: plan.Filters, sw: _Pass) -> None:
        ctx = self._context(sw, f)
        for status in (RunStatus.PENDING, RunStatus.RUNNING):
            async with contextlib.aclosing(self._pages(f, status)) as pages:
                async for page in pages:
                    self._take_page(page.runs, ctx, sw)

    def _pages(
        self, f: plan.Filters, status: str | None = None, cursor: str | None = None
    ) -> AsyncGenerator[ListPage, None]:
        return self.client.pages(status=status, limit=PAGE_SIZE, workspace_id=f.workspace_id,
                                 project_id=f.project_id, technique_id=f.technique_id, resource=f.resource,
                                 cursor=cursor, memo=self.memo)

    def _resync_due(self, now: int) -> bool:
        return self.last_resync_ms is None or now - self.last_resync_ms >= self.watch.resync_interval * 1000

    def _context(self, sw: _Pass, f: plan.Filters | None) -> Context:
        new_after = plan.new_after_for(self.high_watermarks.get(f.key)) if f is not None else None
        if new_after is None and f is not None and not any(v is not None for v in self.high_watermarks.values()):
            # No window has ever completed (first start, or every sweep so far failed): runs created after the
            # very first start are new; older ones are not reported (no flood on first start).
            new_after = self.first_start_ms
        return Context(
            now_ms=sw.now,
            first_start_ms=self.first_start_ms,
            new_after_ms=new_after,
            process_start_ms=self.process_start_ms,
            first_sweep=sw.first_sweep,
            enabled=self.enabled,
            stalled_after_ms=int(self.watch.stalled_after * 1000),
        )

    def _take_page(self, runs: Sequence[Run], ctx: Context, sw: _Pass) -> None:
        """Observe one listing page: every run on it is settled by the listing."""
        sw.result.pages += 1
        self.on_progress()
        page_ctx = self._arrived(ctx)
        for run in runs:
            self._observe(run, page_ctx, sw, listed=True)

    def _arrived(self, ctx: Context) -> Context:
        """``ctx`` stamped with the time a page or poll answer arrived: events carry the moment they were
        observed, not the sweep's start (a long sweep would otherwise date an event before its completion)."""
        return dataclasses.replace(ctx, now_ms=self.clock.now_ms())

    def _observe(self, run: Run, ctx: Context, sw: _Pass, *, listed: bool) -> bool:
        """Feed one observation to the transition core. Returns whether the status changed. (A status outside
        the API's enum is logged once by the API client, where it is parsed.)"""
        sw.result.observed += 1
        prev = self.tracked.get(run.run_id)
        if prev is not None:
            if finished(prev):  # a finished run shown again: nothing can come of it
                return False
            if listed and prev.next_poll_ms is None and prev.poll_attempt == 0:
                # Progress is not a transition: a run shown unchanged, or with only its progress moved, needs no
                # ``detect`` (most of a sweep's ~10,000 runs at 10,000 active runs).
                quick = quick_observe(prev, run, ctx)
                if quick is not None:
                    sw.seen.add(run.run_id)
                    if quick is not prev:
                        self.tracked[run.run_id] = quick
                        if quick.stuck_since_ms != prev.stuck_since_ms and run.run_id not in self.unsaved:
                            self.unsaved[run.run_id] = sw.now
                    return False
        decision = detect(prev, run, ctx)
        if listed and decision.tracked is not None and not decision.tracked.terminal:
            sw.seen.add(run.run_id)  # only active runs are polled: a finished one need not be remembered here
        if decision.tracked is None:
            if prev is not None:
                del self.tracked[run.run_id]
                sw.dirty.add(run.run_id)
            return decision.changed
        new = plan.settled_by_listing(decision.tracked) if listed else decision.tracked
        if new is prev and not decision.events:  # seen again, unchanged: the common case of a sweep
            return False
        self.tracked[run.run_id] = new
        # The stall clock and marker are persisted too: a restart must never repeat a run.stalled (written at
        # once) and should not forget that progress moved (written lazily: see plan.STALL_CLOCK_MAX_LAG_MS).
        if prev is None or decision.changed or (new.next_poll_ms, new.poll_attempt, new.stalled) != (
            prev.next_poll_ms, prev.poll_attempt, prev.stalled
        ):
            sw.dirty.add(run.run_id)
        elif new.stuck_since_ms != prev.stuck_since_ms and run.run_id not in self.unsaved:
            self.unsaved[run.run_id] = sw.now
        for event in decision.events:
            sw.result.events.append(event)
            # A catch-up (a sweep that has committed a batch) tells its transitions by the batch, in its
            # sweep.catchup lines: tens of thousands of lines at info would flood the journal and cost CPU.
            (log.debug if sw.result.commits else log.info)(
                "run.transition", run_id=run.run_id, type=event.type, late=event.data.get("late"),
                error_code=event.data.get("error_code"))
        return decision.changed

    async def _window_into(self, f: plan.Filters, sw: _Pass) -> None:
        sw.windows[f.key] = await self._window(f, sw)

    async def _window(self, f: plan.Filters, sw: _Pass) -> int | None:
        """Newest-first listing of every status, as deep as the cost model says, committed every
        ``CATCHUP_BATCH_PAGES`` pages. Returns the new high watermark once every part of the window was read;
        raises on API errors (what was read is committed, with where to go on).

        An unfinished window of an earlier sweep (or process) is finished first: this sweep lists the runs
        created since down to that window's newest run, then reads on from where it stopped."""
        stored = self.catchups.get(f.key, [])
        ctx = self._context(sw, f)
        if stored:  # the unfinished window's floor decides which runs are new
            ctx = dataclasses.replace(ctx, new_after_ms=stored[-1].floor)
        segments = plan.window_parts(stored, ctx.new_after_ms)
        sw.segments[f.key] = segments
        candidates = plan.active_created_desc(self.tracked, f)
        while segments:
            segment = segments[0]
            try:
                await self._read_segment(f, segment, ctx, candidates, sw)
            except (ClientRequestError, NotFoundError) as exc:
                if segment.cursor is None:
                    raise
                # The API no longer takes the cursor saved before a restart: read this part again from the
                # newest run down to its floor (its events are stored already: nothing is sent twice).
                log.warning("catchup.cursor_rejected", filters=f.key, error=str(exc)[:200],
                            action="the unfinished part is read again from the newest run")
                segment.cursor = None
                continue
            segments.pop(0)
        sw.completed.add(f.key)
        return plan.max_opt(self.high_watermarks.get(f.key), sw.tops.get(f.key))

    async def _read_segment(
        self, f: plan.Filters, segment: plan.Segment, ctx: Context, candidates: list[tuple[int, str]], sw: _Pass
    ) -> None:
        newest: int | None = None
        oldest: int | None = None
        items = 0
        cursor_idx = 0
        async with contextlib.aclosing(self._pages(f, cursor=segment.cursor)) as pages:
            async for page in pages:
                self._take_page(page.runs, ctx, sw)
                if segment.cursor is None and segment.expected is None and page.total_estimate is not None:
                    # how many runs the listing gained since its last complete window
                    segment.expected = plan.expected_new(page.total_estimate, self.listing_totals.get(f.key))
                    sw.totals[f.key] = page.total_estimate
                segment.read += len(page.runs)
                stamps = [run.created_at for run in page.runs if run.created_at is not None]
                if stamps:
                    newest = max(stamps) if newest is None else max(newest, *stamps)
                    oldest = min(stamps) if oldest is None else min(oldest, *stamps)
                    segment.top = plan.max_opt(segment.top, newest)
                    sw.tops[f.key] = max(sw.tops.get(f.key, newest), newest)
                items += len(page.runs)
                while cursor_idx < len(candidates) and oldest is not None and candidates[cursor_idx][0] >= oldest:
                    cursor_idx += 1
                unseen = (c for c, rid in itertools.islice(candidates, cursor_idx, None) if rid not in sw.seen)
                if not plan.should_continue_window(
                    page_oldest_ms=oldest,
                    next_cursor=page.next_cursor,
                    new_after_ms=segment.floor,
                    density_per_ms=plan.density(newest, oldest, items),
                    page_size=PAGE_SIZE,
                    unseen_created_desc=unseen,
                    unseen_count=len(candidates) - cursor_idx,
                ):
                    return
                segment.cursor = page.next_cursor
                sw.batch_pages += 1
                if sw.batch_pages >= CATCHUP_BATCH_PAGES:
                    await self._commit(sw, final=False)
                    crash_point("catchup_batch")
                    self._log_catchup(f, sw)

    def _log_catchup(self, f: plan.Filters, sw: _Pass) -> None:
        segments = sw.segments.get(f.key, [])
        read, remaining = plan.segments_progress(segments)
        log.info("sweep.catchup", filters=f.key, runs_read=read, events_queued=sw.result.new_events,
                 by_type=dict(sw.result.batched),
                 estimated_remaining=remaining, pages=sw.result.pages)

    async def _poll_unsettled(self, sw: _Pass, limit: int | None = None) -> None:
        """Poll, concurrently, every tracked run the listings did not settle and whose poll is due (the
        ``limit`` most overdue when given)."""
        due = plan.runs_to_poll(self.tracked, sw.seen, sw.now)[:limit]
        if not due:
            return
        ctx = self._context(sw, None)
        semaphore = asyncio.Semaphore(self.watch.concurrency)
        first_s = min(max(self.watch.interval, 1.0), self.watch.poll_max_interval)

        async def poll_one(t: TrackedRun) -> None:
            async with semaphore:
                try:
                    run = await self.client.get_run(t.run_id, poll_url=t.run.poll_url, technique_id=t.run.technique_id)
                except NotFoundError:
                    log.warning("run.poll_not_found", run_id=t.run_id,
                                hint="the run may belong to another workspace or key; still tracked")
                    self._reschedule(t.run_id, sw, changed=False, first_s=first_s)
                    return
                except AuthError:
                    raise
                except ApiError as exc:
                    (log.debug if self.outage.ongoing else log.info)("run.poll_failed", run_id=t.run_id, error=str(exc))
                    self._reschedule(t.run_id, sw, changed=False, first_s=first_s)
                    return
            sw.result.polls += 1
            self.on_progress()
            changed = self._observe(run, self._arrived(ctx), sw, listed=False)
            self._reschedule(run.run_id, sw, changed=changed, first_s=first_s)

        tasks = [asyncio.ensure_future(poll_one(t)) for t in due]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    def _reschedule(self, run_id: str, sw: _Pass, *, changed: bool, first_s: float) -> None:
        t = self.tracked.get(run_id)
        if t is None:
            return
        new = plan.after_poll(t, changed=changed, now_ms=sw.now, rand=self.rand.random(), first_s=first_s,
                              cap_s=self.watch.poll_max_interval)
        if new != t:
            self.tracked[run_id] = new
            sw.dirty.add(run_id)

    # ---------------------------------------------------------------------------------------------- commit

    async def flush(self) -> int:
        """Write the stall clocks still unwritten (a clean stop): a restart then times every stall exactly.
        Returns how many runs were written."""
        rows = [self.tracked[r] for r in self.unsaved if r in self.tracked]
        if rows:
            await self.store.commit_sweep(upserts=rows, deletes=[], events=[], meta={}, now_ms=self.clock.now_ms())
        self.unsaved = {}
        return len(rows)

    async def _write(self, *, upserts: list[TrackedRun], deletes: list[str], events: list[tuple[Event, list[str]]],
                     meta: dict[str, str], now_ms: int) -> list[str]:
        """One commit of the store; with events and a ``handoff``, its new deliveries go to the sink workers
        that take them (claimed for them in the same transaction). Returns the ids of the new events."""
        handoff = self.handoff
        if handoff is None or not events:
            return await self.store.commit_sweep(upserts=upserts, deletes=deletes, events=events, meta=meta,
                                                 now_ms=now_ms)
        commit = await self.store.commit_and_claim(upserts=upserts, deletes=deletes, events=events, meta=meta,
                                                   now_ms=now_ms, take=handoff.take_limits())
        handoff.hand_off(commit)
        return commit.new_ids

    async def _commit(self, sw: _Pass, *, final: bool) -> None:
        """Write what the sweep learned since its last commit in one transaction. ``final``: the sweep is over
        (watermarks of the completed windows, the sweep's status); otherwise a batch of a deep window. Under
        the commit lock, which a callback's confirmation holds from its observation to its commit."""
        async with self._commit_lock:
            await self._commit_locked(sw, final=final)

    async def _commit_locked(self, sw: _Pass, *, final: bool) -> None:
        result, dirty = sw.result, sw.dirty
        if final:
            for key, hw in sw.windows.items():
                if hw is not None:
                    self.high_watermarks[key] = hw
        # Forget finished runs below the most conservative floor over all listings of their run type: the floor of
        # the newest run listed (a re-read of an older finished run cannot look new; its event id is stored anyway).
        # A batch of a deep window looks only at what it wrote; the sweep's last commit at every tracked run.
        newest = {f.key: plan.max_opt(self.high_watermarks.get(f.key), sw.tops.get(f.key)) for f in self.filters}
        floors = plan.prune_floors(self.filters, newest)
        if final or self._pruned is None:
            self._pruned = plan.prune(self.tracked, floors)
            deletes = self._pruned.deletes
        else:
            deletes = plan.prune_batch(self.tracked, dirty, floors, self._pruned)
        unsaved = self.unsaved
        for run_id in deletes:
            self.tracked.pop(run_id, None)
            dirty.discard(run_id)
            self.memo.forget(run_id)
            unsaved.pop(run_id, None)
        if final:
            lag_ms = plan.stall_clock_lag_ms(int(self.watch.stalled_after * 1000))
            dirty.update(plan.unsaved_due(unsaved, sw.now, lag_ms))
        upserts = [self.tracked[r] for r in dirty if r in self.tracked]
        gone = [r for r in dirty if r not in self.tracked] + deletes
        if unsaved:
            for run_id in dirty:
                unsaved.pop(run_id, None)
        if final and len(self.memo) > len(self.tracked):  # runs listed and dropped without a prune
            self.memo.retain(self.tracked)
        routed = [(e, routing.route(self.sinks, e)) for e in result.events]
        meta: dict[str, str] = {}
        catchups: dict[str, list[plan.Segment]] = {}
        for f in self.filters:
            if f.key not in sw.segments:
                continue
            left = plan.left_to_read(sw.segments[f.key])
            catchups[f.key] = left
            if left or self.catchups.get(f.key):
                meta[plan.catchup_key(f)] = plan.dump_catchup(left)
        if final:
            meta[META_LAST_SWEEP] = str(sw.now)
            if result.ok:
                meta[META_LAST_SWEEP_OK] = str(sw.now)
                meta[META_LAST_ERROR] = ""
            elif result.error:
                meta[META_LAST_ERROR] = result.error[:500]
            if self.last_resync_ms is not None:
                meta[META_LAST_RESYNC] = str(self.last_resync_ms)
            for f in self.filters:
                hw = self.high_watermarks.get(f.key)
                if hw is not None:
                    meta[hw_key(f)] = str(hw)
                if f.key in sw.completed and f.key in sw.totals:
                    meta[plan.total_key(f)] = str(sw.totals[f.key])
        result.new_event_ids = await self._write(upserts=upserts, deletes=gone, events=routed, meta=meta, now_ms=sw.now)
        result.new_events += len(result.new_event_ids)
        result.commits += 1
        for key, segments in catchups.items():
            if segments:
                self.catchups[key] = segments
            else:
                self.catchups.pop(key, None)
        if final:
            for f in self.filters:
                if f.key in sw.completed and f.key in sw.totals:
                    self.listing_totals[f.key] = sw.totals[f.key]
        if result.new_event_ids:
            crash_point("after_commit")
        if self.on_commit is not None:
            self.on_commit(result)
        if not final:  # a batch: what it committed is not kept in memory, only counted
            new = set(result.new_event_ids)
            for event in result.events:
                if event.id in new:
                    result.batched[event.type] = result.batched.get(event.type, 0) + 1
            result.events = []
            dirty.clear()
            sw.batch_pages = 0
