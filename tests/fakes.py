"""Test doubles shared across the suite."""

from __future__ import annotations

import asyncio


class FakeClock:
    """A ``watcher.clock.Clock`` whose time moves only when slept on or advanced; every sleep is recorded.

    ``t`` is the monotonic reading in seconds; ``now_ms()`` is ``epoch_ms + t`` in milliseconds.
    """

    def __init__(self, start: float = 1000.0, *, epoch_ms: int = 1_764_399_000_000) -> None:
        self.t = start
        self.epoch_ms = epoch_ms
        self.sleeps: list[float] = []

    def now_ms(self) -> int:
        return self.epoch_ms + int(self.t * 1000)

    def set_now_ms(self, now_ms: int) -> None:
        """Move wall-clock time to ``now_ms`` without moving the monotonic reading."""
        self.epoch_ms = now_ms - int(self.t * 1000)

    def monotonic(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)
