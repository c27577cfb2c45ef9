"""The hand-off: a sweep commit's new deliveries go to the sink workers in process (``commit_and_claim`` claims
them for this process in the commit's transaction, ``Dispatcher.hand_off`` queues them), so a steady flow is
sent without a read of the outbox. What must hold as with claims: each delivery sent once, the events of a run
in order, claims renewed on what a worker holds, and nothing handed to a worker that would not send it.

Real state stores (both back ends), a real webhook sink, a receiver on loopback; a manual ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from tests.fakes import FakeClock, advance_until, until
from tests.sinks.helpers import Receiver, make_event
from watcher import dispatcher as dispatcher_module
from watcher.config import DeliveryConfig
from watcher.dispatcher import Dispatcher
from watcher.model import Event
from watcher.secret import Secret
from watcher.sinks.registry import build_sink, sink_config
from watcher.store_api import SweepCommit

FAST = DeliveryConfig(backoff_initial=0.2, backoff_max=5.0, shutdown_grace=1.0)
CLAIMS = ("due_deliveries", "oldest_pending")


class GatedReceiver(Receiver):
    """A receiver that can hold every request it gets until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self.gate.wait()
        return await super()._handle(request)

    def ids(self) -> list[str]:
        return [json.loads(r.body)["id"] for r in self.requests]


class Counted:
    """The store, with the claims (and their arguments) counted."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.store, name)
        if name not in CLAIMS:
            return real

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return await real(*args, **kwargs)

        return counted


@pytest.fixture
async def receiver():
    r = GatedReceiver()
    await r.start()
    yield r
    r.gate.set()
    await r.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(manual=True)


@pytest.fixture
def store(any_store):
    """Every test here runs on both back ends (tests/conftest.py)."""
    return any_store


@pytest.fixture
async def running(receiver, store, clock):
    sink = build_sink(sink_config(name="ops", type="webhook", url=Secret(receiver.url())), clock=clock)
    await sink.start()
    counted = Counted(store)
    dispatcher = Dispatcher({"ops": sink}, counted, cfg=FAST, clock=clock)  # type: ignore[arg-type]
    dispatcher.start()
    await until(lambda: clock.waiting and counted.calls, "the worker's first look at the outbox, then idle")
    try:
        yield dispatcher, counted
    finally:
        receiver.gate.set()
        await dispatcher.stop(1)
        await sink.close()


async def commit(dispatcher: Dispatcher, store: Any, clock: FakeClock, *events: Event) -> SweepCommit:
    """What ``Sweeper._write`` does with a sweep's events."""
    done = await store.commit_and_claim(upserts=[], deletes=[], events=[(e, ["ops"]) for e in events], meta={},
                                       now_ms=clock.now_ms(), take=dispatcher.take_limits())
    dispatcher.hand_off(done)
    return done


async def settled(store: Any) -> None:
    for _ in range(500):
        if sum((await store.pending_counts()).values()) == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still pending: {await store.pending_counts()}")


async def test_handed_deliveries_are_sent_once_without_a_claim(running, receiver, store, clock) -> None:
    dispatcher, counted = running
    claims = len(counted.calls)
    events = [make_event(run_id=f"run_{i}") for i in range(5)]
    done = await commit(dispatcher, store, clock, *events)
    assert [d.event_id for d in done.claimed] == [e.id for e in events]
    await until(lambda: len(receiver.requests) == 5 and dispatcher.outcomes.recorded == 5, "five sent")
    await settled(store)
    assert sorted(receiver.ids()) == sorted(e.id for e in events)
    assert len(counted.calls) == claims  # not read back from the outbox


async def test_a_later_event_of_a_run_waits_behind_the_one_in_flight(running, receiver, store, clock) -> None:
    """run_a's first event is being sent (the receiver holds it) when the next commit brings run_a's second: the
    commit does not hand that one over (it is behind), and it is sent once the first is settled, not before."""
    dispatcher, _counted = running
    receiver.gate.clear()
    first = make_event("run.stalled", run_id="run_a")
    await commit(dispatcher, store, clock, first)
    await until(lambda: dispatcher.workers["ops"]._in_flight, "the first in flight")
    second, other = make_event("run.failed", run_id="run_a"), make_event(run_id="run_b")
    done = await commit(dispatcher, store, clock, second, other)
    assert [d.event_id for d in done.claimed] == [other.id] and done.behind == {"ops": ["run_a"]}
    await asyncio.sleep(0.1)
    receiver.gate.set()
    await until(lambda: len(receiver.requests) == 3 and dispatcher.outcomes.recorded == 3, "all three sent")
    await settled(store)
    ids = receiver.ids()
    assert sorted(ids) == sorted([first.id, second.id, other.id])
    assert ids.index(first.id) < ids.index(second.id)


async def test_a_later_event_of_a_run_waits_behind_one_waiting_for_its_retry(running, receiver, store,
                                                                           clock) -> None:
    """The earlier delivery is not in the worker's hands but waiting for a retry: the later one stays in the
    outbox until the retry went through, then is sent (read back from the outbox)."""
    dispatcher, _counted = running
    receiver.answer(500, "boom")
    first = make_event("run.stalled", run_id="run_a")
    await commit(dispatcher, store, clock, first)
    await until(lambda: dispatcher.outcomes.recorded == 1, "the first attempt failed and its retry scheduled")
    second = make_event("run.failed", run_id="run_a")
    done = await commit(dispatcher, store, clock, second)
    assert done.claimed == [] and done.behind == {"ops": ["run_a"]}
    await asyncio.sleep(0.1)
    assert receiver.ids() == [first.id]  # not before the first is delivered
    await advance_until(clock, lambda: len(receiver.requests) == 3, "the retry, then the second", step=0.1,
                        limit=10)
    await settled(store)
    assert receiver.ids() == [first.id, first.id, second.id]


