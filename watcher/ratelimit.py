"""The request budget towards the FLORA API: a token bucket plus a global pause.

Every API request — first attempts and retries alike — calls ``RateLimiter.acquire()`` before it is sent.
It waits while a global pause is in force (a 429 pauses *every* request until it expires, not just the one
that got it) and then for a token from the bucket (rate ``max_rps``, burst ``max(1, max_rps)``).

The arithmetic (``reserve``, ``refund``, ``rate_limit_pause``) is pure and unit-tested without an event
loop; ``RateLimiter`` only reads the injected ``Clock`` and sleeps on it, so tests drive it with a fake one.
"""

from __future__ import annotations

from dataclasses import dataclass

from watcher.clock import Clock

PAUSE_BASE = 5.0  # first pause after a 429 without Retry-After, seconds (FLORA's docs sample)
PAUSE_CAP = 30.0  # largest such pause, seconds
PAUSE_JITTER = 0.25  # up to this share is taken off each pause, so clients do not return in lockstep


@dataclass(frozen=True, slots=True)
class BucketState:
    """Tokens available at monotonic time ``updated``. Negative tokens are reservations not yet due."""

    tokens: float
    updated: float


def full_bucket(burst: float, now: float) -> BucketState:
    return BucketState(tokens=burst, updated=now)


def reserve(state: BucketState, now: float, *, rate: float, burst: float) -> tuple[BucketState, float]:
    """Take one token at ``now``; returns the new state and how long the caller must wait for it.

    Tokens refill at ``rate`` per second up to ``burst``. Taking from an empty bucket reserves a future
    token (the balance goes negative), so concurrent callers queue fairly at exactly ``rate``.
    """
    elapsed = max(0.0, now - state.updated)
    tokens = min(burst, state.tokens + elapsed * rate) - 1.0
    wait = 0.0 if tokens >= 0 else -tokens / rate
    return BucketState(tokens=tokens, updated=max(now, state.updated)), wait


def refund(state: BucketState, *, burst: float) -> BucketState:
    """Give back a reserved token that was not used (its caller was paused or cancelled)."""
    return BucketState(tokens=min(burst, state.tokens + 1.0), updated=state.updated)


def rate_limit_pause(
    strikes: int,
    retry_after: float | None,
    rand: float,
    *,
    retry_after_cap: float,
    base: float = PAUSE_BASE,
    cap: float = PAUSE_CAP,
) -> float:
    """Seconds to pause every request after a 429.

    With a ``Retry-After`` the pause is that value (at most ``retry_after_cap``). Without one it grows
    from ``base`` by doubling per consecutive 429 (``strikes`` counts from 1) up to ``cap``, minus up to
    ``PAUSE_JITTER`` of itself drawn from ``rand`` in [0, 1).
    """
    if retry_after is not None:
        return max(0.0, min(retry_after, retry_after_cap))
    exponent = min(max(strikes - 1, 0), 30)
    ceiling = min(cap, base * 2**exponent)
    return ceiling * (1.0 - PAUSE_JITTER * min(max(rand, 0.0), 1.0))


@dataclass(frozen=True, slots=True)
class Waited:
    """What one ``acquire()`` waited for, in seconds: the global pause and the token bucket."""

    paused: float = 0.0
    throttled: float = 0.0


class RateLimiter:
    """Token bucket + global pause shared by every request of one ``FloraClient``.

    ``max_rps`` ≤ 0 (or None) disables the bucket; the pause still applies.
    """

    def __init__(self, max_rps: float | None, clock: Clock) -> None:
        self._clock = clock
        self._rate = float(max_rps) if max_rps and max_rps > 0 else 0.0
        self._burst = max(1.0, self._rate)
        self._state = full_bucket(self._burst, clock.monotonic())
        self._pause_until = 0.0
        self._strikes = 0

    @property
    def max_rps(self) -> float:
        return self._rate

    @property
    def strikes(self) -> int:
        """Consecutive 429s since the last success."""
        return self._strikes

    def pause_remaining(self) -> float:
        return max(0.0, self._pause_until - self._clock.monotonic())

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` from now (an existing longer pause is kept)."""
        self._pause_until = max(self._pause_until, self._clock.monotonic() + max(0.0, seconds))

    def on_rate_limited(self, retry_after: float | None, *, rand: float, retry_after_cap: float) -> float:
        """Record a 429 and pause everything; returns the pause in seconds.

        A 429 without Retry-After that arrives while a pause is already running (a request that was in
        flight when the first 429 came) does not escalate the backoff.
        """
        remaining = self.pause_remaining()
        if retry_after is None and remaining > 0:
            return remaining
        self._strikes += 1
        seconds = rate_limit_pause(self._strikes, retry_after, rand, retry_after_cap=retry_after_cap)
        self.pause(seconds)
        return seconds

    def on_success(self) -> None:
        """A request succeeded: the next 429 starts the backoff from the beginning again."""
        self._strikes = 0

    async def acquire(self) -> Waited:
        """Wait until a request may be sent: no pause in force and a token available."""
        paused = throttled = 0.0
        while True:
            remaining = self.pause_remaining()
            if remaining > 0:
                await self._clock.sleep(remaining)
                paused += remaining
                continue
            if not self._rate:
                return Waited(paused, throttled)
            self._state, wait = reserve(
                self._state, self._clock.monotonic(), rate=self._rate, burst=self._burst
            )
            if wait <= 0:
                return Waited(paused, throttled)
            try:
                await self._clock.sleep(wait)
            except BaseException:
                self._state = refund(self._state, burst=self._burst)
                raise
            throttled += wait
            if self.pause_remaining() <= 0:
                return Waited(paused, throttled)
            # A 429 arrived while we waited for our token: give it back and wait for the pause.
            self._state = refund(self._state, burst=self._burst)
