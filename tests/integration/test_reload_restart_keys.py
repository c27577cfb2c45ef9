"""A SIGHUP that changes what the running daemon holds open (its state store, its listen addresses) keeps those
as they are, says so, and applies the rest: the real daemon loop in-process against the simulator, on a manual
``FakeClock`` shared with it, the reload driven as SIGHUP's handler drives it (``request_reload``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from structlog.testing import capture_logs

from tests.fakes import FakeClock, Recorder, advance_until, until
from tests.integration.test_engine import EPOCH_MS, KEY, make_config, read_events, stepped_daemon
from watcher import systemd
from watcher.config import Config, ServerConfig, StoreConfig, WatchConfig
from watcher.observer import State
from watcher.secret import Secret
from watcher.simulator import run_simulator
from watcher.sinks.registry import sink_config
from watcher.store import Store, store_path

PASSWORD = "hunter2-not-for-logs"
WATCHDOG_USEC = 2_000_000  # pings every second: the wedge period is max(2, 3 x interval, 2 x timeout + 5)


async def reload(daemon, recorder: Recorder, clock: FakeClock, new: Config) -> None:
    """SIGHUP with ``new`` as the file's content; returns once the daemon is READY again after it."""
    seen = len(recorder.states)
    daemon.opts.reload = lambda: new
    daemon.request_reload()

    def done() -> bool:
        states = recorder.states[seen:]
        return State.RELOADING in states and states[-1] is State.READY

    await advance_until(clock, done, "the reload", step=0.05, limit=5)


async def test_a_reload_moving_the_state_store_or_a_listener_keeps_them_and_applies_the_rest(tmp_path: Path) -> None:
    """state_dir, store url and server.listen changed with a new sink and a longer interval: one warning naming
    the three keys (not the URL or its password), the old SQLite state keeps taking every event, no server is
    started, and the sink, the interval and the watchdog's wedge period follow the new config."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    state, moved = tmp_path / "state", tmp_path / "moved"
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    async with run_simulator(api_key=KEY, seed=5, clock=clock) as sim:
        cfg = make_config(sim.base_url, state, first)
        env = {"WATCHDOG_USEC": str(WATCHDOG_USEC)}
        async with stepped_daemon(cfg, clock, env=env) as (daemon, recorder):
            await recorder.sweeps(1)
            new = dataclasses.replace(
                cfg,
                watch=WatchConfig(interval=40.0, state_dir=moved, poll_max_interval=1.0),
                store=StoreConfig(url=Secret(f"postgresql://watcher:{PASSWORD}@127.0.0.1:1/flora"), url_source="url"),
                server=ServerConfig(listen="127.0.0.1:0"),
                sinks=(*cfg.sinks, sink_config(name="second", type="file", path=second)),
            )
            with capture_logs() as logs:
                await reload(daemon, recorder, clock, new)
            (warning,) = [e for e in logs if e["event"] == "config.reload_needs_restart"]
            assert warning["log_level"] == "warning"
            assert warning["keys"] == ["watch.state_dir", "store.url", "server.listen"]
            assert PASSWORD not in repr(logs) and "postgresql://" not in repr(logs)
            assert [e["event"] for e in logs if e["log_level"] == "error"] == []
            assert any(e["event"] == "config.reloaded" for e in logs)

            in_force = daemon.cfg
            assert in_force.watch.state_dir == state and in_force.store.url is None
            assert in_force.server.listen is None and daemon.server is None
            assert in_force.watch.interval == 40.0 and set(daemon.sinks) == {"journal", "second"}
            assert daemon.feeder is not None
            assert daemon.feeder.period == systemd.wedge_period(WATCHDOG_USEC / 2e6, 40.0, cfg.api.timeout) == 120.0

            run = sim.sim.create_run(pending_ms=0, running_ms=300, outcome="completed")
            await advance_until(clock, lambda: len(read_events(first)) == 1 and len(read_events(second)) == 1,
                                "the run's event in both sinks", step=1.0, limit=90)
            assert not store_path(moved).exists()
    with Store.open(store_path(state), create=False) as store:
        assert [e.data["run_id"] for _, e in store.list_events()] == [run]


async def test_a_reload_changing_only_what_can_change_warns_of_nothing(tmp_path: Path) -> None:
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    async with run_simulator(api_key=KEY, seed=5, clock=clock) as sim:
        cfg = make_config(sim.base_url, tmp_path / "state", tmp_path / "a.jsonl")
        async with stepped_daemon(cfg, clock) as (daemon, recorder):
            await recorder.sweeps(1)
            new = dataclasses.replace(cfg, watch=dataclasses.replace(cfg.watch, interval=0.5))
            with capture_logs() as logs:
                await reload(daemon, recorder, clock, new)
            await until(lambda: daemon.cfg is new, "the new config in force")
            assert [e["event"] for e in logs if e["log_level"] in ("warning", "error")] == []
