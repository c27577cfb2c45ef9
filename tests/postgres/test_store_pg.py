"""What PostgreSQL adds to the store: migrations under a lock, claims with SKIP LOCKED, the fenced sweeper lease,
instances; and that no password leaks. Against a real throwaway cluster (tests/postgres/fixtures.py)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tests.integration.test_store import T0, make_event, make_tracked  # noqa: E402
from watcher.errors import StoreError  # noqa: E402
from watcher.lease import LeaseLost  # noqa: E402
from watcher.store import AsyncStore  # noqa: E402
from watcher.store_api import DELIVERED, Outcome  # noqa: E402
from watcher.store_pg import CLAIM_MS, NOW_MS, SCHEMA_VERSION, VERSION_TABLE, PgStore, redact_url  # noqa: E402


def sql(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


async def commit(store: PgStore, *run_ids: str, sinks: tuple[str, ...] = ("ops",)) -> list[str]:
    return await store.commit_sweep(upserts=[], deletes=[], events=[(make_event(r), list(sinks)) for r in run_ids],
                                    meta={}, now_ms=T0)


def test_pg_store_has_every_async_store_coroutine_with_the_same_parameters() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {n: inspect.signature(f) for n, f in vars(cls).items()
                if not n.startswith("_") and inspect.iscoroutinefunction(f)}

    sqlite, pg = public(AsyncStore), public(PgStore)
    assert set(sqlite) - set(pg) - {"open"} == set()
    for name in set(sqlite) - {"open"}:
        assert list(sqlite[name].parameters) == list(pg[name].parameters), name


async def test_instances_starting_at_once_migrate_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(PgStore.open(pg_url) for _ in range(4)))
    try:
        assert sql(pg_url, f"SELECT version FROM {VERSION_TABLE}") == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert all(await asyncio.gather(*(s.get_meta("x") for s in stores))) is False
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))


async def test_refuses_a_newer_schema_and_foreign_tables(pg_cluster, pg_url: str) -> None:
    async with await PgStore.open(pg_url):
        pass
    sql(pg_url, f"INSERT INTO {VERSION_TABLE} VALUES (99, 0)")
    with pytest.raises(StoreError, match="newer flora-watcher"):
        await PgStore.open(pg_url)
    other = pg_cluster.create_database()
    sql(other, "CREATE TABLE events (x int)")
    with pytest.raises(StoreError, match="tables named like ours"):
        await PgStore.open(other)


async def test_a_connection_error_names_the_url_without_its_password(tmp_path) -> None:
    url = f"postgresql://flora:hunter2secret@/flora?host={tmp_path}&password=hunter2secret"
    with pytest.raises(StoreError) as info:
        await PgStore.open(url, connect_timeout=1)
    assert "hunter2secret" not in str(info.value) and "cannot connect" in str(info.value)
    assert "hunter2secret" not in redact_url(url)
    assert redact_url("postgresql://u:pw@db:5432/x?sslmode=require") == "postgresql://u:***@db:5432/x?sslmode=require"


async def test_two_instances_never_claim_the_same_delivery(pg_url: str) -> None:
    a, b = await PgStore.open(pg_url, instance_id="a"), await PgStore.open(pg_url, instance_id="b")
    try:
        await a.register_instance(role="standby")
        await b.register_instance(role="standby")
        await commit(a, *(f"run_{i}" for i in range(60)))
        got_a, got_b = await asyncio.gather(a.due_deliveries("ops", T0, 40), b.due_deliveries("ops", T0, 40))
        ids_a, ids_b = {d.id for d in got_a}, {d.id for d in got_b}
        assert not ids_a & ids_b and len(ids_a | ids_b) == 60
        # a claim holds while its instance lives; the claimer itself gets its rows again
        assert {d.id for d in await b.due_deliveries("ops", T0)} == ids_b
        assert {d.id for d in await a.due_deliveries("ops", T0)} == ids_a
        assert await b.next_due_ms("ops") == T0  # its own claims are due
        # a finished delivery frees its claim; b never sees a's sent rows
        await a.record_outcomes([Outcome(d.id, "ops", DELIVERED, T0 + 1) for d in got_a])
        assert {d.id for d in await b.due_deliveries("ops", T0)} == ids_b
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_claims_of_a_dead_instance_are_retried_by_another(pg_url: str) -> None:
    a, b = await PgStore.open(pg_url, instance_id="a"), await PgStore.open(pg_url, instance_id="b")
    try:
        for s in (a, b):
            s.liveness_ms = 10_000
            await s.register_instance(role="standby")
        await commit(a, "run_1", "run_2")
        claimed = await a.due_deliveries("ops", T0)
        assert len(claimed) == 2 and await b.due_deliveries("ops", T0) == []
        # a is killed: no clean unregister; its heartbeat ages past the liveness window
        sql(a._url, "UPDATE instances SET heartbeat_ms = heartbeat_ms - 20000 WHERE id = 'a'")
        again = await b.due_deliveries("ops", T0)
        assert [d.id for d in again] == [d.id for d in claimed]
        assert [d.body for d in again] == [d.body for d in claimed]  # same id, same bytes
        # a claim also ends at its expiry, even for a live instance
        b.claim_ms = -1
        await b.due_deliveries("ops", T0)
        assert len(await a.due_deliveries("ops", T0)) == 2
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_claim_leaves_out_what_the_claimer_holds_and_renews_its_claims_on_it(pg_url: str) -> None:
    a, b = await PgStore.open(pg_url, instance_id="a"), await PgStore.open(pg_url, instance_id="b")
    try:
        for s in (a, b):
            await s.register_instance(role="standby")
        await commit(a, "run_1", "run_2")
        held = await a.due_deliveries("ops", T0)
        # a holds both past their claim (a delivery queued behind a slow receiver): b could take them now
        sql(pg_url, f"UPDATE deliveries SET claim_until_ms = {NOW_MS} - 1")
        await commit(a, "run_3")
        new = await a.due_deliveries("ops", T0, limit=1, exclude=[d.id for d in held])
        assert [d.event_id for d in new] == [make_event("run_3").id]  # only what a does not hold yet
        # the same claim renewed a's claims on what it holds, so b takes none of them
        assert await b.due_deliveries("ops", T0) == []
        until = sql(pg_url, f"SELECT MIN(claim_until_ms) - {NOW_MS} FROM deliveries")[0][0]
        assert until > CLAIM_MS - 60_000
        # a claim still far from its end is not written again
        sql(pg_url, f"UPDATE deliveries SET claim_until_ms = {NOW_MS} + {CLAIM_MS // 2 + 60_000}")
        before = sql(pg_url, "SELECT id, xmin::text FROM deliveries ORDER BY id")
        assert await a.due_deliveries("ops", T0, exclude=[d.id for d in (*held, *new)]) == []
        assert sql(pg_url, "SELECT id, xmin::text FROM deliveries ORDER BY id") == before
    finally:
        await a.aclose()
        await b.aclose()


async def test_one_sweeper_and_a_fenced_out_sweeper_commits_nothing(pg_url: str) -> None:
    a, b = await PgStore.open(pg_url, instance_id="a"), await PgStore.open(pg_url, instance_id="b")
    try:
        fa = await a.acquire_lease("scope", 10_000)
        assert fa is not None and fa.token == 1
        assert await b.acquire_lease("scope", 10_000) is None
        assert (await a.acquire_lease("scope", 10_000)).token == 1  # renewal keeps the token
        assert await commit(a, "run_1") != []
        # a stalls past its lease; b takes over with a higher token
        sql(pg_url, "UPDATE leases SET expires_ms = expires_ms - 20000")
        fb = await b.acquire_lease("scope", 10_000)
        assert fb is not None and fb.token == 2
        with pytest.raises(LeaseLost, match="committed nothing"):
            await a.commit_sweep(upserts=[make_tracked("run_stale")], deletes=[],
                                 events=[(make_event("run_2"), ["ops"])], meta={"last_sweep_ms": "1"}, now_ms=T0)
        assert a.fence is None
        assert await b.load_tracked() == {} and await b.get_meta("last_sweep_ms") is None
        assert await b.events_exist([make_event("run_2").id]) == set()
        assert await a.acquire_lease("scope", 10_000) is None
        assert await commit(b, "run_2") != []
        # a clean stop hands the lease over at once
        await b.unregister_instance()
        assert (await a.acquire_lease("scope", 10_000)).token == 3
    finally:
        await a.aclose()
        await b.aclose()


async def test_summary_lists_instances_and_the_sweeper(pg_url: str) -> None:
    async with await PgStore.open(pg_url, instance_id="host1:42:x") as s:
        await s.register_instance(role="sweeper", version="1.2.3", host="host1", pid=42)
        await s.acquire_lease("api|all", 10_000)
        summary = await s.summary()
        (inst,) = summary["instances"]
        assert (inst["id"], inst["host"], inst["pid"], inst["role"], inst["alive"]) == (
            "host1:42:x", "host1", 42, "sweeper", True)
        (lease,) = summary["sweepers"]
        assert (lease["scope"], lease["holder"], lease["token"], lease["valid"]) == ("api|all", "host1:42:x", 1, True)
        assert summary["backend"] == "postgresql" and summary["path"] == s.path


async def test_a_sweep_commit_claims_what_it_hands_over_and_a_takeover_claims_it_again(pg_url: str) -> None:
    """commit_and_claim: the deliveries it hands to the sweeper's own workers are claimed for it in the commit, so
    a standby never sends them while the sweeper lives; the rest (over the limit, or behind an earlier pending
    delivery of the run) is anyone's; a sweeper that dies with them in hand leaves them to the others; a sweeper
    fenced out commits and claims nothing."""
    a, b = await PgStore.open(pg_url, instance_id="a"), await PgStore.open(pg_url, instance_id="b")
    try:
        for s in (a, b):
            s.liveness_ms = 10_000
            await s.register_instance(role="standby")
        assert await a.acquire_lease("scope", 10_000) is not None
        await commit(a, "run_0")  # an earlier event of run_0, pending: run_0's next one waits behind it
        first = await b.due_deliveries("ops", T0)
        events = [make_event(r, "run.completed") for r in ("run_0", "run_1", "run_2", "run_3")]
        done = await a.commit_and_claim(upserts=[], deletes=[], events=[(e, ["ops", "journal"]) for e in events],
                                        meta={}, now_ms=T0, take={"ops": 2, "journal": 0})
        assert done.new_ids == [e.id for e in events]
        assert [d.event_id for d in done.claimed] == [events[1].id, events[2].id]
        assert [d.body for d in done.claimed] == [e.body() for e in events[1:3]]  # the stored bytes
        assert done.left == {"ops": 1, "journal": 4} and done.behind == {"ops": ["run_0"]}
        # b (a standby) gets only what a did not take: run_3's; run_0's waits behind the one b holds
        assert [d.event_id for d in await b.due_deliveries("ops", T0, exclude=[d.id for d in first])] == [
            events[3].id]
        # a dies with its two in hand: once its heartbeat is stale, b claims them again (same bytes)
        sql(pg_url, "UPDATE instances SET heartbeat_ms = heartbeat_ms - 20000 WHERE id = 'a'")
        again = await b.due_deliveries("ops", T0, exclude=[d.id for d in first])
        assert {d.id for d in done.claimed} <= {d.id for d in again}
        assert {d.body for d in again if d.id in {c.id for c in done.claimed}} == {d.body for d in done.claimed}
        # a fenced-out sweeper commits nothing and claims nothing
        sql(pg_url, "UPDATE leases SET expires_ms = expires_ms - 20000")
        assert await b.acquire_lease("scope", 10_000) is not None
        with pytest.raises(LeaseLost):
            await a.commit_and_claim(upserts=[], deletes=[], events=[(make_event("run_9"), ["ops"])], meta={},
                                     now_ms=T0, take={"ops": 10})
        assert await b.events_exist([make_event("run_9").id]) == set()
    finally:
        await a.aclose()
        await b.aclose()
