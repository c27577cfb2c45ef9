"""Two real `flora-watcher run` processes on one PostgreSQL database: one sweeps, both deliver; kill -9 of either
loses nothing and sends each transition under one webhook-id; the API sees one sweeper's requests.

Bounded by events (log lines, the lease row, the receiver's count) with generous timeouts, never by wall time:
how soon a standby takes over is the lease's timing (``tick_seconds``, the store's expiry), tested on its own."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tests.postgres.multi import fleet

pytestmark = pytest.mark.slow


async def test_kill_9_of_the_sweeper_and_the_other_loses_nothing_and_takes_over(tmp_path: Path, pg_url: str) -> None:
    rng = random.Random(7)
    async with fleet(tmp_path, pg_url, lease=2.0, interval=0.2, listen="127.0.0.1:0") as f:
        a, b = f.instances["a"], f.instances["b"]
        await a.start()
        await a.proc.wait_for_log('"sweeper.lease_acquired"')
        await a.proc.wait_for_log('"sweep.finished"')

        # API cost: the second instance adds no requests. With both running, a sweeps three more times; b, the
        # standby, made no request to the API at all (its own /metrics count), so the API sees one sweeper.
        await b.start()
        await a.wait_for_sweeps(3)
        assert f.sweeper()[0] == "a"
        assert (await a.api_requests()).get("list", 0) > 0
        assert await b.api_requests() == {}

        # kill -9 the sweeper and the other, alternately, while runs finish
        takeovers = []
        for round_no in range(3):
            f.create(12, rng)
            await asyncio.sleep(rng.uniform(0.3, 0.8))  # kill at a random point of the runs' progress
            sweeper, _, _ = f.sweeper()
            victim = f.instances[sweeper] if round_no % 2 == 0 else (b if sweeper == "a" else a)
            await victim.kill()
            if victim.name == sweeper:
                # the other takes over once the lease runs out (lease + one tick; the lease's own tests pin the
                # timing): here only that it happens, bounded by a generous timeout, and how long it took
                _, waited = await f.wait_sweeper(other_than=victim.name, timeout=60)
                takeovers.append(round(waited, 2))
            await victim.start()
        f.create(12, rng)
        await f.settle(timeout=60)
        verdict = f.verdict()
        assert verdict.problems == [], verdict.summary()
        assert verdict.delivered["hook"] == verdict.expected == len(f.created)
        assert len(takeovers) == 2
        print(f"takeovers after a kill -9 of the sweeper (lease {f.lease:g} s): {takeovers} s")
        for inst in f.instances.values():
            assert await inst.proc.terminate() == 0


def test_a_duplicate_is_explained_only_by_a_kill_of_the_first_sender_around_its_send() -> None:
    from types import SimpleNamespace

    from tests.postgres.multi import unexplained_duplicates

    def got(at: float, who: str, event_id: str) -> SimpleNamespace:
        return SimpleNamespace(at=at, path=f"/hooks/{who}", headers={"webhook-id": event_id})

    hook = SimpleNamespace(accepted=lambda: [
        got(10.0, "a", "evt_1"), got(14.0, "b", "evt_1"),  # a killed 1 s after: the send in flight
        got(20.5, "a", "evt_2"), got(24.0, "b", "evt_2"),  # read after a's kill at 20.0, before its restart
        got(30.0, "b", "evt_3"), got(31.0, "a", "evt_3"),  # b was never killed: unexplained
        got(42.0, "a", "evt_4"), got(45.0, "b", "evt_4"),  # a restarted at 41 after its kill at 40: unexplained
        got(50.0, "a", "evt_5"),  # once: fine
    ])
    found = unexplained_duplicates(hook, {"a": [11.0, 20.0, 40.0], "b": []},  # type: ignore[arg-type]
                                   starts={"a": [0.0, 12.0, 21.0, 41.0], "b": [0.0]})
    assert [f.split()[0] for f in found] == ["evt_3", "evt_4"]
    assert "b@30.00, a@31.00" in found[0]
    # b logged a retry of evt_3: its attempt failed as it saw it, so a's copy is the promised re-send
    found = unexplained_duplicates(hook, {"a": [11.0, 20.0, 40.0], "b": []},  # type: ignore[arg-type]
                                   starts={"a": [0.0, 12.0, 21.0, 41.0], "b": [0.0]},
                                   retried=lambda who, event_id: (who, event_id) == ("b", "evt_3"))
    assert [f.split()[0] for f in found] == ["evt_4"]
