"""The catch-up in the sweep itself (in process, against the simulator): a deep window commits batch by batch,
forgets the finished runs it committed, and a sweep that failed in the middle is resumed, not read again. On
both state-store back ends; on PostgreSQL each batch's commit is fenced by the sweeper's lease."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from watcher import plan
from watcher import sweep as sweep_mod
from watcher.api import FloraClient, ListPage
from watcher.clock import SYSTEM_CLOCK
from watcher.config import WatchConfig
from watcher.errors import ApiUnavailableError
from watcher.plan import catchup_progress
from watcher.secret import Secret
from watcher.sinks.registry import sink_config
from watcher.store import AsyncStore, Store
from watcher.sweep import Sweeper

KEY = "sk_test_catchup_sweep_0123456789"
SIM_SEED = 9
HW = "high_watermark_ms:*|*|*"


class CountingClient:
    """The real client; counts the window's pages (listings of every status) and can fail after ``fail_after``
    of them, as an API that goes down in the middle of a catch-up; ``before_page(n)`` runs before the n-th."""

    def __init__(self, client: FloraClient, fail_after: int | None = None,
                 before_page: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.client = client
        self.fail_after = fail_after
        self.before_page = before_page
        self.window_pages = 0

    async def pages(self, **kwargs: Any) -> AsyncGenerator[ListPage, None]:
        async for page in self.client.pages(**kwargs):
            if kwargs.get("status") is None:
                if self.fail_after is not None and self.window_pages >= self.fail_after:
                    raise ApiUnavailableError("list: the API went away")
                self.window_pages += 1
                if self.before_page is not None:
                    await self.before_page(self.window_pages)
            yield page

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        s: Any = AsyncStore(Store.open(tmp_path / "state.sqlite3"))
    else:
        from watcher.store_pg import PgStore

        s = await PgStore.open(request.getfixturevalue("pg_url"))
    try:
        yield s
    finally:
        await s.aclose()


async def downtime(store: Any, sim: Any, runs: int) -> set[str]:
    """The watcher's state moved back ten minutes; ``runs`` runs created and finished meanwhile."""
    down = sim.sim.now_ms() - 600_000
    await store.set_meta({"first_start_ms": str(down), HW: str(down)})
    return set(sim.sim.create_runs(runs, pending_ms=(0, 5), running_ms=(5, 20),
                                   created_at=(down + 1_000, sim.sim.now_ms() - 1_000)))


async def test_a_deep_window_commits_in_batches_and_a_failed_one_resumes(sim, store, tmp_path: Path,
                                                                        monkeypatch) -> None:
    monkeypatch.setattr(sweep_mod, "CATCHUP_BATCH_PAGES", 3)
    watch = WatchConfig(interval=1, state_dir=tmp_path)
    sinks = [sink_config(name="journal", type="file", path=tmp_path / "events.jsonl")]
    commits: list[int] = []
    pages_done: list[int] = []  # the daemon feeds the watchdog here (on_progress) and wakes its sinks on_commit
    async with FloraClient(sim.base_url, Secret(KEY), max_rps=0) as real:

        def sweeper(client: Any) -> Sweeper:
            return Sweeper(client, store, watch=watch, sinks=sinks, clock=SYSTEM_CLOCK,
                           on_commit=lambda r: commits.append(len(r.new_event_ids)),
                           on_progress=lambda: pages_done.append(len(commits)))

        first = sweeper(real)
        await first.load()
        assert (await first.sweep()).ok  # the first start ever: an empty window
        # A ten-minute downtime: the watcher's watermark moved back; 1,000 runs created and finished meanwhile.
        down = sim.sim.now_ms() - 600_000
        await store.set_meta({"first_start_ms": str(down), HW: str(down)})
        created = set(sim.sim.create_runs(1_000, pending_ms=(0, 5), running_ms=(5, 20),
                                          created_at=(down + 1_000, sim.sim.now_ms() - 1_000)))

        # The API goes down after 7 window pages: two batches of 3 pages were committed on the way.
        commits.clear()
        pages_done.clear()
        failing = CountingClient(real, fail_after=7)
        second = sweeper(failing)
        await second.load()
        result = await second.sweep()
        assert not result.ok and failing.window_pages == 7
        assert commits == [300, 300, 100]  # two batches, then what the failed sweep had read
        # progress was reported page by page all along, not only when the sweep ended
        assert pages_done.count(0) >= 3 and pages_done.count(1) == 3 and pages_done.count(2) >= 1
        assert result.new_events == 700
        progress = catchup_progress(await store.all_meta())
        assert progress == {"runs_read": 700, "estimated_remaining": 300}
        assert await store.get_meta(HW) == str(down)  # the watermark waits for the whole window
        assert len(second.tracked) < 300  # finished runs of committed batches are forgotten

        # A new process resumes: the runs created since (none) down to where the window began, then the rest.
        commits.clear()
        counting = CountingClient(real)
        third = sweeper(counting)
        await third.load()
        result = await third.sweep()
        assert result.ok and result.new_events == 300
        assert counting.window_pages <= 3 + 2, counting.window_pages  # 3 pages left, 1-2 at the top again
        assert catchup_progress(await store.all_meta()) is None
        assert int(await store.get_meta(HW) or 0) > down
    summary = await store.summary()
    truth = {t["run_id"] for t in sim.sim.transitions()}
    assert created <= truth and summary["events"] == len(created)  # each finished run reported once
    assert summary["deliveries"]["pending"] == len(created)