async def test_a_worker_holding_deliveries_renews_its_claims(running, receiver, store, clock) -> None:
    """A steady flow makes no claim, but a claim is what renews (PostgreSQL) the claims on what a worker holds:
    one holding deliveries for ``RENEW_EVERY_MS`` of the clock makes a claim that only renews them."""
    dispatcher, counted = running
    receiver.gate.clear()
    events = [make_event(run_id=f"run_{i}") for i in range(3)]
    await commit(dispatcher, store, clock, *events)
    worker = dispatcher.workers["ops"]
    await until(lambda: worker._in_flight, "one in flight, the others queued (slow start)")
    claims = len(counted.calls)
    clock.advance(dispatcher_module.RENEW_EVERY_MS / 1000)
    receiver.gate.set()
    await until(lambda: len(counted.calls) > claims, "a claim")
    name, args, kwargs = counted.calls[claims]
    assert name == "due_deliveries" and args[2] == 0  # nothing new asked for
    assert set(kwargs["exclude"]) & {d.id for d in worker._queue} or not worker._queue
    await until(lambda: dispatcher.outcomes.recorded == 3, "all three sent")
    await settled(store)
    assert sorted(receiver.ids()) == sorted(e.id for e in events)


async def test_a_paused_sink_takes_nothing_in_hand_and_sends_it_after_it_resumes(running, receiver, store,
                                                                               clock) -> None:
    dispatcher, _counted = running
    for _ in range(12):
        receiver.answer(503, "down")
    await commit(dispatcher, store, clock, make_event(run_id="run_0"))
    worker = dispatcher.workers["ops"]
    await advance_until(clock, lambda: worker.breaker.open, "the sink paused", step=0.1, limit=120)
    assert dispatcher.take_limits() == {"ops": 0}
    later = make_event(run_id="run_1")
    done = await commit(dispatcher, store, clock, later)
    assert done.claimed == [] and done.left == {"ops": 1}
    receiver.answers.clear()
    await advance_until(clock, lambda: later.id in receiver.ids() and dispatcher.outcomes.recorded >= 2,
                        "the probe resumed the sink, then the rest", step=0.5, limit=60)
    await settled(store)
    assert receiver.ids().count(later.id) == 1


async def test_a_delivery_a_claim_left_out_behind_one_in_hand_is_read_after_it(running, receiver, store, clock,
                                                                             monkeypatch) -> None:
    """A worker with no room left (here: one delivery in hand) takes nothing from the next commit, which then says
    only how many it left, not which wait behind what. Its claim leaves out run_a's second event (behind the
    first, in flight); once the first is settled, the outbox is read again and the second is sent."""
    dispatcher, counted = running
    monkeypatch.setattr(dispatcher_module, "HANDOFF_MAX", 1)
    receiver.gate.clear()
    first = make_event("run.stalled", run_id="run_a")
    await commit(dispatcher, store, clock, first)
    await until(lambda: dispatcher.workers["ops"]._in_flight, "the first in flight")
    second = make_event("run.failed", run_id="run_a")
    claims = len(counted.calls)
    done = await commit(dispatcher, store, clock, second)
    assert done.claimed == [] and done.left == {"ops": 1}
    await until(lambda: len(counted.calls) > claims, "the worker's claim (which leaves the second out)")
    receiver.gate.set()
    await until(lambda: len(receiver.requests) == 2 and dispatcher.outcomes.recorded == 2, "both sent")
    await settled(store)
    assert receiver.ids() == [first.id, second.id]


async def test_what_a_dead_sweeper_had_in_hand_is_sent_by_another_instance(pg_url, receiver, clock) -> None:
    """PostgreSQL: the sweeper's commit claimed its new deliveries for its own workers, and it died before sending
    them. Once its heartbeat is stale, another instance's worker takes them over when it reads the outbox, which
    the daemon makes every worker do once a turn (``Dispatcher.wake``)."""
    from tests.postgres.test_store_pg import sql
    from watcher.store_pg import PgStore

    a, b = await PgStore.open(pg_url, instance_id="a"), await PgStore.open(pg_url, instance_id="b")
    sink = build_sink(sink_config(name="ops", type="webhook", url=Secret(receiver.url())), clock=clock)
    await sink.start()
    try:
        for s in (a, b):
            await s.register_instance(role="standby")
        standby = Dispatcher({"ops": sink}, b, cfg=FAST, clock=clock)
        standby.start()
        await until(lambda: clock.waiting, "the standby's worker idle")
        events = [make_event(run_id=f"run_{i}") for i in range(3)]
        done = await a.commit_and_claim(upserts=[], deletes=[], events=[(e, ["ops"]) for e in events], meta={},
                                        now_ms=clock.now_ms(), take={"ops": 10})
        assert len(done.claimed) == 3  # in a's hands; a is killed now
        sql(pg_url, "UPDATE instances SET heartbeat_ms = heartbeat_ms - 60000 WHERE id = 'a'")
        standby.wake()  # the standby's next turn
        await until(lambda: standby.outcomes.recorded == 3, "the three sent by b")
        await standby.stop(1)
        assert sorted(receiver.ids()) == sorted(e.id for e in events)
    finally:
        await sink.close()
        await a.aclose()
        await b.aclose()
