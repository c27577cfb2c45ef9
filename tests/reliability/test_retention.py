"""Regression: the state store must not grow forever. Delivered events older than [delivery].keep_delivered are
pruned by the daemon (found by the soak: before, nothing ever called ``Store.prune`` and the store grew by every
event ever seen). Pending deliveries and dead letters are never pruned, and pruning never causes a re-send.

The simulator and the watcher share one ``FakeClock``: runs end and deliveries age when the test moves it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tests.fakes import FakeClock
from tests.reliability.harness import read_jsonl
from watcher.config import ApiConfig, Config, DeliveryConfig, WatchConfig, parse
from watcher.daemon import Daemon, Options
from watcher.secret import Secret
from watcher.simulator import run_simulator
from watcher.sinks.registry import REGISTRY, sink_config
from watcher.store import Store, store_path

KEY = "sk_test_retention_0123456789"


def make_config(base_url: str, tmp: Path, *, keep_delivered: float) -> Config:
    return Config(
        api=ApiConfig(base_url=base_url, api_key=Secret(KEY), timeout=5.0, max_rps=200.0),
        watch=WatchConfig(interval=0.1, state_dir=tmp / "state", poll_max_interval=1.0),
        delivery=DeliveryConfig(shutdown_grace=2.0, keep_delivered=keep_delivered),
        sinks=(sink_config(name="journal", type="file", path=tmp / "events.jsonl"),),
    )


async def once(cfg: Config, clock: FakeClock) -> int:
    """One `run --once`; the clock then moves on a little, as it would between two commands."""
    code = await Daemon(cfg, Options(once=True, install_signal_handlers=False), clock=clock).run()
    clock.advance(0.05)
    return code


def no_files(name: str) -> str:
    raise OSError(name)


def test_keep_delivered_is_configurable_and_defaults_to_a_week() -> None:
    text = '[api]\napi_key = "k"\n[delivery]\nkeep_delivered = 86400\n'
    read = {"env": {"HOME": "/nonexistent"}, "read_file": no_files, "sink_types": REGISTRY}
    assert parse(text, **read).delivery.keep_delivered == 86400
    default = parse('[api]\napi_key = "k"\n', **read)
    assert default.delivery.keep_delivered == 7 * 24 * 3600


async def test_delivered_history_is_pruned_and_never_resent(tmp_path: Path) -> None:
    clock = FakeClock()
    async with run_simulator(api_key=KEY, seed=9, clock=clock) as sim:
        cfg = make_config(sim.base_url, tmp_path, keep_delivered=3600)
        assert await once(cfg, clock) == 0  # first start
        runs = sim.sim.create_runs(5, pending_ms=10, running_ms=50)
        clock.advance(0.2)  # the runs end
        assert await once(cfg, clock) == 0
        events, _ = read_jsonl(tmp_path / "events.jsonl")
        assert sorted(e["data"]["run_id"] for e in events) == sorted(runs)
        with Store.open(store_path(tmp_path / "state")) as store:
            assert store.summary()["events"] == 5  # younger than keep_delivered: kept

        short = replace(cfg, delivery=replace(cfg.delivery, keep_delivered=60))
        clock.advance(59)
        assert await once(short, clock) == 0
        with Store.open(store_path(tmp_path / "state")) as store:
            assert store.summary()["events"] == 5, "delivered events younger than keep_delivered are kept"
        clock.advance(2)
        assert await once(short, clock) == 0
        with Store.open(store_path(tmp_path / "state")) as store:
            summary = store.summary()
        assert summary["events"] == 0, "delivered events older than keep_delivered must be pruned"
        assert await once(short, clock) == 0
        events, _ = read_jsonl(tmp_path / "events.jsonl")
        assert len(events) == 5, "a pruned event is never sent again"


async def test_pending_deliveries_are_never_pruned(tmp_path: Path) -> None:
    clock = FakeClock()
    async with run_simulator(api_key=KEY, seed=10, clock=clock) as sim:
        cfg = make_config(sim.base_url, tmp_path, keep_delivered=60)
        cfg = replace(cfg, sinks=(*cfg.sinks, sink_config(name="later", type="file", path=tmp_path / "later.jsonl")))
        assert await once(cfg, clock) == 0  # first start
        sim.sim.create_runs(3, pending_ms=10, running_ms=50)
        clock.advance(0.2)  # the runs end
        # One sweep, then only the journal's deliveries are sent: the other sink's stay pending.
        daemon = Daemon(cfg, Options(once=True, install_signal_handlers=False), clock=clock)
        await daemon.startup()
        try:
            await daemon.sweep()
            await daemon.dispatcher.workers["journal"].deliver_due()
        finally:
            await daemon.shutdown()
        clock.advance(61)  # the journal's deliveries are older than keep_delivered
        daemon = Daemon(cfg, Options(once=True, install_signal_handlers=False), clock=clock)
        await daemon.startup()
        try:
            await daemon.sweep()  # prunes: the journal's deliveries are delivered and older than keep_delivered
        finally:
            await daemon.shutdown()
        with Store.open(store_path(tmp_path / "state")) as store:
            assert store.pending_counts() == {"later": 3}
            assert store.summary()["events"] == 3  # still needed by the pending deliveries
        assert await once(cfg, clock) == 0
        later, _ = read_jsonl(tmp_path / "later.jsonl")
        assert len(later) == 3
        journal, _ = read_jsonl(tmp_path / "events.jsonl")
        assert len(journal) == 3
