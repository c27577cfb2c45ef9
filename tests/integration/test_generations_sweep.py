"""Issue 13 end to end: the real Sweeper, FloraClient and SQLite store against the simulator, both on one
FakeClock (no real waiting): generation runs beside technique runs, a /generations that answers 404 or 403,
and stuck runs (run.stalled), across a restart."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.fakes import FakeClock
from watcher import routing
from watcher.api import FloraClient
from watcher.config import WatchConfig
from watcher.model import Event, event_id
from watcher.secret import Secret
from watcher.simulator import RunningSimulator, run_simulator
from watcher.sinks.registry import sink_config
from watcher.store import AsyncStore, Store
from watcher.sweep import Sweeper

KEY = "sk_test_sim"
T0 = 1_764_399_000_000
SINKS = [
    sink_config(name="all", type="stdout", events=("run.completed", "run.failed", "run.stalled")),
    sink_config(name="gens", type="stdout", events=("run.completed", "run.failed", "run.stalled"),
               match={"run_type": ("generation",), "model_id": ("kling-*",)}),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0, epoch_ms=T0)


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[RunningSimulator]:
    async with run_simulator(api_key=KEY, seed=11, clock=clock) as running:
        yield running


@asynccontextmanager
async def sweeper_for(sim: RunningSimulator, clock: FakeClock, db: Path | str = ":memory:", **watch_kw):
    store = AsyncStore(Store.open(db))
    watch = WatchConfig(interval=10.0, state_dir=Path("/nonexistent"), poll_max_interval=10.0, **watch_kw)
    client = FloraClient(sim.base_url, Secret(KEY), max_rps=0, clock=clock, rand=random.Random(0))
    sweeper = Sweeper(client, store, watch=watch, sinks=SINKS, clock=clock, rand=random.Random(0))
    try:
        await sweeper.load()
        yield sweeper
    finally:
        await client.close()
        await store.aclose()


async def sweeps(sweeper: Sweeper, clock: FakeClock, count: int, every: float = 10.0) -> list:
    events = []
    for _ in range(count):
        clock.advance(every)
        result = await sweeper.sweep()
        assert result.ok, result.error
        events.extend(result.events)
    return events


def routes(sim: RunningSimulator) -> dict[str, int]:
    return {k: sum(v.values()) for k, v in sim.sim.stats()["by_route"].items()}


async def test_generation_runs_are_watched_beside_technique_runs(sim, clock) -> None:
    s = sim.sim
    async with sweeper_for(sim, clock) as sweeper:
        await sweeps(sweeper, clock, 1)  # the first sweep: nothing to report yet
        tech = s.create_run("cctv-cam", pending_ms=5_000, running_ms=20_000, outcome="completed")
        gen = s.create_generation("kling-v2.1", pending_ms=5_000, running_ms=20_000, outcome="failed",
                                  error_code="GENERATION_PROVIDER_TIMEOUT", project_id="prj_sim2bravo")
        other = s.create_generation("flux-1.1-pro", pending_ms=1_000, running_ms=20_000, outcome="completed")
        events = await sweeps(sweeper, clock, 2)
        fast = s.create_generation("flux-1.1-pro", pending_ms=500, running_ms=2_000, outcome="completed")
        events += await sweeps(sweeper, clock, 3)  # `fast` starts and ends between two sweeps
    got = {(e.run_id, e.type): e for e in events}
    assert sorted(got) == sorted([(tech, "run.completed"), (gen, "run.failed"), (other, "run.completed"),
                                  (fast, "run.completed")])
    t, g = got[(tech, "run.completed")].data, got[(gen, "run.failed")].data
    assert (t["run_type"], t["model"], t["technique"]["name"]) == ("technique", None, "CCTV Cam")
    assert (g["run_type"], g["model"], g["technique"]) == ("generation", {"model_id": "kling-v2.1"}, None)
    assert (g["project_id"], g["error_code"], g["previous_status"]) == (
        "prj_sim2bravo", "GENERATION_PROVIDER_TIMEOUT", "running")
    assert g["poll_url"] == f"{sim.base_url}/runs/{gen}" and g["late"] is False
    assert got[(gen, "run.failed")].id == event_id(gen, "run.failed")
    assert routing.route(SINKS, got[(gen, "run.failed")]) == ["all", "gens"]
    assert routing.route(SINKS, got[(other, "run.completed")]) == ["all"]
    assert routing.route(SINKS, got[(tech, "run.completed")]) == ["all"]
    by_route = routes(sim)
    assert by_route["GET /api/v1/generations"] >= 6 and by_route["GET /api/v1/technique-runs"] >= 6


async def test_technique_runs_only_never_lists_generations(sim, clock) -> None:
    async with sweeper_for(sim, clock, resources=("technique-runs",)) as sweeper:
        await sweeps(sweeper, clock, 1)
        sim.sim.create_generation(pending_ms=0, running_ms=5_000, outcome="completed")
        tech = sim.sim.create_run(pending_ms=0, running_ms=5_000, outcome="completed")
        events = await sweeps(sweeper, clock, 2)
    assert [(e.run_id, e.type) for e in events] == [(tech, "run.completed")]
    assert "GET /api/v1/generations" not in routes(sim)


@pytest.mark.parametrize("status", [404, 403])
async def test_an_api_without_generations_is_logged_once_and_asked_again_only_at_resync(sim, clock, status) -> None:
    s = sim.sim
    s.set_faults(generations_status=status)
    async with sweeper_for(sim, clock, resync_interval=300.0) as sweeper:
        with capture_logs() as logs:
            await sweeps(sweeper, clock, 1)
            tech = s.create_run(pending_ms=0, running_ms=15_000, outcome="failed", error_code="X")
            gen = s.create_generation(pending_ms=0, running_ms=15_000, outcome="completed")
            events = await sweeps(sweeper, clock, 28)  # 280 s: no resync yet
        assert [(e.run_id, e.type) for e in events] == [(tech, "run.failed")]  # technique runs unaffected
        refusals = [e for e in logs if e["event"] == "api.resource_unavailable"]
        assert [e["log_level"] for e in refusals] == ["warning"]  # once, at warning
        assert refusals[0]["resource"] == "generations" and refusals[0]["status"] == status
        assert routes(sim)["GET /api/v1/generations"] == 1  # asked once: at the first sweep's resync
        with capture_logs() as logs:
            events = await sweeps(sweeper, clock, 3)  # the resync at 300 s asks again: still refused
        assert routes(sim)["GET /api/v1/generations"] == 2
        assert [e["log_level"] for e in logs if e["event"] == "api.resource_unavailable"] == ["debug"]
        s.set_faults(generations_status=None)
        late = s.create_generation(pending_ms=0, running_ms=400_000, outcome="completed")
        with capture_logs() as logs:
            events += await sweeps(sweeper, clock, 42)  # the next resync (610 s) finds it back
        assert "api.resource_available" in [e["event"] for e in logs]
    # `gen` ended while generations were refused: not reported (never seen active, and a listing's first read
    # reports no finished runs: no flood); `late` was seen running at 610 s and ends at 720 s.
    assert [(e.run_id, e.type) for e in events] == [(late, "run.completed")]
    assert gen not in {e.run_id for e in events}


async def test_a_missing_technique_runs_listing_does_not_stop_generations(sim, clock) -> None:
    """The other way round: /technique-runs answers 404 (a sweep counts as failed), generations are still listed
    and reported; when it is back, so are technique runs."""
    s = sim.sim
    async with sweeper_for(sim, clock) as sweeper:
        clock.advance(10.0)
        assert (await sweeper.sweep()).ok
        tech = s.create_run(pending_ms=0, running_ms=60_000, outcome="completed")
        gen = s.create_generation(pending_ms=0, running_ms=15_000, outcome="failed", error_code="X")
        clock.advance(10.0)
        assert (await sweeper.sweep()).ok  # both seen running
        s.set_faults(technique_runs_status=404)
        events = []
        for _ in range(3):
            clock.advance(10.0)
            result = await sweeper.sweep()
            assert not result.ok and "NotFoundError" in (result.error or "")
            events.extend(result.events)
        assert [(e.run_id, e.type) for e in events] == [(gen, "run.failed")]
        s.set_faults(technique_runs_status=None)
        events = await sweeps(sweeper, clock, 4)
    assert [(e.run_id, e.type) for e in events] == [(tech, "run.completed")]


async def test_a_stuck_run_is_reported_once_then_its_completion_and_never_again_after_a_restart(
    sim, clock, tmp_path
) -> None:
    s = sim.sim
    db = tmp_path / "state.sqlite3"
    async with sweeper_for(sim, clock, db, stalled_after=60.0) as sweeper:
        await sweeps(sweeper, clock, 1)
        stuck = s.create_run("storyboard-animate", pending_ms=0, running_ms=40_000, stall_ms=200_000,
                             outcome="completed")
        waiting = s.create_generation(pending_ms=3_600_000, running_ms=1_000, outcome="completed")
        moving = s.create_run("voiceover", pending_ms=0, running_ms=400_000, outcome="completed")
        events = await sweeps(sweeper, clock, 12)  # 120 s: `stuck` froze at ~20 s, `waiting` is still pending
    stalled = [e for e in events if e.type == "run.stalled"]
    assert sorted(e.run_id for e in stalled) == sorted([stuck, waiting])
    assert moving not in {e.run_id for e in events}  # its progress moves every sweep: never stalled
    by_run = {e.run_id: e for e in stalled}
    assert 60_000 < by_run[stuck].data["stalled_for"] <= 70_000
    assert (by_run[stuck].data["status"], by_run[stuck].data["progress"]) == ("running", 50.0)
    assert by_run[waiting].data["status"] == "pending" and by_run[waiting].data["run_type"] == "generation"
    assert all(e.id == event_id(e.run_id, "run.stalled") and e.data["late"] is False for e in stalled)
    # A restart (a new sweeper on the same state) neither repeats the stalled events nor misses the end.
    async with sweeper_for(sim, clock, db, stalled_after=60.0) as sweeper:
        events = await sweeps(sweeper, clock, 20)
    assert [(e.run_id, e.type) for e in events] == [(stuck, "run.completed")]


async def test_stalled_after_zero_disables(sim, clock) -> None:
    async with sweeper_for(sim, clock, stalled_after=0.0) as sweeper:
        await sweeps(sweeper, clock, 1)
        sim.sim.create_run(pending_ms=3_600_000, running_ms=1_000)
        events = await sweeps(sweeper, clock, 30)
    assert events == []


RESTART_MS = T0 + 240_000  # in stuck_run_across_a_restart: 10 s + 20 sweeps of 10 s + 30 s down


async def stuck_run_across_a_restart(sim, clock, db, *, clean: bool) -> Event:
    """A run whose progress moves for ~200 s and then stands still for 300 s; the watcher stops (cleanly, or as
    by a crash) right after the sweep that saw the progress move the last time, and starts again 30 s later.
    Either way the run gets one run.stalled, 100 s (at most one interval more) after the move its clock counts
    from, and then its completion; returns that run.stalled."""
    s = sim.sim
    async with sweeper_for(sim, clock, db, stalled_after=100.0) as sweeper:
        await sweeps(sweeper, clock, 1)
        run = s.create_run("voiceover", pending_ms=0, running_ms=400_000, stall_ms=300_000, outcome="completed")
        before = await sweeps(sweeper, clock, 20)  # 200 s: this last sweep saw the progress move the last time
        if clean:
            await sweeper.flush()
    clock.advance(30)
    async with sweeper_for(sim, clock, db, stalled_after=100.0) as sweeper:
        after = await sweeps(sweeper, clock, 60)
    stalled = [e for e in before + after if e.type == "run.stalled"]
    assert [e.run_id for e in stalled] == [run]
    assert 100_000 < stalled[0].data["stalled_for"] <= 110_000
    assert [e.type for e in after if e.run_id == run] == ["run.stalled", "run.completed"]
    return stalled[0]


async def test_a_clean_stop_keeps_the_stall_clock_exact(sim, clock, tmp_path) -> None:
    stalled = await stuck_run_across_a_restart(sim, clock, tmp_path / "state.sqlite3", clean=True)
    # Timed from the sweep that last saw the progress move, not from the restart: the restarted watcher went on
    # with the stall clock written at the stop.
    assert stalled.created_at < RESTART_MS + 100_000


async def test_after_a_crash_a_stall_may_come_later_but_never_early_nor_twice(sim, clock, tmp_path) -> None:
    stalled = await stuck_run_across_a_restart(sim, clock, tmp_path / "state.sqlite3", clean=False)
    # The last move was not written yet (a move is written within a tenth of stalled_after): the restarted
    # watcher saw a progress other than the stored one and restarted the clock then, as for a move while it
    # was down. Later than after a clean stop, never early, once.
    assert stalled.created_at > RESTART_MS + 100_000  # timed from the first sight after the restart


async def test_moving_progress_is_written_within_the_lag_not_every_sweep(sim, clock, tmp_path) -> None:
    """Every sweep sees a running run's progress move; its row is written at most once per tenth of
    stalled_after (here 60 s: the most), not at every sweep."""
    s = sim.sim
    async with sweeper_for(sim, clock, tmp_path / "state.sqlite3", stalled_after=600.0) as sweeper:
        await sweeps(sweeper, clock, 1)
        s.create_runs(20, pending_ms=0, running_ms=3_000_000, outcome="completed")
        await sweeps(sweeper, clock, 1)  # tracked: written once
        written: list[int] = []
        commit = sweeper.store.commit_sweep

        async def counting(**kw):
            written.append(len(kw["upserts"]))
            return await commit(**kw)

        sweeper.store.commit_sweep = counting  # type: ignore[method-assign]
        await sweeps(sweeper, clock, 12)  # 120 s, every sweep a new progress for each of the 20 runs
        assert sum(written) == 20  # once each in these 120 s (a move waits up to 60 s), not at every sweep
        assert len(sweeper.unsaved) == 20
        assert await sweeper.flush() == 20
        assert sweeper.unsaved == {}


async def test_finished_runs_the_listing_shows_again_are_not_written_again(sim, clock) -> None:
    """Runs that finished while older runs are still active are shown by every sweep's listing (it reads down
    to the oldest active run): they stay remembered as finished, so a sweep neither parses them again nor
    writes (or deletes) their rows again."""
    s = sim.sim
    async with sweeper_for(sim, clock, stalled_after=0.0) as sweeper:  # (no stall clock writes in the count)
        await sweeps(sweeper, clock, 1)
        s.create_runs(5, pending_ms=0, running_ms=3_000_000, outcome="completed")
        clock.advance(1)
        short = s.create_runs(30, pending_ms=0, running_ms=5_000, outcome="completed")
        events = await sweeps(sweeper, clock, 3)
        assert sorted(e.run_id for e in events) == sorted(short)
        writes: list[tuple[int, int]] = []
        commit = sweeper.store.commit_sweep

        async def counting(**kw):
            writes.append((len(kw["upserts"]), len(kw["deletes"])))
            return await commit(**kw)

        sweeper.store.commit_sweep = counting  # type: ignore[method-assign]
        hits = sweeper.memo.hits
        assert await sweeps(sweeper, clock, 5) == []
        assert writes == [(0, 0)] * 5
        assert sweeper.memo.hits - hits >= 5 * 30  # the finished runs came from memory every sweep
        assert all(r in sweeper.tracked and sweeper.tracked[r].terminal for r in short)
