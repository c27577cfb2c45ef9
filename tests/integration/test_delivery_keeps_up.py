"""Delivery that keeps up (issue 10): the outbox under load and through receiver trouble, against real loopback
receivers and a real state store, time driven by the injected FakeClock.

The FakeClock moves only when a worker sleeps, and a worker sleeps only when it has nothing in flight, so the
seconds asserted below are the dispatcher's own schedule (backoff, probes, pauses), not the machine's speed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.fakes import FakeClock
from tests.sinks.helpers import make_event
from watcher.clock import SYSTEM_CLOCK
from watcher.config import DeliveryConfig, SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.secret import Secret
from watcher.sinks.registry import build_sink, sink_config
from watcher.store import AsyncStore

START = 1000.0  # FakeClock's monotonic start


@dataclass
class Hit:
    at: float  # the clock's monotonic reading when the request arrived
    event_id: str | None
    status: int
    body: bytes = b""


@dataclass
class ScriptedReceiver:
    """A loopback HTTP receiver whose answer is a function of (clock time, event id, tries of that event)."""

    clock: object  # FakeClock or SYSTEM_CLOCK
    decide: Callable[[float, str | None, int], int]
    hits: list[Hit] = field(default_factory=list)
    tries: Counter = field(default_factory=Counter)
    port: int = 0
    runner: web.AppRunner | None = None

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event_id = request.headers.get("webhook-id")
        if event_id is None:
            try:
                event_id = json.loads(body).get("id")
            except ValueError:
                event_id = None
        self.tries[event_id] += 1
        status = self.decide(self.clock.monotonic(), event_id, self.tries[event_id])
        self.hits.append(Hit(self.clock.monotonic(), event_id, status, body))
        return web.Response(status=status, text="ok" if status < 300 else "unavailable")

    async def __aenter__(self) -> ScriptedReceiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def acked(self) -> dict[str | None, float]:
        """event id → clock time of its first 2xx."""
        out: dict[str | None, float] = {}
        for hit in self.hits:
            if 200 <= hit.status < 300:
                out.setdefault(hit.event_id, hit.at)
        return out


@pytest.fixture
def store(any_store):
    """Every test here runs on both back ends (tests/conftest.py)."""
    return any_store


async def until(predicate, what: str, timeout: float = 30.0) -> None:
    """A safety net against a hung test; the clock the assertions use is the FakeClock."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def all_settled(store: AsyncStore) -> bool:
    return sum((await store.pending_counts()).values()) == 0


async def settled_and_resumed(store: AsyncStore) -> bool:
    """Every delivery settled and no pause recorded: the worker has finished its resume (the pause record is
    cleared after the deliveries it made due, and a slow store may still be writing it when they settle)."""
    return await all_settled(store) and not await store.sink_pauses()


async def running(dispatcher: Dispatcher, sinks: dict, *, until_settled: AsyncStore, timeout: float = 30.0,
                  resumed: bool = False) -> None:
    """Run the dispatcher until every delivery is settled (and, with ``resumed``, the sink's pause record is
    cleared), then stop it. Stopping cancels what the workers still do once its grace has passed, which on the
    FakeClock is at once: a condition the test asserts after the stop must be waited for here."""
    dispatcher.start()
    try:
        if resumed:
            await until(lambda: settled_and_resumed(until_settled), "every delivery settled, the pause cleared",
                        timeout)
        else:
            await until(lambda: all_settled(until_settled), "every delivery settled", timeout)
    finally:
        await dispatcher.stop(1.0)
        for sink in sinks.values():
            await sink.close()


def webhook(url: str, name: str = "ops", **kw) -> SinkConfig:
    return sink_config(name=name, type="webhook", url=Secret(url), **kw)


async def started_sinks(clock, *configs: SinkConfig) -> dict:
    sinks = {}
    for cfg in configs:
        sink = build_sink(cfg, clock=clock)
        await sink.start()
        sinks[cfg.name] = sink
    return sinks


def events(n: int, prefix: str = "run_ku", event_type: str = "run.completed") -> list:
    return [make_event(event_type, run_id=f"{prefix}{i:05d}") for i in range(n)]


