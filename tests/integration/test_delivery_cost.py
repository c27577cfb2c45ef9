"""What delivering a steady flow of events costs in reads of the outbox, counted (not timed): a guard for the
watcher's CPU that does not depend on the machine's speed or load, in the spirit of test_sweep_cost.py.

The simulator (seeded, on the test's clock) runs the engine benchmark's workload at ~1,000 active runs in steady
state (runs of 20-120 s, 15 % fail). The real ``Sweeper`` sweeps it every 5 s of simulated time and hands each
commit's new deliveries to the real ``Dispatcher`` (``Sweeper.handoff``), whose webhook worker sends them to a
receiver on loopback. Once the flow is steady, a few sweeps are counted: every event is delivered once, and no
claim of the outbox (``due_deliveries``, ``oldest_pending``) is needed for them — the commit claims them for the
worker in its own transaction (on PostgreSQL too) and hands them over with their events, so they are neither read
back nor parsed again. (Claims remain for what a commit does not hand over: a start's backlog, retries, replays, a
delivery behind an earlier one of its run; tests/integration/test_delivery.py covers those.)
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.fakes import FakeClock, until
from tests.sinks.helpers import Receiver
from watcher.api import FloraClient
from watcher.config import DeliveryConfig, WatchConfig
from watcher.dispatcher import Dispatcher
from watcher.secret import Secret
from watcher.sinks.registry import build_sink, sink_config
from watcher.sweep import Sweeper

KEY = "sk_test_delivery_cost_0123456789"
SIM_SEED = 7
EPOCH_MS = 1_764_399_000_000
INTERVAL = 5.0
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CLAIMS = ("due_deliveries", "oldest_pending")


@pytest.fixture
def clock() -> FakeClock:
    # Sleeps move time (the API client's rate limiter), deadlines do not: an idle sink worker's wait for its next
    # recheck ends when the test moves the clock to the next sweep, as the daemon's would within the interval.
    return FakeClock(0.0, epoch_ms=EPOCH_MS, deadlines_jump=False)


@pytest.fixture
def sim_clock(clock: FakeClock) -> FakeClock:
    return clock


@pytest.fixture
def store(any_store):
    return any_store


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def count_calls(store, names: list[str]) -> dict[str, int]:
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(store, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        setattr(store, name, counted)
    return calls


async def test_a_steady_flow_is_delivered_without_reading_the_outbox(sim, clock, store, receiver, tmp_path: Path):
    sim.sim.start_generator(1000 / 70, duration_ms=(20_000, 120_000), pending_ms=(0, 2_000), fail_ratio=0.15,
                            warm=True)
    cfg = sink_config(name="ops", type="webhook", url=Secret(receiver.url()), secrets=(Secret(SECRET),))
    sink = build_sink(cfg, clock=clock)
    await sink.start()
    client = FloraClient(sim.base_url, Secret(KEY), timeout=30, max_rps=1e6, clock=clock)
    sweeper = Sweeper(client, store, watch=WatchConfig(interval=INTERVAL, state_dir=tmp_path), sinks=[cfg],
                      clock=clock, rand=random.Random(1))
    delivered: list[str] = []
    dispatcher = Dispatcher({"ops": sink}, store, cfg=DeliveryConfig(), clock=clock, rand=random.Random(1),
                            on_outcome=lambda _sink, outcome: delivered.append(outcome))
    sweeper.handoff = dispatcher
    calls = count_calls(store, [*CLAIMS, "next_due_ms", "commit_and_claim", "record_outcomes"])
    committed = 0

    async def sweep_and_deliver() -> int:
        nonlocal committed
        result = await sweeper.sweep()
        assert result.ok
        committed += result.new_events
        await until(lambda: len(delivered) >= committed and not dispatcher.outcomes._pending,
                    "every event committed so far delivered", timeout=60)
        await asyncio.sleep(0)
        clock.advance(INTERVAL)
        return result.new_events

    await sweeper.load()
    dispatcher.start()
    try:
        for _ in range(4):  # the first sweep tracks everything (and a worker's first pump reads the outbox)
            await sweep_and_deliver()
        before = dict(calls)
        delivered_before, received_before = len(delivered), len(receiver.requests)
        events = sum([await sweep_and_deliver() for _ in range(3)])
    finally:
        await dispatcher.stop(5.0)
        await sink.close()
        await client.close()
    counted = {name: calls[name] - before[name] for name in calls}

    # The workload: ~80 runs end every 5 s; each event reached the receiver once and was recorded delivered.
    assert events > 150
    assert set(delivered[delivered_before:]) == {"delivered"} and len(delivered) - delivered_before == events
    assert len(receiver.requests) - received_before == events
    # Each sweep committed its events once and handed them over: no claim read them back from the outbox.
    assert counted["commit_and_claim"] == 3
    assert sum(counted[name] for name in CLAIMS) == 0, counted
    # What an idle worker still asks the store: when its next retry is due (at most one look a recheck).
    assert counted["next_due_ms"] <= 3 * 3, counted
