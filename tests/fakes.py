"""Test doubles shared across the suite."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from watcher.observer import Observer, Report, State

T = TypeVar("T")


class FakeClock:
    """A ``watcher.clock.Clock`` whose time moves only when slept on or advanced; every sleep is recorded.

    ``t`` is the monotonic reading in seconds; ``now_ms()`` is ``epoch_ms + t`` in milliseconds.

    Two ways for time to pass:
    - default (``manual=False``): a ``sleep(s)`` moves time forward by ``s`` at once and returns, so code that
      sleeps runs straight through (a 60 s Retry-After costs nothing).
    - ``manual=True``: a ``sleep(s)`` blocks until the test moves time past its deadline with ``advance()``;
      nothing else moves time. Use it for loops that would otherwise spin (the daemon's sweep loop, the
      dispatcher's workers) and step them from the test.

    ``wait_for(aw, s)``: in the default mode its deadline is a sleep too (time jumps to it unless ``aw`` is
    ready at once: what an idle sink worker wants, so time goes straight to its next due delivery). With
    ``deadlines_jump=False`` (for a deadline on real I/O, e.g. a request timeout) and in manual mode a deadline
    never moves time itself: it passes when a sleep or ``advance()`` moves time past it.
    """

    def __init__(self, start: float = 1000.0, *, epoch_ms: int = 1_764_399_000_000, manual: bool = False,
                 deadlines_jump: bool = True) -> None:
        self.t = start
        self.epoch_ms = epoch_ms
        self.manual = manual
        self.deadlines_jump = deadlines_jump and not manual
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None  # called with the new time after each sleep (auto)
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return self.epoch_ms + int(self.t * 1000)

    def set_now_ms(self, now_ms: int) -> None:
        """Move wall-clock time to ``now_ms`` without moving the monotonic reading."""
        self.epoch_ms = now_ms - int(self.t * 1000)

    def monotonic(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        """Move time forward; in manual mode, wake every sleep whose deadline has come."""
        self.t += max(0.0, seconds)
        while self._timers and self._timers[0][0] <= self.t:
            _, _, fut = heapq.heappop(self._timers)
            if not fut.done():
                fut.set_result(None)

    @property
    def waiting(self) -> int:
        """Sleeps (manual mode) blocked until time moves on."""
        return sum(1 for _, _, fut in self._timers if not fut.done())

    def next_deadline(self) -> float | None:
        """The earliest deadline of a blocked sleep (manual mode), None when nothing sleeps."""
        live = [deadline for deadline, _, fut in self._timers if not fut.done()]
        return min(live, default=None)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if not self.manual:
            self.advance(seconds)
            if self.on_sleep is not None:
                self.on_sleep(self.t)
            await asyncio.sleep(0)
            return
        timer = self._timer(seconds)
        try:
            if timer.done():
                await asyncio.sleep(0)  # a zero sleep still lets other tasks run
            await timer
        finally:
            timer.cancel()  # a cancelled sleeper leaves no live timer behind

    def _timer(self, seconds: float) -> asyncio.Future[None]:
        """A future that completes once time reaches now + ``seconds``: the deadline is fixed here, when the
        wait is asked for, not when some task gets round to it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline = self.t + max(0.0, seconds)
        if deadline <= self.t:
            fut.set_result(None)
        else:
            heapq.heappush(self._timers, (deadline, next(self._seq), fut))
        return fut

    async def wait_for(self, aw: Awaitable[T], seconds: float | None) -> T:
        """``aw``, or TimeoutError (``aw`` cancelled) once the clock reaches now + ``seconds``."""
        if seconds is None:
            return await aw
        timer = asyncio.ensure_future(self.sleep(seconds)) if self.deadlines_jump else self._timer(seconds)
        task = asyncio.ensure_future(aw)
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            timer.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if task.cancelled():
            raise TimeoutError
        return task.result()


async def until(predicate: Callable[[], object], what: str, *, timeout: float = 20.0) -> None:
    """Wait for something another task does (a request reaching a receiver, a line in a file).

    ``timeout`` is real seconds and only a liveness bound: a healthy run meets the condition long before, and
    nothing asserted depends on how long it took.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.005)


async def advance_until(clock: FakeClock, predicate: Callable[[], object], what: str, *, step: float,
                        limit: float, timeout: float = 20.0) -> None:
    """Manual clock: let the program run, moving time forward by ``step`` whenever the program waits on the
    clock, until ``predicate()`` holds. Fails when more than ``limit`` seconds of clock time were needed (a real
    bug, not a slow machine: clock time moves only here) or after ``timeout`` real seconds (liveness)."""
    start = clock.t
    deadline = time.monotonic() + timeout
    while not predicate():
        if clock.t - start > limit:
            raise AssertionError(f"{what}: not within {limit:g}s of clock time")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s (real) waiting for {what}")
        await asyncio.sleep(0.005)
        if clock.waiting:
            clock.advance(step)


class Recorder(Observer):
    """A daemon observer that keeps everything it is told: ``reports`` (one per sweep), ``states`` and
    ``deliveries``; ``await recorder.sweeps(n)`` waits for the n-th sweep."""

    def __init__(self) -> None:
        self.reports: list[Report] = []
        self.states: list[State] = []
        self.deliveries: list[tuple[str, str]] = []

    def on_sweep(self, report: Report) -> None:
        self.reports.append(report)

    def on_state(self, state: State, report: Report) -> None:
        self.states.append(state)

    def on_delivery(self, sink: str, outcome: str) -> None:
        self.deliveries.append((sink, outcome))

    async def sweeps(self, count: int, *, timeout: float = 20.0) -> Report:
        await until(lambda: len(self.reports) >= count, f"sweep #{count}", timeout=timeout)
        return self.reports[count - 1]


class FlakyStore:
    """A state store that is away on demand, as a database that is restarting would be: while ``down`` every
    coroutine of it (and, any time, those named in ``failing``) raises ``StoreUnavailable`` without touching
    the wrapped store; otherwise the wrapped store answers. ``failures`` counts the calls refused."""

    def __init__(self, inner, reason: str = "connection refused") -> None:
        self.inner = inner
        self.reason = reason
        self.down = False
        self.failing: set[str] = set()
        self.failures = 0
        self.error: type[Exception] | None = None  # raise this instead (a StoreError no wait can cure)

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if not asyncio.iscoroutinefunction(attr) or name == "aclose":
            return attr

        async def call(*args, **kwargs):
            if self.down or name in self.failing:
                from watcher.errors import StoreUnavailable

                self.failures += 1
                raise (self.error or StoreUnavailable)(f"state store {self.inner.path}: {name} failed: {self.reason}")
            return await attr(*args, **kwargs)

        return call
