"""FLORA's run callbacks, as the simulator sends them (flora-api.md §5).

A run created with a ``callback_url`` gets one signed ``run.completed`` / ``run.failed`` POST when it ends:
the envelope ``{id: "whd_…", type, api_version, created_at, data: {run_id, run_type, workspace_id, status,
error_code?, error_message?}}`` (no outputs), the headers ``Flora-Signature: t=…,v1=…`` (one ``v1`` per
signing secret, as during a rotation), ``Flora-Webhook-Id`` and ``Flora-Event``. An attempt that is not
answered 2xx within its timeout (3xx included: redirects are not followed) is retried 10 s, 1 min and 5 min
later, byte for byte the same (same body, same ``t``); after the fourth attempt the delivery has failed.

Pure: ``envelope``, ``retry_due``, ``Delivery``/``Attempt``. Shell: ``CallbackSender`` (the schedule, the
sends, the counters), driven by the simulator's clock: with real time it sleeps until the next attempt is
due; with an injected clock it looks every ``poll_s`` real seconds whether that clock has reached it, so a
test moves the clock instead of waiting minutes.

Unlike FLORA, the simulator also calls loopback URLs (``http://127.0.0.1:…``), so tests and the demo need no
TLS and no public host; everything else FLORA refuses, it refuses too.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from watcher import __version__
from watcher.signing import flora_headers, signing_keys
from watcher.simulator import scenario as sc
from watcher.simulator.faults import Faults

API_VERSION = "2026-06-11"
RETRY_DELAYS_MS: tuple[int, ...] = (10_000, 60_000, 300_000)  # after the 1st, 2nd and 3rd failed attempt
ATTEMPT_TIMEOUT_S = 10.0
DEFAULT_SIGNING_SECRET = "whsec_test_simulator"
USER_AGENT = f"FLORA-Webhooks/1.0 (flora-watcher simulator {__version__})"

PENDING, DELIVERED, FAILED, DROPPED = "pending", "delivered", "failed", "dropped"


# ------------------------------------------------------------------------------------------------ pure


def envelope(delivery_id: str, run: sc.SimRun, created_at_ms: int) -> bytes:
    """The callback body of ``run`` (its planned outcome), as compact JSON bytes: sent byte for byte on
    every attempt."""
    data: dict[str, Any] = {"run_id": run.run_id, "run_type": run.kind, "workspace_id": run.workspace_id,
                            "status": run.outcome}
    if run.outcome == sc.FAILED:
        data["error_code"] = run.error_code
        data["error_message"] = run.error_message
    return json.dumps({"id": delivery_id, "type": f"run.{run.outcome}", "api_version": API_VERSION,
                       "created_at": created_at_ms, "data": data}, separators=(",", ":")).encode()


def retry_due(attempts: int, failed_at_ms: int) -> int | None:
    """When the next attempt is due after ``attempts`` failed ones (the last at ``failed_at_ms``), or None
    when the delivery has used its four attempts."""
    if 1 <= attempts <= len(RETRY_DELAYS_MS):
        return failed_at_ms + RETRY_DELAYS_MS[attempts - 1]
    return None


def first_due(run: sc.SimRun, faults: Faults) -> int:
    """When the first attempt is due: when the run ends, plus ``callback_delay_ms``, minus
    ``callback_early_ms`` (a callback that beats the API's own view of the run)."""
    return run.completed_at + int(faults.callback_delay_ms) - int(faults.callback_early_ms)


@dataclass(frozen=True, slots=True)
class Attempt:
    at_ms: int
    status: int | None  # the receiver's HTTP status; None when the request failed (error says how)
    error: str | None = None
    duplicate: bool = False  # an extra copy of the attempt before it (callback_duplicate_share)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(slots=True)
class Delivery:
    delivery_id: str
    run_id: str
    url: str
    event_type: str
    body: bytes
    due_ms: int
    state: str = PENDING
    timestamp: int | None = None  # the signed t, fixed at the first attempt
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def tries(self) -> int:
        """Attempts made, duplicates aside."""
        return sum(1 for a in self.attempts if not a.duplicate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id, "run_id": self.run_id, "url": self.url, "type": self.event_type,
            "state": self.state, "due_ms": self.due_ms, "timestamp": self.timestamp,
            "body": self.body.decode(),
            "attempts": [{"at_ms": a.at_ms, "status": a.status, "error": a.error, "duplicate": a.duplicate}
                         for a in self.attempts],
        }


# ------------------------------------------------------------------------------------------------ shell


class CallbackSender:
    """Schedules and sends the simulator's callbacks. ``clock`` returns Unix ms; ``poll_s`` is how often
    (real seconds) to look at an injected clock, None for real time."""

    def __init__(self, clock: Callable[[], int], faults: Callable[[], Faults], *, secrets: Sequence[str],
                 rng: random.Random, poll_s: float | None = None, timeout_s: float = ATTEMPT_TIMEOUT_S,
                 concurrency: int = 64) -> None:
        if not secrets:
            raise ValueError("the simulator needs a signing secret to sign callbacks")
        self._clock = clock
        self._faults = faults
        self._keys = signing_keys("flora", list(secrets))
        self._rng = rng
        self._poll_s = poll_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._slots = asyncio.Semaphore(concurrency)
        self._due: list[tuple[int, int, Delivery]] = []  # (due_ms, seq, delivery): a heap
        self._seq = itertools.count()
        self._kick = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.deliveries: dict[str, Delivery] = {}
        self.counts: Counter[str] = Counter()

    # -- scheduling (sync: called from request handlers and the Python API)

    def schedule(self, run: sc.SimRun, url: str) -> Delivery:
        """Plan the callback of ``run`` under the knobs of this moment (drop, delay, early)."""
        faults = self._faults()
        delivery_id = f"whd_{self._rng.getrandbits(96):024x}"
        due = first_due(run, faults)
        delivery = Delivery(delivery_id, run.run_id, url, f"run.{run.outcome}",
                            envelope(delivery_id, run, max(due, run.created_at)), due)
        self.deliveries[delivery_id] = delivery
        self.counts["scheduled"] += 1
        if faults.callback_drop_share and self._rng.random() < faults.callback_drop_share:
            delivery.state = DROPPED
            self.counts["dropped"] += 1
            return delivery
        self._push(delivery, due)
        return delivery

    def _push(self, delivery: Delivery, due_ms: int) -> None:
        delivery.due_ms = due_ms
        heapq.heappush(self._due, (due_ms, next(self._seq), delivery))
        self._kick.set()

    @property
    def pending(self) -> int:
        return len(self._due) + len(self._tasks)

    def next_due_ms(self) -> int | None:
        return self._due[0][0] if self._due else None

    # -- sending

    async def deliver_due(self) -> int:
        """Send every attempt due by now and wait for them; returns how many were started."""
        tasks = self._start_due()
        if tasks:
            await asyncio.gather(*tasks)
        return len(tasks)

    def _start_due(self) -> list[asyncio.Task[None]]:
        now = self._clock()
        started = []
        while self._due and self._due[0][0] <= now:
            _, _, delivery = heapq.heappop(self._due)
            task = asyncio.create_task(self._attempt(delivery, duplicate=self._duplicate()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started.append(task)
        return started

    def _duplicate(self) -> bool:
        share = self._faults().callback_duplicate_share
        return bool(share) and self._rng.random() < share

    async def run(self) -> None:
        """Send attempts as they fall due, until cancelled."""
        while True:
            self._start_due()
            due = self.next_due_ms()
            wait = None if due is None else max(0.0, (due - self._clock()) / 1000)
            if self._poll_s is not None and wait is not None:
                wait = min(wait, self._poll_s)
            self._kick.clear()
            if due is not None and wait == 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), wait)

    async def _attempt(self, delivery: Delivery, *, duplicate: bool) -> None:
        async with self._slots:
            now = self._clock()
            if delivery.timestamp is None:
                delivery.timestamp = now // 1000
            headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                       **flora_headers(delivery.delivery_id, delivery.event_type, delivery.timestamp,
                                       delivery.body, self._keys)}
            attempt = await self._post(delivery, headers, now)
            delivery.attempts.append(attempt)
            self.counts["attempts"] += 1
            if duplicate:
                copy = await self._post(delivery, headers, self._clock())
                delivery.attempts.append(Attempt(copy.at_ms, copy.status, copy.error, duplicate=True))
                self.counts["duplicates"] += 1
        if attempt.ok:
            delivery.state = DELIVERED
            self.counts["delivered"] += 1
            return
        self.counts["failed_attempts"] += 1
        retry = retry_due(delivery.tries, self._clock())
        if retry is None:
            delivery.state = FAILED
            self.counts["failed"] += 1
        else:
            self._push(delivery, retry)

    async def _post(self, delivery: Delivery, headers: dict[str, str], now: int) -> Attempt:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(delivery.url, data=delivery.body, headers=headers,
                                          allow_redirects=False) as resp:
                await resp.read()
                return Attempt(now, resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return Attempt(now, None, type(exc).__name__)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stats(self) -> dict[str, int]:
        keys = ("scheduled", "attempts", "delivered", "failed_attempts", "failed", "dropped", "duplicates")
        return {**{k: self.counts[k] for k in keys}, "pending": self.pending}