async def test_receiver_down_for_40_s_while_30_runs_finish_then_all_arrive_soon_after_it_returns(store) -> None:
    """Row 3 of the issue: 503 for 40 s while 30 runs finish (one a second); at most 2 requests a second while
    it is down; every event within 15 s of its return."""
    clock = FakeClock(START)
    back_at = START + 40.0
    async with ScriptedReceiver(clock, lambda t, _id, _n: 503 if t < back_at else 200) as receiver:
        for i, event in enumerate(events(30)):  # each run ends a second after the previous one
            await store.commit_sweep(upserts=[], deletes=[], events=[(event, ["ops"])], meta={},
                                     now_ms=clock.now_ms() + i * 1000)
        sinks = await started_sinks(clock, webhook(receiver.url()))
        dispatcher = Dispatcher(sinks, store, cfg=DeliveryConfig(), clock=clock, rand=random.Random(7))
        await running(dispatcher, sinks, until_settled=store, resumed=True)
        sink_state = (await store.sink_states())["ops"]
        pauses = await store.sink_pauses()

    while_down = [h for h in receiver.hits if h.at < back_at]
    assert len(while_down) <= 2 * 40, f"{len(while_down)} requests in the 40 s outage"
    acked = receiver.acked()
    assert len(acked) == 30
    assert max(acked.values()) <= back_at + 15.0, f"last ack {max(acked.values()) - back_at:.1f}s after return"
    assert sink_state.consecutive_failures == 0 and pauses == {}  # resumed, and the pause is cleared
    # while paused: one request at a time, at most 5 s apart
    paused = [h.at for h in while_down if h.at > START + 10]
    assert paused and all(b - a <= 5.01 for a, b in itertools.pairwise(paused))


async def test_a_receiver_failing_the_first_two_tries_of_every_event_gets_all_30_within_45_s(store) -> None:
    """Row 4: 500 to the first two tries of every event, then 200: each event follows its own backoff and the
    sink is never paused for it."""
    clock = FakeClock(START)
    async with ScriptedReceiver(clock, lambda _t, _id, n: 500 if n <= 2 else 200) as receiver:
        await store.commit_sweep(upserts=[], deletes=[], events=[(e, ["ops"]) for e in events(30)], meta={},
                                 now_ms=clock.now_ms())
        sinks = await started_sinks(clock, webhook(receiver.url()))
        dispatcher = Dispatcher(sinks, store, cfg=DeliveryConfig(), clock=clock, rand=random.Random(3))
        await running(dispatcher, sinks, until_settled=store)

    acked = receiver.acked()
    assert len(acked) == 30
    assert max(acked.values()) - START <= 45.0, f"last ack after {max(acked.values()) - START:.1f}s"
    assert all(receiver.tries[eid] == 3 for eid in acked)  # no duplicates after the ack


async def test_events_of_one_run_arrive_in_order_even_when_the_first_needs_retries(store) -> None:
    clock = FakeClock(START)
    started = make_event("run.started", run_id="run_order", status="running", previous_status="pending")
    completed = make_event("run.completed", run_id="run_order")
    others = events(20, prefix="run_other")
    async with ScriptedReceiver(clock, lambda _t, eid, n: 503 if eid == started.id and n <= 2 else 200) as receiver:
        await store.commit_sweep(upserts=[], deletes=[], events=[(started, ["ops"])], meta={}, now_ms=clock.now_ms())
        await store.commit_sweep(upserts=[], deletes=[], events=[(e, ["ops"]) for e in [completed, *others]],
                                 meta={}, now_ms=clock.now_ms())
        sinks = await started_sinks(clock, webhook(receiver.url()))
        dispatcher = Dispatcher(sinks, store, cfg=DeliveryConfig(), clock=clock, rand=random.Random(5))
        await running(dispatcher, sinks, until_settled=store)

    order = [h.event_id for h in receiver.hits if h.event_id in (started.id, completed.id)]
    assert order == [started.id, started.id, started.id, completed.id]
    assert len(receiver.acked()) == 22


