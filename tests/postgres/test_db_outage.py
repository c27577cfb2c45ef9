"""A lost database is an outage, not an exit (issue 24, items 2, 3 and 5), with a real PostgreSQL cluster of the
test's own (the tests stop and restart it) and real ``flora-watcher run`` processes.

What used to happen: after ``pg_ctl restart -m fast`` the delivery worker died on "terminating connection due to
administrator command" while everything stayed green; a database outage made every instance exit 1 within
14-25 s; a start with the database down failed after ~11 s with only "pool initialization incomplete"; a
healthy standby was never ready. Waits are bounded by events (a log line, a receiver's count, /readyz), except
where the point is that the daemon outlives the old failure window.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from tests.postgres.cluster import Cluster
from tests.postgres.multi import Fleet, fleet
from tests.reliability.harness import http_get

LIVENESS = 60.0  # real seconds: only a bound for a hung test, never what a healthy run needs
OLD_FAILURE_S = 11.0  # a start with the database down used to give up after this long


# ------------------------------------------------------------------------------------------------ the store


async def test_the_store_gives_the_servers_reason_and_comes_back_by_itself(pg_own_cluster: Cluster) -> None:
    """1. Opening with a wrong password, or against a stopped server, fails with StoreUnavailable and the server's
       reason (not the pool's "initialization incomplete after 10 s").
    2. A store open when the server stops: its calls fail with StoreUnavailable naming the reason.
    3. The server starts again: the same store answers by itself, without being reopened.
    4. ``pg_ctl restart -m fast`` between two calls: the next call simply works (the pool checks a
       connection before handing it out and replaces the one the restart ended)."""
    from watcher.errors import StoreUnavailable
    from watcher.store_pg import PgStore

    pg_own_cluster.add_role("rotated", "old-secret")
    wrong = pg_own_cluster.create_database(owner="rotated", password="new-secret")
    with pytest.raises(StoreUnavailable) as refused:  # a password can be fixed on the server: wait, do not exit
        await PgStore.open(wrong)
    assert "password authentication failed" in str(refused.value) and "secret" not in str(refused.value)

    url = pg_own_cluster.create_database()
    pg_own_cluster.halt()
    with pytest.raises(StoreUnavailable) as opening:
        await PgStore.open(url)
    assert "cannot connect" in str(opening.value) and "No such file or directory" in str(opening.value)
    assert "pool" not in str(opening.value)

    pg_own_cluster.start()
    store = await PgStore.open(url, connect_timeout=2)  # the first call after the stop waits this long
    try:
        await store.set_meta({"k": "1"})
        pg_own_cluster.halt()
        with pytest.raises(StoreUnavailable) as call:
            await store.get_meta("k")
        assert "get_meta failed" in str(call.value) and "No such file or directory" in str(call.value)
        pg_own_cluster.start()

        async def answers() -> bool:
            try:
                return await store.get_meta("k") == "1"
            except StoreUnavailable:
                return False

        deadline = time.monotonic() + LIVENESS
        while not await answers():
            assert time.monotonic() < deadline, "the store did not come back"
            await asyncio.sleep(0.2)

        pg_own_cluster.restart("fast")
        assert await store.get_meta("k") == "1"
    finally:
        await store.aclose()


# ------------------------------------------------------------------------------------------- the daemon


def log_events(f: Fleet, name: str, event: str) -> list[dict]:
    return [e for e in f.instances[name].proc.log_events() if e.get("event") == event]


async def test_a_start_with_the_database_down_waits_for_it_then_runs_and_delivers(pg_own_cluster: Cluster,
                                                                                  tmp_path: Path) -> None:
    """1. The database is down at the start: the daemon starts anyway and outlives the old failure window,
       ``/readyz`` 503 "not ready: starting, state store unreachable: cannot connect: …" with the server's reason.
    2. The database starts: the daemon opens the store, sweeps, is ready, and delivers the runs that end."""
    url = pg_own_cluster.create_database()
    pg_own_cluster.halt()
    async with fleet(tmp_path, url, names=("a",), seed=11, listen="127.0.0.1:0") as f:
        inst = f.instances["a"]
        await inst.proc.start()
        await inst.proc.wait_for_log('"store.unavailable"', timeout=LIVENESS)
        body = await f.not_ready(inst, timeout=LIVENESS)
        assert body.startswith("not ready: starting, state store unreachable: cannot connect: "), body
        assert "No such file or directory" in body, body
        down_since = time.monotonic()
        while time.monotonic() - down_since < OLD_FAILURE_S:  # the point: it outlives the old failure
            inst.assert_alive()
            await asyncio.sleep(0.2)
        pg_own_cluster.start()
        await inst.proc.wait_for_log('"daemon.started"', timeout=LIVENESS)
        assert (await f.ready(inst, timeout=LIVENESS)).startswith("ok: sweeper, ")
        f.create(3, random.Random(11))
        await f.settle(timeout=LIVENESS)
        assert f.transitions_done()
        assert await inst.proc.terminate() == 0
    assert log_events(f, "a", "store.recovered")
    assert not log_events(f, "a", "task.crashed")


async def test_a_fast_restart_of_the_database_does_not_stop_delivery(pg_own_cluster: Cluster,
                                                                     tmp_path: Path) -> None:
    """The issue's case: ``pg_ctl restart -m fast`` under a running daemon (twice). It stays alive, no task dies,
    and runs that end after each restart are delivered; /readyz is 200 again afterwards. (On main before the
    fix the delivery worker died at the first restart and these runs were never delivered.)"""
    url = pg_own_cluster.create_database()
    async with fleet(tmp_path, url, names=("a",), seed=12, listen="127.0.0.1:0") as f:
        inst = f.instances["a"]
        await inst.start()
        await f.ready(inst, timeout=LIVENESS)
        rng = random.Random(12)
        f.create(4, rng)
        await f.settle(timeout=LIVENESS)
        for _ in range(2):
            pg_own_cluster.restart("fast")
            f.create(6, rng)
            await f.settle(timeout=LIVENESS)
            assert f.transitions_done(), "runs ending after the restart were not delivered"
        await f.ready(inst, timeout=LIVENESS)
        assert await inst.proc.terminate() == 0
        verdict = f.verdict()
    assert not verdict.problems, verdict.problems
    assert not log_events(f, "a", "task.crashed")
    assert not log_events(f, "a", "store.failed")


async def test_a_standby_that_heartbeats_and_delivers_is_ready_and_says_its_role(pg_url: str,
                                                                                 tmp_path: Path) -> None:
    """Two instances, one sweeper lease: both answer 200, each naming its role (the standby used to answer 503
    "no successful sweep yet" forever); the status page's JSON says the same."""
    async with fleet(tmp_path, pg_url, names=("a", "b"), seed=13, listen="127.0.0.1:0") as f:
        await f.instances["a"].start()
        first, _ = await f.wait_sweeper(timeout=LIVENESS)
        await f.instances["b"].start()
        other = f.instances["b" if first == "a" else "a"]
        assert (await f.ready(f.instances[first], LIVENESS)).startswith("ok: sweeper, last successful sweep")
        assert (await f.ready(other, LIVENESS)).startswith("ok: standby, lease heartbeat")
        status, body = await http_get(f"{await other.proc.server_url()}/api/v1/status")
        assert status == 200
        ready = json.loads(body)["ready"]
        assert ready["ok"] is True and ready["role"] == "standby"
        for inst in f.instances.values():
            assert await inst.proc.terminate() == 0
