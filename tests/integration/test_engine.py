"""The real watcher against the simulator on loopback, with a real file sink: what a user would see in the file.

Each ``once()`` is one `flora-watcher run --once` in-process (a fresh process start: one sweep, then deliver what
is due). The simulator and the watcher share one ``FakeClock``: a simulated run ends when the test moves the
clock (``finish``), never while a sweep happens to be slow on a busy machine, and no test sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes import FakeClock, Recorder, until
from watcher.config import ApiConfig, Config, DeliveryConfig, WatchConfig
from watcher.daemon import Daemon, Options
from watcher.model import event_id
from watcher.secret import Secret
from watcher.simulator import run_simulator
from watcher.sinks.registry import sink_config
from watcher.store import Store, store_path

KEY = "sk_test_engine_key_0123456789"
EPOCH_MS = 1_764_399_000_000
SIM_SEED = 3


@pytest.fixture
def clock() -> FakeClock:
    """The one clock of the simulator and the watcher (a sleep moves it forward at once)."""
    return FakeClock(0.0, epoch_ms=EPOCH_MS)


def make_config(base_url: str, state_dir: Path, events_file: Path, **watch) -> Config:
    return Config(
        api=ApiConfig(base_url=base_url, api_key=Secret(KEY), timeout=5.0, max_rps=200.0),
        watch=WatchConfig(interval=0.1, state_dir=state_dir, poll_max_interval=1.0, **watch),
        delivery=DeliveryConfig(shutdown_grace=2.0),
        sinks=(sink_config(name="journal", type="file", path=events_file),),
    )


async def once(cfg: Config, clock: FakeClock) -> int:
    """One `run --once`; the clock then moves on a little, as it would between two commands."""
    code = await Daemon(cfg, Options(once=True, install_signal_handlers=False), clock=clock).run()
    clock.advance(0.05)
    return code


def read_events(path: Path) -> list[dict]:
    """The complete lines of the events file (the last one may still be being written)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def finish(sim, clock: FakeClock, run_ids, seconds: float = 1.0) -> None:
    """Move the shared clock on until the simulated runs have ended."""
    clock.advance(seconds)
    assert all(sim.run_truth(r)["status"] in ("completed", "failed") for r in run_ids)


@pytest.fixture
def sim_clock(clock: FakeClock) -> FakeClock:
    """The simulator runs on the test's clock (the shared ``sim`` fixture takes it from here)."""
    return clock


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "state", tmp_path / "events.jsonl"


async def test_completed_and_failed_runs_each_yield_exactly_one_event(sim, paths, clock: FakeClock) -> None:
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file)
    ok = sim.sim.create_run(technique="cctv-cam", pending_ms=50, running_ms=300, outcome="completed")
    bad = sim.sim.create_run(technique="voiceover", pending_ms=50, running_ms=300, outcome="failed",
                             error_code="GPU_PROVIDER_ERROR")
    assert await once(cfg, clock) == 0  # first start: both active, tracked
    assert read_events(events_file) == []
    finish(sim.sim, clock, [ok, bad])
    assert await once(cfg, clock) == 0
    assert await once(cfg, clock) == 0  # a third sweep re-reads both terminal runs: nothing new
    events = {e["data"]["run_id"]: e for e in read_events(events_file)}
    assert len(read_events(events_file)) == 2
    assert events[ok]["type"] == "run.completed" and events[ok]["data"]["error_code"] is None
    assert events[ok]["data"]["outputs"] and events[ok]["data"]["technique"]["name"] == "CCTV Cam"
    failed = events[bad]
    assert failed["type"] == "run.failed"
    assert failed["data"]["error_code"] == "GPU_PROVIDER_ERROR"
    assert failed["data"]["error_message"]
    assert failed["data"]["previous_status"] in ("pending", "running")
    assert failed["id"] == event_id(bad, "run.failed")
    truth = sim.sim.run_truth(bad)
    assert failed["data"]["completed_at"] == truth["completed_at"]


