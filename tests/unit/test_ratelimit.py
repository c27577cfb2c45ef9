"""ratelimit.py: the token bucket arithmetic (pure) and the limiter driven by a fake clock."""

from __future__ import annotations

import pytest

from tests.fakes import FakeClock
from watcher.ratelimit import (
    PAUSE_BASE,
    PAUSE_CAP,
    BucketState,
    RateLimiter,
    full_bucket,
    rate_limit_pause,
    refund,
    reserve,
)

# ------------------------------------------------------------------------------------------ pure maths


def test_a_full_bucket_allows_a_burst_then_queues_callers_at_the_rate() -> None:
    state = full_bucket(5.0, now=0.0)
    waits = []
    for _ in range(10):  # ten callers at the same instant
        state, wait = reserve(state, 0.0, rate=5.0, burst=5.0)
        waits.append(round(wait, 6))
    assert waits == [0, 0, 0, 0, 0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_tokens_refill_with_time_up_to_the_burst() -> None:
    state = BucketState(tokens=0.0, updated=0.0)
    state, wait = reserve(state, 0.5, rate=4.0, burst=4.0)  # 2 tokens refilled, 1 taken
    assert wait == 0 and state.tokens == pytest.approx(1.0)
    state, _ = reserve(state, 100.0, rate=4.0, burst=4.0)  # long idle: capped at burst
    assert state.tokens == pytest.approx(3.0)


def test_a_clock_going_backwards_adds_no_tokens() -> None:
    state = BucketState(tokens=0.0, updated=10.0)
    state, wait = reserve(state, 5.0, rate=1.0, burst=1.0)
    assert wait == pytest.approx(1.0) and state.updated == 10.0


def test_refund_gives_a_token_back_but_never_beyond_the_burst() -> None:
    assert refund(BucketState(-2.0, 0.0), burst=3.0).tokens == -1.0
    assert refund(BucketState(3.0, 0.0), burst=3.0).tokens == 3.0


def test_rate_limit_pause_honours_retry_after_up_to_the_cap() -> None:
    assert rate_limit_pause(1, 7.0, 0.5, retry_after_cap=60) == 7.0
    assert rate_limit_pause(1, 600.0, 0.5, retry_after_cap=60) == 60.0
    assert rate_limit_pause(4, 0.0, 0.5, retry_after_cap=60) == 0.0


def test_rate_limit_pause_without_retry_after_doubles_from_5s_to_30s() -> None:
    ceilings = [rate_limit_pause(n, None, 0.0, retry_after_cap=60) for n in range(1, 7)]
    assert ceilings == [PAUSE_BASE, 10.0, 20.0, PAUSE_CAP, PAUSE_CAP, PAUSE_CAP]
    jittered = rate_limit_pause(1, None, 0.999, retry_after_cap=60)
    assert 0.75 * PAUSE_BASE <= jittered < PAUSE_BASE


# ------------------------------------------------------------------------------------------ the limiter


async def test_sequential_requests_are_spaced_at_max_rps_after_the_burst() -> None:
    clock = FakeClock(1000.0, epoch_ms=1_764_000_000_000)
    limiter = RateLimiter(2.0, clock)
    sent_at = []
    for _ in range(6):
        await limiter.acquire()
        sent_at.append(clock.monotonic() - 1000.0)
    assert sent_at == pytest.approx([0, 0, 0.5, 1.0, 1.5, 2.0])


async def test_fractional_rate_still_allows_one_request() -> None:
    clock = FakeClock(1000.0, epoch_ms=1_764_000_000_000)
    limiter = RateLimiter(0.5, clock)
    await limiter.acquire()
    await limiter.acquire()
    assert clock.sleeps == [pytest.approx(2.0)]


async def test_zero_rate_means_no_throttling() -> None:
    clock = FakeClock(1000.0, epoch_ms=1_764_000_000_000)
    limiter = RateLimiter(0, clock)
    for _ in range(50):
        await limiter.acquire()
    assert clock.sleeps == []


async def test_a_pause_holds_the_next_request_until_it_expires() -> None:
    clock = FakeClock(1000.0, epoch_ms=1_764_000_000_000)
    limiter = RateLimiter(5.0, clock)
    assert limiter.on_rate_limited(3.0, rand=0.0, retry_after_cap=60) == 3.0
    waited = await limiter.acquire()
    assert waited.paused == pytest.approx(3.0) and waited.throttled == 0
    assert clock.sleeps == [pytest.approx(3.0)]


async def test_429s_while_already_paused_do_not_escalate() -> None:
    clock = FakeClock(1000.0, epoch_ms=1_764_000_000_000)
    limiter = RateLimiter(5.0, clock)
    first = limiter.on_rate_limited(None, rand=0.0, retry_after_cap=60)
    again = limiter.on_rate_limited(
        None, rand=0.0, retry_after_cap=60
    )  # a request in flight before the pause
    assert first == PAUSE_BASE and again == pytest.approx(PAUSE_BASE) and limiter.strikes == 1
    await limiter.acquire()
    assert limiter.on_rate_limited(None, rand=0.0, retry_after_cap=60) == 2 * PAUSE_BASE
    limiter.on_success()
    await limiter.acquire()
    assert limiter.on_rate_limited(None, rand=0.0, retry_after_cap=60) == PAUSE_BASE


async def test_a_pause_that_starts_while_waiting_for_a_token_is_honoured() -> None:
    class PausingClock(FakeClock):
        limiter: RateLimiter

        async def sleep(self, seconds: float) -> None:
            if not self.sleeps:  # a 429 lands while the caller waits for its token
                self.limiter.pause(10.0)
            await super().sleep(seconds)

    clock = PausingClock()
    limiter = RateLimiter(1.0, clock)
    clock.limiter = limiter
    await limiter.acquire()  # the burst token
    start = clock.monotonic()
    waited = await limiter.acquire()
    assert clock.monotonic() - start >= 10.0
    assert waited.throttled == pytest.approx(1.0) and waited.paused > 0