async def test_each_batch_commit_is_fenced_by_the_sweeper_lease(sim, pg_url: str, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """PostgreSQL, two instances: the sweeper loses its lease in the middle of a catch-up. Its next batch
    commits nothing (LeaseLost); the instance that took over resumes after the last batch committed under the
    lease, without reading it again, and every run is reported once."""
    import psycopg

    from watcher.lease import LeaseLost
    from watcher.store_pg import PgStore

    monkeypatch.setattr(sweep_mod, "CATCHUP_BATCH_PAGES", 3)
    watch = WatchConfig(interval=1, state_dir=tmp_path)
    sinks = [sink_config(name="journal", type="file", path=tmp_path / "events.jsonl")]
    a = await PgStore.open(pg_url, instance_id="a")
    b = await PgStore.open(pg_url, instance_id="b")
    try:
        assert await a.acquire_lease("scope", 60_000) is not None
        async with FloraClient(sim.base_url, Secret(KEY), max_rps=0) as real:
            first = Sweeper(real, a, watch=watch, sinks=sinks, clock=SYSTEM_CLOCK)
            await first.load()
            assert (await first.sweep()).ok
            created = await downtime(a, sim, 1_000)

            async def take_over(page: int) -> None:
                if page == 5:  # batch 1 (pages 1-3) is committed; b takes the lease before batch 2's commit
                    with psycopg.connect(pg_url, autocommit=True) as conn:
                        conn.execute("UPDATE leases SET expires_ms = expires_ms - 120000")
                    assert await b.acquire_lease("scope", 60_000) is not None

            stale = Sweeper(CountingClient(real, before_page=take_over), a, watch=watch, sinks=sinks,
                            clock=SYSTEM_CLOCK)
            await stale.load()
            with pytest.raises(LeaseLost):
                await stale.sweep()
            assert catchup_progress(await b.all_meta()) == {"runs_read": 300, "estimated_remaining": 700}
            assert (await b.summary())["events"] == 300

            counting = CountingClient(real)
            taker = Sweeper(counting, b, watch=watch, sinks=sinks, clock=SYSTEM_CLOCK)
            await taker.load()
            result = await taker.sweep()
            assert result.ok and result.new_events == 700
            assert counting.window_pages <= 7 + 2, counting.window_pages  # 7 pages left, 1-2 at the top again
            assert catchup_progress(await b.all_meta()) is None
        summary = await b.summary()
        assert summary["events"] == len(created) and summary["deliveries"]["pending"] == len(created)
    finally:
        await a.aclose()
        await b.aclose()


async def test_technique_runs_and_generations_catch_up_each_in_its_own_listing(sim, tmp_path: Path,
                                                                               monkeypatch) -> None:
    """Both resources are watched (the default): each listing has its own catch-up state; a failure in the
    middle of the generations' catch-up leaves the technique runs' window complete and resumes the generations'."""
    monkeypatch.setattr(sweep_mod, "CATCHUP_BATCH_PAGES", 2)
    store = AsyncStore(Store.open(tmp_path / "state.sqlite3"))
    watch = WatchConfig(interval=1, state_dir=tmp_path)
    assert set(watch.resources) == {"technique-runs", "generations"}
    sinks = [sink_config(name="journal", type="file", path=tmp_path / "events.jsonl")]
    gen_hw, gen_catchup = "high_watermark_ms:generations:*|*|*", "catchup:generations:*|*|*"
    try:
        async with FloraClient(sim.base_url, Secret(KEY), max_rps=0) as real:
            first = Sweeper(real, store, watch=watch, sinks=sinks, clock=SYSTEM_CLOCK)
            await first.load()
            assert (await first.sweep()).ok
            down = sim.sim.now_ms() - 600_000
            await store.set_meta({"first_start_ms": str(down), HW: str(down), gen_hw: str(down)})
            window = {"pending_ms": (0, 5), "running_ms": (5, 20),
                      "created_at": (down + 1_000, sim.sim.now_ms() - 1_000)}
            created = set(sim.sim.create_runs(500, **window))
            created |= set(sim.sim.create_runs(500, kind="generation", **window))
            # 5 window pages of technique runs, then the generations' listing fails after its 3rd page
            failing = CountingClient(real, fail_after=8)
            second = Sweeper(failing, store, watch=watch, sinks=sinks, clock=SYSTEM_CLOCK)
            await second.load()
            result = await second.sweep()
            assert not result.ok and failing.window_pages == 8
            meta = await store.all_meta()
            assert not meta.get("catchup:*|*|*") and int(meta[HW]) > down  # the technique runs' window is done
            assert plan.catchup_progress({gen_catchup: meta[gen_catchup]}) == {"runs_read": 300,
                                                                               "estimated_remaining": 200}
            assert meta[gen_hw] == str(down)

            counting = CountingClient(real)
            third = Sweeper(counting, store, watch=watch, sinks=sinks, clock=SYSTEM_CLOCK)
            await third.load()
            result = await third.sweep()
            assert result.ok and result.new_events == 200
            assert counting.window_pages <= 1 + 2 + 2, counting.window_pages  # 1 technique, 2 left, 1-2 at the top
            assert plan.catchup_progress(await store.all_meta()) is None
        summary = await store.summary()
        assert summary["events"] == len(created) == 1_000
    finally:
        await store.aclose()