async def test_a_3000_event_drain_is_sent_concurrently_and_recorded_in_group_commits(store, tmp_path: Path) -> None:
    """Row 1 (the delivery side): 3,000 events at once to a webhook and a file; each exactly once, the file's
    written in batches with one commit (one fsync) per batch, not one per event, and the webhook sees several
    requests in flight at once. No timing is asserted, so the system clock drives it (a FakeClock would let the
    idle worker race through virtual time). How far the webhook's outcomes group depends on the disk and the
    machine: bench_delivery.py measures commits per event."""
    clock = SYSTEM_CLOCK
    commits: list[set[str]] = []  # the sinks whose outcomes each commit carried
    record_outcomes = store.record_outcomes

    async def recording(outcomes):
        await record_outcomes(outcomes)
        commits.append({o.sink for o in outcomes})

    store.record_outcomes = recording
    in_flight = 0
    peak = 0

    async def slow_handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        await request.read()
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return web.Response(text="ok")

    receiver = ScriptedReceiver(clock, lambda *_: 200)
    receiver.handle = slow_handler  # type: ignore[method-assign]
    async with receiver:
        batch = events(3000, prefix="run_drain")
        await store.commit_sweep(upserts=[], deletes=[], events=[(e, ["ops", "journal"]) for e in batch], meta={},
                                 now_ms=clock.now_ms())
        journal = tmp_path / "events.jsonl"
        sinks = await started_sinks(clock, webhook(receiver.url()),
                                    sink_config(name="journal", type="file", path=journal))
        writes: list[int] = []  # events per write of the file sink
        send_many = sinks["journal"].send_many

        async def counted(events, bodies):
            writes.append(len(events))
            return await send_many(events, bodies)

        sinks["journal"].send_many = counted
        dispatcher = Dispatcher(sinks, store, cfg=DeliveryConfig(), clock=clock, rand=random.Random(1))
        await running(dispatcher, sinks, until_settled=store, timeout=120.0)
        summary = await store.summary()

    assert summary["deliveries"]["delivered"] == 6000
    lines = [json.loads(line)["id"] for line in journal.read_text().splitlines()]
    assert sorted(lines) == sorted(e.id for e in batch)
    assert dispatcher.outcomes.recorded == 6000 and dispatcher.outcomes.commits == len(commits)
    # the file: batches (a claim is 200 events, a write up to 256), one write and at most one commit each
    assert sum(writes) == 3000 and len(writes) <= 3000 // 100, writes
    assert sum("journal" in sinks_of for sinks_of in commits) <= len(writes)
    assert 2 <= peak <= 8  # concurrent, within the default concurrency


async def test_outcomes_recorded_while_a_commit_runs_share_the_next_commit() -> None:
    """The group commit itself: while one commit is in progress, every outcome recorded joins the next one, and
    ``record`` returns only once its own outcome is committed."""
    from watcher.dispatcher import OutcomeLog
    from watcher.store_api import Outcome

    class SlowStore:
        def __init__(self) -> None:
            self.commits: list[list[int]] = []
            self.release = asyncio.Event()

        async def record_outcomes(self, outcomes) -> None:
            await self.release.wait()
            self.commits.append([o.delivery_id for o in outcomes])

    store = SlowStore()
    log = OutcomeLog(store)
    first = asyncio.create_task(log.record(Outcome(1, "ops", "delivered", 0)))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(log.record(Outcome(i, "ops", "delivered", 0))) for i in range(2, 12)]
    await asyncio.sleep(0)
    assert not first.done() and not any(t.done() for t in rest)  # nothing returns before its commit
    store.release.set()
    await asyncio.gather(first, *rest)
    assert store.commits == [[1], list(range(2, 12))]
    assert (log.commits, log.recorded) == (2, 11)


# ------------------------------------------------------------------------------------ grouped chat messages


def chat(kind: str, url: str, name: str | None = None, **kw) -> SinkConfig:
    return sink_config(name=name or kind, type=kind, url=Secret(url), **kw)


