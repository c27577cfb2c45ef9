"""One sweep: listings and polls through the API client → ``transitions.detect`` → one store commit.

Shell: it fetches and stores; ``plan.py`` decides how deep to list and whom to poll, ``transitions.py`` decides
what changed, ``routing.py`` which sinks an event goes to. Everything a sweep learned is committed in one
transaction (tracked runs, events, one pending delivery per matching sink, watermarks) before the dispatcher
sends anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from watcher import plan, routing
from watcher.api import FloraClient
from watcher.clock import Clock
from watcher.config import SinkConfig, WatchConfig
from watcher.crashpoints import crash_point
from watcher.errors import ApiError, AuthError, NotFoundError
from watcher.model import KNOWN_STATUSES, Event, Run, RunStatus, TrackedRun
from watcher.outage import OutageLog
from watcher.transitions import Context, detect

log = structlog.get_logger("watcher.sweep")

PAGE_SIZE = 100
META_FIRST_START = "first_start_ms"
META_LAST_SWEEP = "last_sweep_ms"
META_LAST_SWEEP_OK = "last_sweep_ok_ms"
META_LAST_ERROR = "last_sweep_error"
META_LAST_RESYNC = "last_resync_ms"


def hw_key(filters: plan.Filters) -> str:
    return f"high_watermark_ms:{filters.key}"


@dataclass(slots=True)
class SweepResult:
    ok: bool = True
    error: str | None = None
    pages: int = 0
    polls: int = 0
    observed: int = 0
    events: list[Event] = field(default_factory=list)
    new_event_ids: list[str] = field(default_factory=list)
    resync: bool = False
    seconds: float = 0.0


class Sweeper:
    """Keeps the tracked runs in memory (mirrored in the store) and runs one sweep at a time."""

    def __init__(
        self,
        client: FloraClient,
        store,  # AsyncStore
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
        self.on_progress = on_progress or (lambda: None)  # called per page and per poll: the loop is alive
        self.filters = plan.filter_combinations(watch.workspace_id, watch.project_id, watch.technique_id)
        self.enabled = frozenset(watch.events)
        self.tracked: dict[str, TrackedRun] = {}
        self.high_watermarks: dict[str, int | None] = {}
        self.first_start_ms: int = 0
        self.last_resync_ms: int | None = None
        self.sweeps = 0
        self.outage = OutageLog(log)  # api.unavailable / still_unavailable / recovered, instead of a line a sweep
        self._warned_unknown: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------------------------------- lifecycle

    async def load(self) -> None:
        """Read tracked runs and watermarks; record the very first start once, forever."""
        first = await self.store.get_meta(META_FIRST_START)
        if first is None:
            self.first_start_ms = self.clock.now_ms()
            await self.store.set_meta({META_FIRST_START: str(self.first_start_ms)})
            log.info("watcher.first_start", note="runs already finished now will not be reported")
        else:
            self.first_start_ms = int(first)
        self.tracked = await self.store.load_tracked()
        for f in self.filters:
            raw = await self.store.get_meta(hw_key(f))
            self.high_watermarks[f.key] = int(raw) if raw else None
        active = sum(1 for t in self.tracked.values() if not t.terminal)
        log.info("watcher.state_loaded", tracked=len(self.tracked), active=active)

    def replace_config(self, watch: WatchConfig, sinks: Sequence[SinkConfig]) -> None:
        """Swap in a reloaded config (between sweeps)."""
        self.watch = watch
        self.sinks = tuple(sinks)
        self.enabled = frozenset(watch.events)
        new_filters = plan.filter_combinations(watch.workspace_id, watch.project_id, watch.technique_id)
        for f in new_filters:
            self.high_watermarks.setdefault(f.key, None)
        self.filters = new_filters
        self.last_resync_ms = None  # list the (new) active set in full on the next sweep

    # ----------------------------------------------------------------------------------------------- sweep

    async def sweep(self) -> SweepResult:
        """One full sweep. Raises AuthError (fatal for the daemon); other API errors end the sweep early, and
        what was learned until then is still committed."""
        started = self.clock.monotonic()
        now = self.clock.now_ms()
        result = SweepResult()
        dirty: set[str] = set()
        seen: set[str] = set()
        completed_windows: dict[str, int | None] = {}
        first_sweep = self.sweeps == 0
        self.client.quiet_failures = self.outage.ongoing
        try:
            try:
                if self._resync_due(now):
                    result.resync = True
                    await self._resync(now, first_sweep, result, dirty, seen)
                for f in self.filters:
                    completed_windows[f.key] = await self._window(f, now, first_sweep, result, dirty, seen)
                await self._poll_unsettled(now, first_sweep, result, dirty, seen)
            except AuthError:
                raise
            except ApiError as exc:
                result.ok = False
                result.error = f"{type(exc).__name__}: {exc}"
                log.debug("sweep.failed", error=result.error, observed=result.observed, pages=result.pages)
                # The listing failed: keep following the tracked runs one by one on their own schedule, a few
                # per sweep (as many as `concurrency`), so a broken list endpoint does not stall detection,
                # while a down API costs only a handful of requests per sweep.
                await self._poll_unsettled(now, first_sweep, result, dirty, seen, limit=self.watch.concurrency)
        except AuthError:
            await self._commit(now, result, dirty, completed_windows, ok=False, error="authentication failed")
            raise
        result.seconds = self.clock.monotonic() - started
        await self._commit(now, result, dirty, completed_windows, ok=result.ok, error=result.error)
        self.sweeps += 1
        self.outage.sweep_done(ok=result.ok, now_ms=self.clock.now_ms(), error=result.error)
        # A quiet sweep is a debug line; one that found something is worth an info line. A failed sweep is told
        # by the outage lines (first failure, reminders, recovery), not once per sweep.
        emit = log.info if (result.new_event_ids or first_sweep) else log.debug
        emit(
            "sweep.finished", ok=result.ok, pages=result.pages, polls=result.polls, observed=result.observed,
            events=len(result.new_event_ids), tracked=len(self.tracked), seconds=round(result.seconds, 3),
        )
        return result

    async def _resync(self, now: int, first_sweep: bool, result: SweepResult, dirty: set[str], seen: set[str]) -> None:
        """List the active set (pending, then running) in full, so every active run is tracked."""
        for f in self.filters:
            ctx = self._context(now, f, first_sweep)
            for status in (RunStatus.PENDING, RunStatus.RUNNING):
                pages = self.client.pages(status=status, limit=PAGE_SIZE, **f.as_params())
                async with contextlib.aclosing(pages):
                    async for page in pages:
                        self._take_page(page.runs, ctx, result, dirty, seen)
        self.last_resync_ms = now

    def _resync_due(self, now: int) -> bool:
        return self.last_resync_ms is None or now - self.last_resync_ms >= self.watch.resync_interval * 1000

    def _context(self, now: int, f: plan.Filters | None, first_sweep: bool) -> Context:
        new_after = plan.new_after_for(self.high_watermarks.get(f.key)) if f is not None else None
        if new_after is None and f is not None and not any(v is not None for v in self.high_watermarks.values()):
            # No window has ever completed (first start, or every sweep so far failed): runs created after the
            # very first start are new; older ones are not reported (no flood on first start).
            new_after = self.first_start_ms
        return Context(
            now_ms=now,
            first_start_ms=self.first_start_ms,
            new_after_ms=new_after,
            process_start_ms=self.process_start_ms,
            first_sweep=first_sweep,
            enabled=self.enabled,
        )

    def _take_page(
        self, runs: Sequence[Run], ctx: Context, result: SweepResult, dirty: set[str], seen: set[str]
    ) -> None:
        """Observe one listing page: every run on it is settled by the listing."""
        result.pages += 1
        self.on_progress()
        page_ctx = self._arrived(ctx)
        for run in runs:
            self._observe(run, page_ctx, result, dirty, seen, listed=True)

    def _arrived(self, ctx: Context) -> Context:
        """``ctx`` stamped with the time a page or poll answer arrived: events carry the moment they were
        observed, not the sweep's start (a long sweep would otherwise date an event before its completion)."""
        return dataclasses.replace(ctx, now_ms=self.clock.now_ms())

    def _observe(
        self, run: Run, ctx: Context, result: SweepResult, dirty: set[str], seen: set[str], *, listed: bool
    ) -> bool:
        """Feed one observation to the transition core. Returns whether the status changed."""
        result.observed += 1
        if run.status not in KNOWN_STATUSES and (run.run_id, run.status) not in self._warned_unknown:
            if len(self._warned_unknown) >= 10_000:  # log each (run, status) once, in bounded memory
                self._warned_unknown.clear()
            self._warned_unknown.add((run.run_id, run.status))
            log.warning("run.unknown_status", run_id=run.run_id, status=run.status[:40])
        prev = self.tracked.get(run.run_id)
        decision = detect(prev, run, ctx)
        if listed:
            seen.add(run.run_id)
        if decision.tracked is None:
            if prev is not None:
                del self.tracked[run.run_id]
                dirty.add(run.run_id)
            return decision.changed
        new = plan.settled_by_listing(decision.tracked) if listed else decision.tracked
        self.tracked[run.run_id] = new
        if prev is None or decision.changed or (new.next_poll_ms, new.poll_attempt) != (
            prev.next_poll_ms, prev.poll_attempt
        ):
            dirty.add(run.run_id)
        for event in decision.events:
            result.events.append(event)
            log.info("run.transition", run_id=run.run_id, type=event.type, late=event.data.get("late"),
                     error_code=event.data.get("error_code"))
        return decision.changed

    async def _window(
        self, f: plan.Filters, now: int, first_sweep: bool, result: SweepResult, dirty: set[str], seen: set[str]
    ) -> int | None:
        """Newest-first listing of every status, as deep as the cost model says. Returns the newest created_at
        seen (the new high watermark) when the window reached its floor; raises on API errors."""
        ctx = self._context(now, f, first_sweep)
        candidates = sorted(
            (
                (t.run.created_at, t.run_id)
                for t in self.tracked.values()
                if not t.terminal and t.run.created_at is not None and f.admits(t.run)
            ),
            reverse=True,
        )
        newest: int | None = None
        oldest: int | None = None
        items = 0
        cursor_idx = 0
        async with contextlib.aclosing(self.client.pages(limit=PAGE_SIZE, **f.as_params())) as pages:
            async for page in pages:
                self._take_page(page.runs, ctx, result, dirty, seen)
                stamps = [run.created_at for run in page.runs if run.created_at is not None]
                if stamps:
                    newest = max(stamps) if newest is None else max(newest, *stamps)
                    oldest = min(stamps) if oldest is None else min(oldest, *stamps)
                items += len(page.runs)
                while cursor_idx < len(candidates) and oldest is not None and candidates[cursor_idx][0] >= oldest:
                    cursor_idx += 1
                unseen = (c for c, rid in itertools.islice(candidates, cursor_idx, None) if rid not in seen)
                if not plan.should_continue_window(
                    page_oldest_ms=oldest,
                    next_cursor=page.next_cursor,
                    new_after_ms=ctx.new_after_ms,
                    density_per_ms=plan.density(newest, oldest, items),
                    page_size=PAGE_SIZE,
                    unseen_created_desc=unseen,
                    unseen_count=len(candidates) - cursor_idx,
                ):
                    break
        previous = self.high_watermarks.get(f.key)
        if newest is None:
            return previous
        return newest if previous is None else max(previous, newest)

    async def _poll_unsettled(
        self, now: int, first_sweep: bool, result: SweepResult, dirty: set[str], seen: set[str],
        limit: int | None = None,
    ) -> None:
        """Poll, concurrently, every tracked run the listings did not settle and whose poll is due (the
        ``limit`` most overdue when given)."""
        due = plan.runs_to_poll(self.tracked, seen, now)[:limit]
        if not due:
            return
        ctx = self._context(now, None, first_sweep)
        semaphore = asyncio.Semaphore(self.watch.concurrency)
        first_s = min(max(self.watch.interval, 1.0), self.watch.poll_max_interval)

        async def poll_one(t: TrackedRun) -> None:
            async with semaphore:
                try:
                    run = await self.client.get_run(t.run_id, poll_url=t.run.poll_url, technique_id=t.run.technique_id)
                except NotFoundError:
                    log.warning("run.poll_not_found", run_id=t.run_id,
                                hint="the run may belong to another workspace or key; still tracked")
                    self._reschedule(t.run_id, changed=False, now=now, first_s=first_s, dirty=dirty)
                    return
                except AuthError:
                    raise
                except ApiError as exc:
                    (log.debug if self.outage.ongoing else log.info)("run.poll_failed", run_id=t.run_id, error=str(exc))
                    self._reschedule(t.run_id, changed=False, now=now, first_s=first_s, dirty=dirty)
                    return
            result.polls += 1
            self.on_progress()
            changed = self._observe(run, self._arrived(ctx), result, dirty, seen, listed=False)
            self._reschedule(run.run_id, changed=changed, now=now, first_s=first_s, dirty=dirty)

        tasks = [asyncio.ensure_future(poll_one(t)) for t in due]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    def _reschedule(self, run_id: str, *, changed: bool, now: int, first_s: float, dirty: set[str]) -> None:
        t = self.tracked.get(run_id)
        if t is None:
            return
        new = plan.after_poll(t, changed=changed, now_ms=now, rand=self.rand.random(), first_s=first_s,
                              cap_s=self.watch.poll_max_interval)
        if new != t:
            self.tracked[run_id] = new
            dirty.add(run_id)

    # ---------------------------------------------------------------------------------------------- commit

    async def _commit(
        self, now: int, result: SweepResult, dirty: set[str], windows: dict[str, int | None], *, ok: bool,
        error: str | None,
    ) -> None:
        for key, hw in windows.items():
            if hw is not None:
                self.high_watermarks[key] = hw
        # Prune only against the most conservative floor over all filter combinations.
        floors = [plan.new_after_for(self.high_watermarks.get(f.key)) for f in self.filters]
        floor = None if any(v is None for v in floors) else min(floors)  # type: ignore[type-var]
        deletes = plan.prunable(self.tracked, floor)
        for run_id in deletes:
            self.tracked.pop(run_id, None)
            dirty.discard(run_id)
        upserts = [self.tracked[r] for r in dirty if r in self.tracked]
        gone = [r for r in dirty if r not in self.tracked] + deletes
        routed = [(e, [s.name for s in self.sinks if routing.matches(s, e)]) for e in result.events]
        meta = {META_LAST_SWEEP: str(now)}
        if ok:
            meta[META_LAST_SWEEP_OK] = str(now)
            meta[META_LAST_ERROR] = ""
        elif error:
            meta[META_LAST_ERROR] = error[:500]
        if self.last_resync_ms is not None:
            meta[META_LAST_RESYNC] = str(self.last_resync_ms)
        for key, hw in self.high_watermarks.items():
            if hw is not None:
                meta[f"high_watermark_ms:{key}"] = str(hw)
        result.new_event_ids = await self.store.commit_sweep(
            upserts=upserts, deletes=gone, events=routed, meta=meta, now_ms=now
        )
        if result.new_event_ids:
            crash_point("after_commit")
        if self.on_commit is not None:
            self.on_commit(result)
