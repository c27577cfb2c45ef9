"""Fault injection against the real `flora-watcher run`: each fault once (docs/reliability.md §2).

API side: 429 storms with and without Retry-After, 5xx bursts, connection resets, responses that stall past the
timeout, truncated / HTML / wrong-shape bodies, camelCase and seconds; a poll_url on a foreign origin and one
that redirects there. Sink side: a receiver that hangs, resets, answers 429 / 500, and 410.
Checks: nothing lost, the request budget held, a 429 paused all API traffic, no Authorization header reached a
foreign origin, and no canary secret appears in any output, file or the state store.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.reliability.harness import budget_excess, max_in_window, pause_violations, read_jsonl
from tests.reliability.rig import rig, wait_until
from watcher.ratelimit import PAUSE_BASE, PAUSE_JITTER

pytestmark = pytest.mark.slow

MAX_RPS = 10.0
NO_RETRY_AFTER_PAUSE = PAUSE_BASE * (1 - PAUSE_JITTER)  # the shortest first pause after a bare 429


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def fired(sim, prefix: str) -> int:
    """How often the simulator injected faults whose counter name starts with ``prefix``."""
    return sum(n for name, n in sim.stats()["faults"].items() if name.startswith(prefix))


def count_429s(requests) -> int:
    return sum(r.status == 429 for r in requests)


async def test_api_faults_lose_nothing_keep_the_budget_and_pause_on_429(tmp_path: Path) -> None:
    async with rig(tmp_path, seed=21, interval=0.1, max_rps=MAX_RPS, timeout=1, concurrency=8) as r:
        # (fault knobs, the simulator's counter prefix to see fire; None = wait for requests)
        phases = [
            (dict(rate_limit_share=0.3, retry_after=2, retry_after_mode="seconds"), "rate_limited"),
            (dict(rate_limit_share=0.3, retry_after=1, retry_after_mode="http-date"), "rate_limited"),
            (dict(error_burst=[4, 2]), "burst_"),
            (dict(reset_share=0.3), "reset"),
            (dict(stall_share=0.3, stall_ms=1500), "stall"),  # past the 1 s timeout
            (dict(malformed_share=0.5), "malformed_"),  # truncated / HTML / wrong shape
            (dict(camel_case=True, seconds_timestamps=True, nulls=True), None),
        ]
        off = dict(rate_limit_share=0, retry_after=1, retry_after_mode="seconds", error_burst=None, reset_share=0,
                   stall_share=0, malformed_share=0, camel_case=False, seconds_timestamps=False, nulls=False)
        for knobs, counter in phases:
            before = fired(r.sim, counter) if counter else len(r.api.requests)
            r.sim.set_faults(**{**off, **knobs})
            r.create(6)
            if counter:
                assert await wait_until(lambda c=counter, b=before: fired(r.sim, c) >= b + 3, 60), knobs
            else:
                assert await wait_until(lambda b=before: len(r.api.requests) >= b + 15, 60), knobs
        # A 429 without Retry-After: one storm, then the API heals; the watcher must hold every request.
        r.sim.set_faults(**{**off, "rate_limit_share": 1.0, "retry_after": None})
        r.create(4)
        assert await wait_until(lambda: count_429s(r.api.requests) > 0 and r.api.requests[-1].status == 429, 60)
        bare_429_at = next(q.at for q in reversed(r.api.requests) if q.status == 429)
        r.sim.set_faults(**off)
        verdict = await r.settle(timeout=60)
        code = await r.proc.terminate()

    assert code == 0
    assert not verdict.problems, verdict.summary()
    assert verdict.delivered == {"journal": len(r.created), "hook": len(r.created)}

    times = [q.at for q in r.api.requests]
    assert budget_excess(times, rate=MAX_RPS, burst=MAX_RPS) <= 0, (
        f"request budget exceeded: {max_in_window(times, 1.0)} requests in one second (max_rps {MAX_RPS:g})")
    two_second_429s = [q for q in r.api.requests if q.status == 429 and q.retry_after == "2"]
    assert two_second_429s
    assert not pause_violations(r.api.requests, pause_s=2.0, select=lambda q: q.retry_after == "2"), (
        "an API request was sent while a 429's Retry-After: 2 was in force")
    after_bare = [q.at - bare_429_at for q in r.api.requests if q.at > bare_429_at + 0.25]
    assert after_bare and min(after_bare) >= NO_RETRY_AFTER_PAUSE - 0.05, (
        f"a 429 without Retry-After must pause all traffic >= {NO_RETRY_AFTER_PAUSE}s; next request after "
        f"{min(after_bare, default=None)}s")

    logs = r.proc.log_events()
    assert not [e for e in logs if e.get("event") == "sweep.crashed"]
    assert any(e.get("event") == "api.rate_limited" for e in logs)
    assert not r.leaks()


class SkippableClock:
    """Real Unix ms plus an offset the test moves: simulated runs end when the test says, not on a timer."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return now_ms() + self.offset_ms


