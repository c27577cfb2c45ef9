"""The delivery core end to end: outbox in a real state store, real sinks, real receivers on loopback.

Time is a manual ``FakeClock``: a retry's backoff or a receiver's Retry-After passes when the test moves the
clock (``advance_until``), so no test waits it out, and the delays asserted are exact.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.fakes import FakeClock, advance_until, until
from tests.sinks.helpers import Receiver, make_event
from watcher.config import DeliveryConfig, SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.secret import Secret
from watcher.sinks.registry import build_sink, sink_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST = DeliveryConfig(backoff_initial=0.2, backoff_max=5.0, shutdown_grace=1.0)


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(manual=True)


@pytest.fixture
def store(any_store):
    """Every test here runs on both back ends (tests/conftest.py)."""
    return any_store


async def started(*configs: SinkConfig, clock: FakeClock) -> dict:
    sinks = {}
    for cfg in configs:
        sink = build_sink(cfg, clock=clock)
        await sink.start()
        sinks[cfg.name] = sink
    return sinks


def webhook(receiver: Receiver, name: str = "ops") -> SinkConfig:
    return sink_config(name=name, type="webhook", url=Secret(receiver.url()), secrets=(Secret(SECRET),))


async def test_retryable_failures_then_success_deliver_once_more_with_the_same_webhook_id(receiver, store,
                                                                                        clock) -> None:
    receiver.answer(500, "boom")
    receiver.answer(429, "slow down", headers={"Retry-After": "2"})
    receiver.answer(200, "ok")
    event = make_event()
    await store.commit_sweep(upserts=[], deletes=[], events=[(event, ["ops"])], meta={}, now_ms=clock.now_ms())
    sinks = await started(webhook(receiver), clock=clock)
    dispatcher = Dispatcher(sinks, store, cfg=FAST, clock=clock)
    dispatcher.start()
    try:
        await advance_until(clock, lambda: len(receiver.requests) >= 3, "three attempts", step=0.1, limit=10)
        await until(lambda: dispatcher.workers["ops"].health.delivered == 1, "the 200 recorded")
        clock.advance(60)  # a minute later, the worker has looked again: nothing more after the 200
        await until(lambda: (clock.next_deadline() or 0) > clock.t, "the worker idle again")
    finally:
        await dispatcher.stop(0)
        for sink in sinks.values():
            await sink.close()
    assert len(receiver.requests) == 3
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {event.id}
    assert len({r.body for r in receiver.requests}) == 1  # byte-identical on every attempt
    assert sum((await store.pending_counts()).values()) == 0
    assert await store.list_deliveries(failed=True) == []


async def test_a_claim_answered_after_an_outcome_commit_sends_nothing_twice(receiver, store, clock) -> None:
    """A worker's claim can run while the outcome of a delivery it holds is being committed (PostgreSQL commits
    it on another pooled connection) and be answered after the worker let that delivery go. Here every claim
    that hands back something the worker holds is answered only after the next outcome: what the worker holds
    must not come back from a claim at all, or it is sent again."""
    events = [make_event(run_id=f"run_{i}") for i in range(2)]
    await store.commit_sweep(upserts=[], deletes=[], events=[(e, ["ops"]) for e in events], meta={},
                             now_ms=clock.now_ms())
    recorded = 0

    def on_outcome(_sink: str, _outcome: str) -> None:  # after the outcome's commit and its release
        nonlocal recorded
        recorded += 1

    class LateClaims:
        def __getattr__(self, name: str):
            return getattr(store, name)

        async def due_deliveries(self, *args, exclude=(), **kwargs):
            seen = recorded
            rows = await store.due_deliveries(*args, exclude=exclude, **kwargs)
            if {d.id for d in rows} & set(exclude):
                await until(lambda: recorded > seen, "the next outcome")
            return rows

    sinks = await started(webhook(receiver), clock=clock)
    dispatcher = Dispatcher(sinks, LateClaims(), cfg=FAST, clock=clock, on_outcome=on_outcome)
    try:
        await dispatcher.drain_due()
    finally:
        for sink in sinks.values():
            await sink.close()
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(e.id for e in events)
    assert sum((await store.pending_counts()).values()) == 0


async def test_retry_after_is_honoured(receiver, store, clock) -> None:
    receiver.answer(429, "slow down", headers={"Retry-After": "2"})
    event = make_event()
    await store.commit_sweep(upserts=[], deletes=[], events=[(event, ["ops"])], meta={}, now_ms=clock.now_ms())
    sinks = await started(webhook(receiver), clock=clock)
    dispatcher = Dispatcher(sinks, store, cfg=FAST, clock=clock)
    times: list[float] = []
    sink = sinks["ops"]
    original = sink.send

    async def timed(event, **kw):
        times.append(clock.monotonic())
        return await original(event, **kw)

    sink.send = timed  # type: ignore[method-assign]
    dispatcher.start()
    try:
        await advance_until(clock, lambda: len(receiver.requests) >= 2, "the retry", step=0.05, limit=10)
    finally:
        await dispatcher.stop(0)
        for sink in sinks.values():
            await sink.close()
    # The receiver asked for 2 s; backoff alone would retry within 0.2 s. The clock moves in 0.05 s steps.
    assert 2.0 <= times[1] - times[0] <= 2.0 + 0.05 + 1e-9


async def test_a_404_is_dead_lettered_and_replay_delivers_it_once_fixed(receiver, store, clock) -> None:
    receiver.answer(404, "no such hook")
    event = make_event()
    now = clock.now_ms()
    await store.commit_sweep(upserts=[], deletes=[], events=[(event, ["ops"])], meta={}, now_ms=now)
    sinks = await started(webhook(receiver), clock=clock)
    dispatcher = Dispatcher(sinks, store, cfg=FAST, clock=clock)
    try:
        await dispatcher.drain_due()
        (dead,) = await store.list_deliveries(failed=True)
        assert dead.event_id == event.id and dead.last_status == 404
        await dispatcher.drain_due()
        assert len(receiver.requests) == 1  # a permanent failure is not retried
        # the receiver is fixed (default answer 200); replay re-queues it
        assert await store.replay([event.id], now_ms=clock.now_ms()) == 1
        await dispatcher.drain_due()
    finally:
        for sink in sinks.values():
            await sink.close()
    assert len(receiver.requests) == 2
    assert receiver.requests[1].headers["webhook-id"] == event.id
    assert await store.list_deliveries(failed=True) == []
    assert sum((await store.pending_counts()).values()) == 0


async def test_410_disables_the_sink_and_keeps_its_deliveries_as_dead_letters(receiver, store, clock) -> None:
    receiver.answer(410, "gone")
    events = [make_event(run_id=f"run_{i}") for i in range(3)]
    await store.commit_sweep(upserts=[], deletes=[], events=[(e, ["ops"]) for e in events], meta={},
                             now_ms=clock.now_ms())
    sinks = await started(webhook(receiver), clock=clock)
    dispatcher = Dispatcher(sinks, store, cfg=FAST, clock=clock)
    try:
        await dispatcher.drain_due()
    finally:
        for sink in sinks.values():
            await sink.close()
    assert len(receiver.requests) == 1  # the other two were not sent to a gone destination
    assert len(await store.list_deliveries(failed=True)) == 3
    assert (await store.sink_states())["ops"].disabled_reason


async def test_a_hanging_receiver_does_not_delay_the_file_sink(receiver, store, clock, tmp_path: Path) -> None:
    receiver.default.delay = 30.0  # never answers within the test
    events_file = tmp_path / "events.jsonl"
    configs = (
        sink_config(name="slow", type="webhook", url=Secret(receiver.url()), timeout=30.0),
        sink_config(name="journal", type="file", path=events_file),
    )
    sinks = await started(*configs, clock=clock)
    dispatcher = Dispatcher(sinks, store, cfg=FAST, clock=clock)
    dispatcher.start()
    try:
        for i in range(3):
            event = make_event(run_id=f"run_{i}")
            await store.commit_sweep(upserts=[], deletes=[], events=[(event, ["slow", "journal"])], meta={},
                                     now_ms=clock.now_ms())
            dispatcher.wake()
        started_at = clock.monotonic()
        await until(lambda: events_file.exists() and len(events_file.read_text().splitlines()) == 3,
                    "three lines in the file")
        assert clock.monotonic() == started_at  # the file sink needed no time to pass at all
        # the webhook's first send hangs (its request may reach the receiver after the file is written: the file
        # sink does not wait for it either way); one request at a time while it does
        await until(lambda: len(receiver.requests) >= 1, "the webhook's first request")
        assert len(receiver.requests) == 1
        assert clock.monotonic() == started_at
    finally:
        stopping = asyncio.create_task(dispatcher.stop(0.2))  # the hung send is cancelled; it stays pending
        await until(lambda: dispatcher.tasks["journal"].done(), "the idle worker to stop at once")
        assert not stopping.done()  # the hung send has its grace period ...
        clock.advance(0.2)
        cancelled = await stopping  # ... and not a moment more
        for sink in sinks.values():
            await sink.close()
    assert cancelled == 1
    assert [json.loads(line)["data"]["run_id"] for line in events_file.read_text().splitlines()] == [
        "run_0", "run_1", "run_2"]
    assert (await store.pending_counts())["slow"] == 3  # nothing lost: sent after the next start
