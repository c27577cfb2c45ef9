"""Quiet, truthful logs in an API outage (issue 14): the real sweep, client and simulator over a simulated hour."""

from __future__ import annotations

import random

from structlog.testing import capture_logs

from tests.fakes import FakeClock
from watcher.api import FloraClient
from watcher.config import WatchConfig
from watcher.secret import Secret
from watcher.simulator import run_simulator
from watcher.sinks.registry import sink_config
from watcher.store import AsyncStore, Store
from watcher.sweep import Sweeper

T0 = 1_764_399_000_000


async def test_the_sweep_logs_an_outage_in_a_handful_of_lines() -> None:
    """The real Sweeper and FloraClient against the simulator answering 5xx to everything for a simulated hour
    (a sweep every minute, to keep the test short; the rule above covers interval 5), a tracked run polled every
    sweep: count the info-and-above lines, then let the API come back."""
    clock = FakeClock(0.0, epoch_ms=T0)
    store = AsyncStore(Store.open(":memory:"))
    # stalled_after=0: the simulated hour would otherwise (rightly) report the unmoving run as stalled
    watch = WatchConfig(interval=60.0, state_dir="/nonexistent", poll_max_interval=60.0, stalled_after=0.0)
    async with run_simulator(api_key="sk_test_sim") as sim:
        sim.sim.create_run(pending_ms=0, running_ms=10**9)  # stays running: tracked and polled all along
        client = FloraClient(sim.base_url, Secret("sk_test_sim"), max_rps=0, clock=clock, rand=random.Random(0))
        sweeper = Sweeper(client, store, watch=watch, sinks=[sink_config(name="s", type="stdout")], clock=clock,
                          rand=random.Random(0), process_start_ms=T0 - 60_000)
        try:
            await sweeper.load()
            assert (await sweeper.sweep()).ok and sweeper.tracked
            sim.sim.set_faults(error_burst=(1, 1))
            with capture_logs() as outage:
                for _ in range(61):  # 0 … 60 min
                    clock.advance(60.0)
                    assert not (await sweeper.sweep()).ok
            sim.sim.set_faults(error_burst=None)
            clock.advance(60.0)
            with capture_logs() as recovery:
                assert (await sweeper.sweep()).ok
        finally:
            await client.close()
            await store.aclose()
    loud = [e["event"] for e in outage if e["log_level"] != "debug"]
    # the first failed sweep in detail (the failed requests and their retries), then only the outage lines
    first_sweep = loud[: loud.index("api.unavailable")]
    assert set(first_sweep) <= {"api.retry_scheduled", "api.request_failed", "run.poll_failed"}
    assert loud[len(first_sweep):] == ["api.unavailable", *["api.still_unavailable"] * 4]
    assert len(loud) <= 12, loud
    assert sum(e["event"] == "sweep.finished" for e in outage) == 61  # still there, at debug
    assert [e["event"] for e in recovery if e["log_level"] != "debug"] == ["api.recovered"]