def burst() -> list:
    """Row 5: 60 runs fail within a second (credits ran out), and 5 complete."""
    failed = [make_event("run.failed", run_id=f"run_credit{i:03d}", error_code="INSUFFICIENT_CREDITS",
                         error_message="Not enough credits.") for i in range(60)]
    completed = [make_event("run.completed", run_id=f"run_fine{i:03d}") for i in range(5)]
    return failed + completed


async def commit_burst(store: AsyncStore, clock: FakeClock, sink: str) -> list:
    events = burst()
    # three sweeps within a second, as the watcher would commit them
    for offset_ms, chunk in ((0, events[:25]), (400, events[25:50]), (800, events[50:])):
        await store.commit_sweep(upserts=[], deletes=[], events=[(e, [sink]) for e in chunk], meta={},
                                 now_ms=clock.now_ms() + offset_ms)
    return events


@pytest.mark.parametrize("kind", ["slack", "discord"])
async def test_a_burst_of_65_becomes_two_messages_naming_every_run(store, kind: str) -> None:
    """Row 5: each chat sink names every run within 15 s, in at most 10 messages — here exactly two: the 60
    failures (one error code) and the 5 completions."""
    clock = FakeClock(START)
    async with ScriptedReceiver(clock, lambda *_: 200) as receiver:
        events = await commit_burst(store, clock, kind)
        sinks = await started_sinks(clock, chat(kind, receiver.url()))
        dispatcher = Dispatcher(sinks, store, cfg=DeliveryConfig(), clock=clock, rand=random.Random(2))
        await running(dispatcher, sinks, until_settled=store)

    assert len(receiver.hits) == 2
    bodies = [hit.body.decode() for hit in receiver.hits]
    for event in events:
        assert sum(event.data["run_id"] in body for body in bodies) == 1, f"{event.data['run_id']} not named once"
    assert "60 runs failed" in bodies[0] and "INSUFFICIENT_CREDITS" in bodies[0]
    assert "5 runs completed" in bodies[1]
    assert START + 2.0 <= receiver.hits[0].at  # group_wait: the whole burst, not its first event alone
    assert receiver.hits[-1].at - START <= 15.0
    if kind == "discord":
        assert all(json.loads(b)["allowed_mentions"] == {"parse": []} for b in bodies)
    assert (await store.summary())["deliveries"]["delivered"] == 65  # each event's own row, marked together


async def test_a_group_of_one_is_the_single_event_message(store) -> None:
    from watcher.sinks.slack import slack_payload

    clock = FakeClock(START)
    event = make_event("run.failed", run_id="run_alone")
    async with ScriptedReceiver(clock, lambda *_: 200) as receiver:
        await store.commit_sweep(upserts=[], deletes=[], events=[(event, ["slack"])], meta={}, now_ms=clock.now_ms())
        sinks = await started_sinks(clock, chat("slack", receiver.url()))
        dispatcher = Dispatcher(sinks, store, cfg=DeliveryConfig(), clock=clock, rand=random.Random(2))
        await running(dispatcher, sinks, until_settled=store)
    (hit,) = receiver.hits
    assert json.loads(hit.body) == slack_payload(event)


async def test_a_failed_group_is_retried_whole_and_each_row_is_marked(store) -> None:
    clock = FakeClock(START)
    tries = 0

    def decide(_t: float, _id: object, _n: int) -> int:
        nonlocal tries
        tries += 1
        return 503 if tries == 1 else 200

    async with ScriptedReceiver(clock, decide) as receiver:
        events = [make_event("run.failed", run_id=f"run_g{i}", error_code="X") for i in range(4)]
        await store.commit_sweep(upserts=[], deletes=[], events=[(e, ["slack"]) for e in events], meta={},
                                 now_ms=clock.now_ms())
        sinks = await started_sinks(clock, chat("slack", receiver.url(), group_by=("type",)))
        dispatcher = Dispatcher(sinks, store, cfg=DeliveryConfig(), clock=clock, rand=random.Random(2))
        await running(dispatcher, sinks, until_settled=store)
        rows = await store.summary()
    assert [h.status for h in receiver.hits] == [503, 200]
    assert all("4 runs failed" in h.body.decode() for h in receiver.hits)  # the same group both times
    assert rows["deliveries"]["delivered"] == 4


