"""The one place that reads time. Pure code takes ``now_ms`` as an argument; shells take a ``Clock``.

A shell never calls ``asyncio.sleep`` or ``asyncio.wait_for(..., timeout)`` for a wait that belongs to the
program's own cadence (the sweep interval, a delivery's next attempt, a retry's backoff): it asks its clock, so a
test drives every such wait with a fake clock (``tests/fakes.py``) and never waits out real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now_ms(self) -> int: ...
    def monotonic(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...

    async def wait_for(self, aw: Awaitable[T], seconds: float | None) -> T:
        """``asyncio.wait_for`` on this clock: ``aw``'s result, or TimeoutError (``aw`` cancelled) once
        ``seconds`` of this clock's time passed. ``None`` waits without a limit."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait_for(self, aw: Awaitable[T], seconds: float | None) -> T:
        return await asyncio.wait_for(aw, None if seconds is None else max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()
