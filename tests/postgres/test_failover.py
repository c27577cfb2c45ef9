"""Two real `flora-watcher run` processes on one PostgreSQL database: one sweeps, both deliver; kill -9 of either
loses nothing and sends each transition under one webhook-id; the API sees one sweeper's requests."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tests.postgres.multi import fleet

pytestmark = pytest.mark.slow


async def test_kill_9_of_the_sweeper_and_the_other_loses_nothing_and_takes_over_within_the_lease(
    tmp_path: Path, pg_url: str
) -> None:
    rng = random.Random(7)
    async with fleet(tmp_path, pg_url, lease=2.0, interval=0.2) as f:
        a, b = f.instances["a"], f.instances["b"]
        await a.start()
        await a.proc.wait_for_log('"sweeper.lease_acquired"')
        await a.proc.wait_for_log('"sweep.finished"')

        # API cost: one instance alone, then two for as long: the second adds no list requests
        window = 2.0
        before = f.list_requests()
        await asyncio.sleep(window)
        alone = f.list_requests() - before
        await b.start()
        before = f.list_requests()
        await asyncio.sleep(window)
        both = f.list_requests() - before
        assert both <= alone * 1.4 + 2, (alone, both)
        assert f.sweeper()[0] == "a"

        # kill -9 the sweeper and the other, alternately, while runs finish
        takeovers = []
        for round_no in range(3):
            f.create(12, rng)
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            sweeper, _, _ = f.sweeper()
            victim = f.instances[sweeper] if round_no % 2 == 0 else (b if sweeper == "a" else a)
            await victim.kill()
            if victim.name == sweeper:
                _, waited = await f.wait_sweeper(other_than=victim.name, timeout=f.lease * 4)
                takeovers.append(waited)
            await victim.start()
        f.create(12, rng)
        await f.settle(timeout=60)
        verdict = f.verdict()
        assert verdict.problems == [], verdict.summary()
        assert verdict.delivered["hook"] == verdict.expected == len(f.created)
        # takeover within lease + one interval (plus the time to notice it here)
        assert max(takeovers) <= f.lease + f.interval + 0.5, takeovers
        print(f"list requests in {window:g}s: one instance {alone}, two {both}; takeovers {takeovers}")
        for inst in f.instances.values():
            assert await inst.proc.terminate() == 0
