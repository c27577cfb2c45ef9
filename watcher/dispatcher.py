"""Delivery: one worker per sink reading that sink's pending deliveries from the outbox.

Shell: the sink transports, ``policy.decide_failure`` decides what happens after a failure (retry at a time,
dead letter, disable), the store records it. A delivery is marked delivered only after the sink confirmed it.
Workers are independent, so a slow or failing sink never delays another.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from watcher.clock import Clock
from watcher.config import DeliveryConfig
from watcher.crashpoints import crash_point
from watcher.errors import DeliveryError, Reason
from watcher.policy import Circuit, circuit_after, circuit_allows, decide_failure
from watcher.sinks.base import Sink

log = structlog.get_logger("watcher.dispatcher")

BATCH = 50
IDLE_RECHECK_S = 2.0


@dataclass(slots=True)
class SinkHealth:
    """In-memory view of one sink for `status`, metrics and the circuit breaker."""

    circuit: Circuit
    disabled_reason: str | None = None
    delivered: int = 0
    failed: int = 0


class SinkWorker:
    def __init__(
        self,
        sink: Sink,
        store,  # AsyncStore
        *,
        cfg: DeliveryConfig,
        clock: Clock,
        rand: random.Random,
        disabled_reason: str | None = None,
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.rand = rand
        self.on_outcome = on_outcome
        self.health = SinkHealth(circuit=Circuit(), disabled_reason=disabled_reason)
        self.wakeup = asyncio.Event()
        self.stopping = False
        self.in_flight = False

    def _outcome(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(self.name, outcome)

    async def run_forever(self) -> None:
        """Deliver until ``stop()``; sleeps until the next due delivery or a wakeup."""
        while not self.stopping:
            self.wakeup.clear()  # before looking: a wake() from here on is not lost
            sent = await self.deliver_due()
            if self.stopping:
                break
            if sent:
                continue
            delay = await self._idle_delay()
            with contextlib.suppress(TimeoutError):
                await self.clock.wait_for(self.wakeup.wait(), delay)

    async def _idle_delay(self) -> float:
        now = self.clock.now_ms()
        nxt = await self.store.next_due_ms(self.name)
        waits = [IDLE_RECHECK_S]  # also picks up `replay` from another process
        if nxt is not None:
            waits.append(max(0.0, (nxt - now) / 1000.0))
        if self.health.circuit.open_until_ms is not None:
            waits.append(max(0.0, (self.health.circuit.open_until_ms - now) / 1000.0))
        return max(0.01, min(waits))

    def stop(self) -> None:
        self.stopping = True
        self.wakeup.set()

    async def deliver_due(self, *, limit: int = BATCH) -> int:
        """Send every delivery of this sink that is due now (up to ``limit``). Returns how many were attempted."""
        now = self.clock.now_ms()
        due = await self.store.due_deliveries(self.name, now, limit)
        if due and self.health.disabled_reason is not None:
            await self._pick_up_reenable()  # read after `due`: replay re-queues and re-enables in one transaction
        attempted = 0
        for delivery in due:
            if self.stopping:
                break
            now = self.clock.now_ms()
            if self.health.disabled_reason is not None:
                await self.store.mark_dead(
                    delivery.id, now_ms=now, error=f"sink disabled: {self.health.disabled_reason}", status=None
                )
                self._outcome("dead")
                continue
            if not circuit_allows(self.health.circuit, now):
                break
            attempted += 1
            await self._attempt(delivery)
        return attempted

    async def _pick_up_reenable(self) -> None:
        """`flora-watcher replay` (another process) re-enables a disabled sink in the store; a running daemon
        must send the re-queued deliveries, not dead-letter them again."""
        state = (await self.store.sink_states()).get(self.name)
        if state is None or state.disabled_reason is None:
            self.health.disabled_reason = None
            log.info("sink.reenabled", sink=self.name)

    async def _attempt(self, delivery) -> None:
        self.in_flight = True
        try:
            try:
                crash_point("before_send")
                result = await self.sink.send(delivery.event, body=delivery.body)
                crash_point("after_send")
            except DeliveryError as exc:
                await self._failed(delivery, exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in a sink must not kill the worker or lose the delivery
                log.exception("delivery.sink_crashed", sink=self.name, event_id=delivery.event_id)
                await self._failed(delivery, DeliveryError(
                    f"sink raised {type(exc).__name__}", retryable=True, reason=Reason.IO_ERROR))
                return
            now = self.clock.now_ms()
            await self.store.mark_delivered(delivery.id, now, result.status)
            await self.store.record_sink_result(self.name, ok=True, now_ms=now)
            self.health.circuit = circuit_after(self.health.circuit, ok=True, now_ms=now)
            self.health.delivered += 1
            self._outcome("delivered")
            log.info("delivery.done", sink=self.name, event_id=delivery.event_id, attempts=delivery.attempts + 1,
                     status=result.status)
        finally:
            self.in_flight = False

    async def _failed(self, delivery, exc: DeliveryError) -> None:
        now = self.clock.now_ms()
        attempts = delivery.attempts + 1
        verdict = decide_failure(exc, attempts=attempts, created_ms=delivery.created_ms, now_ms=now,
                                 rand=self.rand.random(), cfg=self.cfg)
        self.health.circuit = circuit_after(self.health.circuit, ok=False, now_ms=now)
        self.health.failed += 1
        await self.store.record_sink_result(self.name, ok=False, now_ms=now, error=exc.message[:300])
        fields = dict(sink=self.name, event_id=delivery.event_id, attempts=attempts, reason=str(exc.reason),
                      status=exc.status, error=exc.message[:300])
        if verdict.action == "retry":
            await self.store.mark_retry(delivery.id, now_ms=now, next_attempt_ms=verdict.next_attempt_ms,
                                        error=exc.message[:500], status=exc.status)
            self._outcome("retry")
            log.info("delivery.retry_scheduled", in_s=round((verdict.next_attempt_ms - now) / 1000, 2), **fields)
        elif verdict.action == "disable":
            await self.store.mark_dead(delivery.id, now_ms=now, error=exc.message[:500], status=exc.status)
            reason = f"receiver answered {exc.status or 'gone'}: destination gone; fix the sink and replay"
            self.health.disabled_reason = reason
            await self.store.set_sink_state(self.name, disabled_reason=reason, now_ms=now)
            self._outcome("disabled")
            log.error("sink.disabled", **fields, hint="the receiver says this destination is gone (410)")
        else:
            await self.store.mark_dead(delivery.id, now_ms=now, error=exc.message[:500], status=exc.status)
            self._outcome("dead")
            log.warning("delivery.dead_lettered", verdict=verdict.reason, **fields,
                        hint="inspect with `flora-watcher deliveries --failed`, re-send with `flora-watcher replay`")


class Dispatcher:
    """Owns one ``SinkWorker`` per sink and their tasks."""

    def __init__(
        self,
        sinks: Mapping[str, Sink],
        store,
        *,
        cfg: DeliveryConfig,
        clock: Clock,
        rand: random.Random | None = None,
        disabled: Mapping[str, str | None] | None = None,
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.rand = rand or random.Random()
        self.on_outcome = on_outcome
        self.workers: dict[str, SinkWorker] = {
            name: SinkWorker(sink, store, cfg=cfg, clock=clock, rand=self.rand,
                             disabled_reason=(disabled or {}).get(name), on_outcome=on_outcome)
            for name, sink in sinks.items()
        }
        self.tasks: dict[str, asyncio.Task] = {}
        self._started = False

    def start(self) -> None:
        self._started = True
        for name, worker in self.workers.items():
            self.tasks[name] = asyncio.create_task(worker.run_forever(), name=f"sink:{name}")

    def add(self, sink: Sink, *, disabled_reason: str | None = None) -> None:
        """A new worker for ``sink`` (a reload added or changed it); started at once if the dispatcher runs."""
        worker = SinkWorker(sink, self.store, cfg=self.cfg, clock=self.clock, rand=self.rand,
                            disabled_reason=disabled_reason, on_outcome=self.on_outcome)
        self.workers[sink.name] = worker
        if self._started:
            self.tasks[sink.name] = asyncio.create_task(worker.run_forever(), name=f"sink:{sink.name}")

    async def remove(self, name: str, grace: float) -> None:
        """Stop one sink's worker: an in-flight send may finish within ``grace``; its deliveries stay in the
        outbox (a worker of the same name picks them up, or they are dead-lettered if the sink is gone)."""
        worker = self.workers.pop(name, None)
        if worker is None:
            return
        worker.stop()
        task = self.tasks.pop(name, None)
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await self.clock.wait_for(task, grace)

    def set_config(self, cfg: DeliveryConfig) -> None:
        """A reloaded [delivery] section applies to every worker's next decision."""
        self.cfg = cfg
        for worker in self.workers.values():
            worker.cfg = cfg

    def wake(self) -> None:
        for worker in self.workers.values():
            worker.wakeup.set()

    async def drain_due(self) -> None:
        """Deliver everything due now on every sink, concurrently, without waiting for retries (``--once``)."""

        async def drain(worker: SinkWorker) -> None:
            while await worker.deliver_due():
                pass

        await asyncio.gather(*(drain(w) for w in self.workers.values()))

    async def stop(self, grace: float) -> int:
        """Stop the workers: an in-flight send may finish within ``grace`` seconds and its outcome is recorded;
        after that the rest is cancelled (it stays pending and is sent after the next start). Returns how many
        workers had to be cancelled."""
        for worker in self.workers.values():
            worker.stop()
        tasks = list(self.tasks.values())
        if not tasks:
            return 0
        with contextlib.suppress(TimeoutError):
            await self.clock.wait_for(asyncio.wait(tasks), grace)
        done = [task for task in tasks if task.done()]
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("delivery.drain_timeout", cancelled=len(pending),
                        note="their deliveries stay pending and are sent after the next start")
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("delivery.worker_crashed", error=repr(task.exception()))
        self.tasks.clear()
        return len(pending)
