"""Regression (found by test_faults.py): a sink disabled by a 410 stayed disabled inside a running daemon after
`flora-watcher replay --failed` re-enabled it in the store, so the re-queued deliveries were dead-lettered again
at once instead of sent ("a running daemon picks them up within seconds")."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from watcher.clock import SYSTEM_CLOCK
from watcher.config import DeliveryConfig
from watcher.dispatcher import SinkWorker
from watcher.model import Event, Run
from watcher.sinks.registry import sink_config
from watcher.sinks.spec import SendResult
from watcher.store import AsyncStore, Store
from watcher.store_api import DEAD, Outcome
from watcher.transitions import build_event


class RecordingSink:
    def __init__(self) -> None:
        self.name = "hook"
        self.config = sink_config(name="hook", type="webhook")
        self.sent: list[str] = []

    async def start(self) -> None:
        return None

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        self.sent.append(event.id)
        return SendResult(status=204)

    async def close(self) -> None:
        return None


async def test_replay_from_another_process_re_enables_a_disabled_sink_in_a_running_worker(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    now = SYSTEM_CLOCK.now_ms()
    event = build_event("run.completed", Run(run_id="run_x", status="completed"), "running", now_ms=now, late=False)
    store = AsyncStore(Store.open(path))
    try:
        await store.commit_sweep(upserts=[], deletes=[], events=[(event, ["hook"])], meta={}, now_ms=now)
        (delivery,) = await store.due_deliveries("hook", now)
        reason = "receiver answered 410: destination gone; fix the sink and replay"
        await store.record_outcomes([Outcome(delivery.id, "hook", DEAD, now, status=410, error="HTTP 410")])
        await store.set_sink_state("hook", disabled_reason=reason, now_ms=now)
        sink = RecordingSink()
        worker = SinkWorker(sink, store, cfg=DeliveryConfig(), clock=SYSTEM_CLOCK, rand=random.Random(0),
                            disabled_reason=reason)

        # `flora-watcher replay --failed`, another process (a second connection in this one is refused)
        replay = ("import sys; from watcher.store import Store; "
                  "print(Store.open(sys.argv[1]).replay_failed(now_ms=int(sys.argv[2])))")
        cli = await asyncio.create_subprocess_exec(sys.executable, "-c", replay, str(path), str(now),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), 60)
        assert out.decode().strip() == "1", err.decode()

        assert await worker.deliver_due() == 1
        assert sink.sent == [event.id]
        assert worker.health.disabled_reason is None
        assert await store.pending_counts() == {}
        assert (await store.sink_states())["hook"].disabled_reason is None
    finally:
        await store.aclose()


async def test_a_still_disabled_sink_keeps_dead_lettering(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    now = SYSTEM_CLOCK.now_ms()
    event = build_event("run.failed", Run(run_id="run_y", status="failed"), "running", now_ms=now, late=False)
    store = AsyncStore(Store.open(path))
    try:
        await store.set_sink_state("hook", disabled_reason="gone", now_ms=now)
        await store.commit_sweep(upserts=[], deletes=[], events=[(event, ["hook"])], meta={}, now_ms=now)
        sink = RecordingSink()
        worker = SinkWorker(sink, store, cfg=DeliveryConfig(), clock=SYSTEM_CLOCK, rand=random.Random(0),
                            disabled_reason="gone")
        await worker.deliver_due()
        assert sink.sent == []
        assert (await store.summary())["deliveries"]["dead"] == 1
    finally:
        await store.aclose()