async def test_3000_events_drain_to_webhook_file_slack_and_discord(store, tmp_path: Path) -> None:
    """Row 1: 3,000 runs finish together; the webhook gets every event, the file every line once, Slack and
    Discord a few grouped messages (one per type and error code) instead of 3,000."""
    clock = SYSTEM_CLOCK
    async with ScriptedReceiver(clock, lambda *_: 200) as receiver:
        batch = [make_event("run.failed" if i % 3 == 0 else "run.completed", run_id=f"run_d{i:05d}",
                            error_code="GPU_PROVIDER_ERROR" if i % 3 == 0 else None) for i in range(3000)]
        names = ["ops", "journal", "slack", "discord"]
        for start in range(0, 3000, 1000):
            await store.commit_sweep(upserts=[], deletes=[], events=[(e, names) for e in batch[start:start + 1000]],
                                     meta={}, now_ms=clock.now_ms())
        journal = tmp_path / "events.jsonl"
        sinks = await started_sinks(
            clock, webhook(receiver.url()), sink_config(name="journal", type="file", path=journal),
            chat("slack", receiver.url() + "/slack", group_wait=0.2), chat("discord", receiver.url() + "/discord",
                                                                            group_wait=0.2))
        dispatcher = Dispatcher(sinks, store, cfg=DeliveryConfig(), clock=clock, rand=random.Random(1))
        await running(dispatcher, sinks, until_settled=store, timeout=120.0)
        summary = await store.summary()

    assert summary["deliveries"]["delivered"] == 4 * 3000
    assert sorted(json.loads(line)["id"] for line in journal.read_text().splitlines()) == sorted(e.id for e in batch)
    webhook_ids = [h.event_id for h in receiver.hits if h.event_id and h.event_id.startswith("evt_")]
    assert len(webhook_ids) >= 3000 and set(webhook_ids) >= {e.id for e in batch}
    chat_messages = len(receiver.hits) - len(webhook_ids)
    assert chat_messages <= 2 * 4, f"{chat_messages} chat messages"  # per sink: failed + completed, maybe split


async def test_the_file_sink_writes_a_batch_with_one_fsync_and_never_twice(tmp_path: Path, monkeypatch) -> None:
    import os as os_module

    from watcher.sinks.file import FileSink

    path = tmp_path / "events.jsonl"
    sink = FileSink(sink_config(name="journal", type="file", path=path))
    await sink.start()
    fsyncs = []
    real_fsync = os_module.fsync
    monkeypatch.setattr(os_module, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    batch = events(50, prefix="run_file")
    await sink.send(batch[0])
    fsyncs.clear()
    await sink.send_many(batch, [e.body() for e in batch])
    assert len(fsyncs) == 1  # one fsync for the batch
    await sink.send_many(batch[:10], [None] * 10)  # all already there: nothing written
    assert len(fsyncs) == 1
    await sink.close()
    lines = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert sorted(lines) == sorted(e.id for e in batch)  # each once


async def test_once_sends_held_groups_without_waiting(store) -> None:
    """``run --once`` (drain_due): what is queued now is the whole group; nothing waits for group_wait."""
    clock = FakeClock(START)
    async with ScriptedReceiver(clock, lambda *_: 200) as receiver:
        await store.commit_sweep(upserts=[], deletes=[], events=[(e, ["slack"]) for e in burst()], meta={},
                                 now_ms=clock.now_ms())
        sinks = await started_sinks(clock, chat("slack", receiver.url(), group_wait=30))
        dispatcher = Dispatcher(sinks, store, cfg=DeliveryConfig(), clock=clock, rand=random.Random(2))
        await asyncio.wait_for(dispatcher.drain_due(), 30)
        for sink in sinks.values():
            await sink.close()
    assert len(receiver.hits) == 2
    assert clock.monotonic() - START <= 1.0 + 1e-6  # Slack's one-second pacing only, no 30 s group_wait
    assert await all_settled(store)