async def test_foreign_poll_urls_and_redirects_never_get_the_key(tmp_path: Path) -> None:
    ids: dict[str, str] = {}
    sim_clock = SkippableClock()

    def bury_two_runs(r) -> None:
        # Two runs active at the first start, then buried under thousands of newer running runs, so the watcher
        # must follow them one by one through their poll_url: one on a foreign origin, one that redirects there.
        # They end only when the test moves the simulator's clock, after the watcher's first sweep saw them
        # active (however long that sweep took on a busy machine).
        t = now_ms()
        (ids["foreign"],) = r.create(1, poll_url=f"{r.foreign.origin}/api/v1/runs/elsewhere", created_at=t - 120_000,
                                     pending_ms=10, running_ms=180_000, outcome="completed")
        (ids["redirect"],) = r.create(1, poll_url=f"{r.api.origin}/api/v1/redirect-out/x", created_at=t - 120_000,
                                      pending_ms=10, running_ms=180_000, outcome="failed")
        r.sim.create_runs(2500, pending_ms=10, running_ms=600_000, created_at=(t - 110_000, t - 40_000))

    async with rig(tmp_path, seed=22, interval=0.2, log_level="debug", prepare=bury_two_runs,
                   sim_clock=sim_clock) as r:
        sim_clock.offset_ms += 61_000  # the two buried runs end now; the 2,500 newer ones run on
        verdict = await r.settle(timeout=60)
        code = await r.proc.terminate()

    assert code == 0
    assert not verdict.problems, verdict.summary()
    assert verdict.delivered == {"journal": 2, "hook": 2}
    assert verdict.foreign_auth == 0
    assert r.foreign.received == [], "the watcher must not send anything to a foreign origin"
    paths = [q.path for q in r.api.requests]
    assert "/api/v1/redirect-out/x" in paths, "the redirecting poll_url was not tried"
    assert any(p.endswith(f"/runs/{ids['foreign']}") for p in paths)
    assert any(p.endswith(f"/runs/{ids['redirect']}") for p in paths)
    logs = r.proc.log_events()
    assert any(e.get("event") == "api.foreign_poll_url" for e in logs)
    assert not r.leaks()


SINK_TIMEOUT = 60.0  # the webhook's: its hung request is held until the test releases it (or this long)


async def test_misbehaving_receivers_lose_nothing_and_delay_no_other_sink(tmp_path: Path) -> None:
    # Each fault once, every one followed by a success (five failures in a row would open the sink's circuit
    # breaker for 30 s, which is the breaker working, not what this test is about).
    script = iter(["hang", "ok", "reset", "ok", 429, "ok", 500, "ok"])
    async with rig(tmp_path, seed=23, interval=0.2, sink_timeout=SINK_TIMEOUT, backoff_initial=0.2,
                   backoff_max=0.5, receiver={"mode": lambda: next(script, "ok"), "hang_s": 2 * SINK_TIMEOUT,
                                              "retry_after": 1}) as r:
        # The webhook's first request hangs, its sink waiting for the answer; the file sink gets the runs that
        # end meanwhile: while that request is still open, not after the webhook's attempt ends. (Ordered by
        # events, not by the clock: the hang lasts until the test releases it, however slow the machine.)
        created = r.create(1, running_ms=(50, 200))
        assert await wait_until(lambda: len(r.hook.received) == 1 and r.hook.hung_open() == 1, 60)
        created += r.create(4, running_ms=(50, 200))
        assert await wait_until(lambda: len(read_jsonl(r.events_file)[0]) == 5 or not r.hook.hung_open(), 90)
        assert len(read_jsonl(r.events_file)[0]) == 5 and r.hook.hung_open() == 1, (
            "the file sink waited for the webhook's hung request")
        r.hook.release_hung()  # the webhook's attempt ends in a reset; it is retried
        verdict = await r.settle(timeout=60)
        assert not verdict.problems, verdict.summary()
        statuses = [q.status for q in r.hook.received]
        assert statuses[:8] == [0, 204, 0, 204, 429, 204, 500, 204], statuses

        # 410 Gone: the sink is disabled, its deliveries become dead letters (kept), the others go on.
        r.hook.mode = 410
        gone = r.create(3, running_ms=(50, 200))
        assert await wait_until(lambda: len(read_jsonl(r.events_file)[0]) == 8, 60)
        deadline = time.monotonic() + 60  # a liveness bound: each look is a `deliveries --failed` process
        while (failed := await r.cli("deliveries", "--failed")).count("hook") < 3:
            assert time.monotonic() < deadline, failed
        status = await r.cli("status")
        assert "410" in status or "disabled" in status.lower(), status
        # Fixed on their side: `replay --failed` re-queues them, and the running daemon sends them.
        r.hook.mode = "ok"
        assert "re-queued" in await r.cli("replay", "--failed")
        verdict = await r.settle(timeout=60)
        code = await r.proc.terminate()
        await r.cli("deliveries")

    assert code == 0
    assert set(created) | set(gone) == set(r.created)
    assert not verdict.problems, verdict.summary()
    assert verdict.delivered == {"journal": 8, "hook": 8}
    assert verdict.duplicates["journal"] == 0
    assert not r.leaks()