async def test_a_run_that_starts_and_finishes_between_two_sweeps_is_reported(sim, paths, clock: FakeClock) -> None:
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file)
    assert await once(cfg, clock) == 0
    fast = sim.sim.create_run(technique="product-shot", pending_ms=10, running_ms=40, outcome="failed",
                              error_code="safety_blocked")
    finish(sim.sim, clock, [fast])
    assert await once(cfg, clock) == 0
    events = read_events(events_file)
    assert [(e["data"]["run_id"], e["type"]) for e in events] == [(fast, "run.failed")]
    assert events[0]["data"]["previous_status"] is None
    assert events[0]["data"]["error_code"] == "safety_blocked"


async def test_a_transition_while_the_watcher_was_stopped_is_reported_late(sim, paths, clock: FakeClock) -> None:
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file)
    run = sim.sim.create_run(technique="cctv-cam", pending_ms=20, running_ms=200, outcome="completed")
    assert await once(cfg, clock) == 0
    finish(sim.sim, clock, [run])  # the watcher is not running now
    assert await once(cfg, clock) == 0
    (event,) = read_events(events_file)
    assert event["data"]["late"] is True


async def test_a_transition_while_the_watcher_runs_is_not_late(paths) -> None:
    """The daemon's own loop, stepped sweep by sweep: the clock moves one interval at a time, and only once the
    daemon reported its sweep, so the detection delay is exactly what the cadence allows."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)  # time moves only when the test says so
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as sim:
        await _stepped_daemon_reports_a_run(sim, paths, clock)


@contextlib.asynccontextmanager
async def stepped_daemon(cfg: Config, clock: FakeClock,
                         env: dict[str, str] | None = None) -> AsyncIterator[tuple[Daemon, Recorder]]:
    """The daemon's own loop, running until the block ends (then stopped cleanly, exit 0), with a recorder of its
    sweeps; the block steps it by moving ``clock``. ``env``: the daemon's environment (systemd's variables)."""
    recorder = Recorder()
    daemon = Daemon(cfg, Options(install_signal_handlers=False), clock=clock, observers=[recorder], env=env)
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon, recorder
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 20) == 0


async def _stepped_daemon_reports_a_run(sim, paths, clock: FakeClock) -> None:
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file)
    async with stepped_daemon(cfg, clock) as (_, recorder):
        await recorder.sweeps(1)
        run = sim.sim.create_run(technique="cctv-cam", pending_ms=50, running_ms=300, outcome="completed")
        for n in range(2, 12):  # the run ends 350 ms after it was created: the fourth sweep after it sees it
            clock.advance(cfg.watch.interval)
            report = await recorder.sweeps(n)
            if report.new_events:
                break
        await until(lambda: read_events(events_file), "the event in the file")
    (event,) = read_events(events_file)
    assert event["data"]["run_id"] == run
    assert event["data"]["late"] is False
    # detected within one interval of the simulator's completion
    assert 0 <= event["created_at"] - event["data"]["completed_at"] <= cfg.watch.interval * 1000


async def test_first_start_over_existing_terminal_runs_reports_nothing(sim, paths, clock: FakeClock) -> None:
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file)
    past = clock.now_ms() - 3_600_000
    sim.sim.create_runs(150, pending_ms=10, running_ms=100, created_at=(past, past + 600_000))
    sim.sim.create_runs(5, pending_ms=10, running_ms=100, created_at=clock.now_ms() - 5_000)
    assert await once(cfg, clock) == 0
    assert await once(cfg, clock) == 0
    assert read_events(events_file) == []


async def test_runs_active_at_first_start_are_reported_when_they_finish(sim, paths, clock: FakeClock) -> None:
    """Only runs already *finished* at first start are skipped; running ones are watched."""
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file)
    older = sim.sim.create_run(technique="cctv-cam", pending_ms=10, running_ms=400, outcome="completed",
                               created_at=clock.now_ms() - 100)
    assert await once(cfg, clock) == 0
    finish(sim.sim, clock, [older])
    assert await once(cfg, clock) == 0
    assert [e["data"]["run_id"] for e in read_events(events_file)] == [older]


async def test_the_window_settles_finished_runs_in_pages_instead_of_one_poll_each(sim, paths, clock: FakeClock) -> None:
    """Many runs finishing at once cost a few list pages, not one GET per run."""
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file)
    runs = sim.sim.create_runs(250, pending_ms=10, running_ms=(100, 300))
    assert await once(cfg, clock) == 0
    finish(sim.sim, clock, runs)
    sim.sim.reset_stats()
    assert await once(cfg, clock) == 0
    stats = sim.sim.stats()["by_route"]
    single = sum(sum(v.values()) for k, v in stats.items() if "/runs/" in k)
    listing = sum(stats.get("GET /api/v1/technique-runs", {}).values())
    assert len(read_events(events_file)) == 250
    assert single == 0
    assert listing <= 10


async def test_a_run_the_listing_no_longer_shows_is_followed_through_its_poll_url(sim, paths, clock: FakeClock) -> None:
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file, project_id=("prj_watched",))
    # A run started two minutes ago that is about to finish ...
    run = sim.sim.create_run(technique="cctv-cam", project_id="prj_watched", pending_ms=10,
                             running_ms=120_000 + 300, outcome="completed", created_at=clock.now_ms() - 120_000)
    # ... under 3,000 newer runs that are still running: reaching it again would take ~20 more list pages once
    # the window is past the newest runs; one GET through its poll_url is cheaper.
    t = clock.now_ms()
    sim.sim.create_runs(3000, project_id="prj_watched", pending_ms=10, running_ms=600_000,
                        created_at=(t - 110_000, t - 40_000))
    assert await once(cfg, clock) == 0
    finish(sim.sim, clock, [run])
    sim.sim.reset_stats()
    assert await once(cfg, clock) == 0
    (event,) = read_events(events_file)
    assert event["data"]["run_id"] == run
    by_route = sim.sim.stats()["by_route"]
    assert sum(by_route.get("GET /api/v1/techniques/{technique}/runs/{run_id}", {}).values()) == 1, by_route
    assert sum(by_route.get("GET /api/v1/technique-runs", {}).values()) < 60, by_route
    # the watcher kept the technique and project from the listing even though a single-run GET lacks them
    assert event["data"]["project_id"] == "prj_watched"


async def test_dry_run_prints_what_would_be_sent_and_changes_nothing(sim, paths, capsys, clock: FakeClock) -> None:
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file)
    assert await Daemon(cfg, Options(once=True, dry_run=True, install_signal_handlers=False), clock=clock).run() == 0
    assert not state.exists()  # a dry run on a fresh machine creates nothing
    run = sim.sim.create_run(technique="cctv-cam", pending_ms=10, running_ms=200, outcome="failed",
                             error_code="GPU_PROVIDER_ERROR")
    assert await once(cfg, clock) == 0  # the real watcher tracks the run
    finish(sim.sim, clock, [run])
    def snapshot() -> tuple:
        store = Store.open(store_path(state))
        try:
            return store.all_meta(), sorted(store.load_tracked()), store.pending_counts()
        finally:
            store.close()

    before = snapshot()
    capsys.readouterr()
    assert await Daemon(cfg, Options(once=True, dry_run=True, install_signal_handlers=False), clock=clock).run() == 0
    printed = capsys.readouterr().out
    assert "[dry-run]" in printed and run in printed and "GPU_PROVIDER_ERROR" in printed
    assert snapshot() == before  # the state was not touched ...
    assert read_events(events_file) == []  # ... and nothing was sent
    assert await once(cfg, clock) == 0  # so the real run still reports it, once
    assert [e["data"]["run_id"] for e in read_events(events_file)] == [run]


async def test_an_unreachable_api_keeps_tracked_runs_and_reports_later(sim, paths, tmp_path, clock: FakeClock) -> None:
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file)
    run = sim.sim.create_run(technique="cctv-cam", pending_ms=10, running_ms=200, outcome="completed")
    assert await once(cfg, clock) == 0
    broken = make_config("http://127.0.0.1:9/api/v1", state, events_file)  # nothing listens on port 9
    assert await once(broken, clock) == 1  # the sweep failed: --once says so
    store = Store.open(store_path(state))
    try:
        assert run in store.load_tracked()
    finally:
        store.close()
    finish(sim.sim, clock, [run])
    assert await once(cfg, clock) == 0
    assert [e["data"]["run_id"] for e in read_events(events_file)] == [run]


async def test_auth_failure_is_fatal_with_exit_1(sim, paths, clock: FakeClock) -> None:
    state, events_file = paths
    cfg = make_config(sim.base_url, state, events_file)
    bad = Config(api=ApiConfig(base_url=sim.base_url, api_key=Secret("sk_test_wrong_key_zzzzzz")),
                 watch=cfg.watch, sinks=cfg.sinks)
    assert await once(bad, clock) == 1


class ListingDown:
    """A client whose list endpoint fails while single-run GETs still work."""

    def __init__(self, real) -> None:
        self.real = real

    async def pages(self, **_filters):
        from watcher.errors import ServerError

        raise ServerError("HTTP 503 from the API", status=503)
        yield  # an async generator

    async def get_run(self, *args, **kwargs):
        return await self.real.get_run(*args, **kwargs)


async def test_a_failing_list_endpoint_does_not_stall_detection(sim, tmp_path, clock: FakeClock) -> None:
    from watcher.api import FloraClient
    from watcher.store import AsyncStore
    from watcher.sweep import Sweeper

    store = AsyncStore(Store.open(tmp_path / "state.sqlite3"))
    watch = WatchConfig(interval=0.1, state_dir=tmp_path)
    sinks = [sink_config(name="journal", type="file", path=tmp_path / "events.jsonl")]
    run = sim.sim.create_run(technique="cctv-cam", pending_ms=10, running_ms=300, outcome="failed",
                             error_code="LLM_REFUSAL")
    async with FloraClient(sim.base_url, Secret(KEY), max_rps=200, clock=clock) as client:
        sweeper = Sweeper(client, store, watch=watch, sinks=sinks, clock=clock)
        await sweeper.load()
        assert (await sweeper.sweep()).ok
        finish(sim.sim, clock, [run])
        sweeper.client = ListingDown(client)
        result = await sweeper.sweep()
    await store.aclose()
    assert not result.ok
    assert result.polls == 1
    assert [(e.run_id, e.type) for e in result.events] == [(run, "run.failed")]
    assert result.events[0].data["error_code"] == "LLM_REFUSAL"


async def test_a_clean_stop_writes_the_stall_clocks_the_sweeps_left_unwritten(paths) -> None:
    """A running run's progress moves at every sweep; the sweeps write that (its stall clock) lazily, and the
    daemon's clean stop writes what is still unwritten, so a restart times the stall from the last move."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    state, events_file = paths
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as sim:
        cfg = make_config(sim.base_url, state, events_file, stalled_after=60.0)  # written within 6 s
        async with stepped_daemon(cfg, clock) as (daemon, recorder):
            await recorder.sweeps(1)
            run = sim.sim.create_run(technique="cctv-cam", pending_ms=0, running_ms=600_000, outcome="completed")
            for n in range(2, 6):
                clock.advance(1.0)
                await recorder.sweeps(n)
            assert daemon.sweeper is not None and run in daemon.sweeper.unsaved  # moved, not yet written
            in_memory = daemon.sweeper.tracked[run]
    store = Store.open(store_path(state))
    try:
        stored = store.load_tracked()[run]
    finally:
        store.close()
    assert (stored.stuck_since_ms, stored.run.progress) == (in_memory.stuck_since_ms, in_memory.run.progress)
