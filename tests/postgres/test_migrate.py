"""migrate-state: a SQLite state copied into an empty PostgreSQL schema loses nothing and floods nothing; and the
reverse copy that ``run --dry-run`` decides from."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tests.integration.test_store import T0, make_event, make_tracked
from watcher.errors import StoreError
from watcher.migrate import copy_pg_to_memory, migrate_state
from watcher.store import Store
from watcher.store_pg import PgStore


def seed(path: Path) -> dict:
    with Store.open(path) as s:
        s.commit_sweep(upserts=[make_tracked("run_a"), make_tracked("run_b", "failed")], deletes=[],
                       events=[(make_event("run_b"), ["ops", "journal"]), (make_event("run_c"), ["ops"])],
                       meta={"first_start_ms": str(T0 - 5), "high_watermark_ms:all": str(T0)}, now_ms=T0)
        ops = s.due_deliveries("ops", T0)
        s.mark_delivered(ops[0].id, T0 + 1, 200)
        (journal,) = s.due_deliveries("journal", T0)
        s.mark_dead(journal.id, now_ms=T0 + 2, error="HTTP 400", status=400)
        s.record_sink_result("journal", ok=False, now_ms=T0 + 2, error="HTTP 400")
        return {"tracked": s.load_tracked(), "meta": s.all_meta(), "pending": s.list_deliveries(failed=False),
                "dead": s.list_deliveries(failed=True), "sinks": s.sink_states(),
                "bodies": {e: s.get_event(e) for e in (make_event("run_b").id, make_event("run_c").id)}}


async def test_migrate_copies_everything_into_an_empty_schema_once(tmp_path: Path, pg_url: str) -> None:
    path = tmp_path / "state.sqlite3"
    before = seed(path)
    counts = await migrate_state(path, pg_url)
    assert counts == {"meta": 2, "tracked": 2, "events": 2, "deliveries": 3, "sinks": 1}
    async with await PgStore.open(pg_url) as pg:
        assert await pg.load_tracked() == before["tracked"]
        assert await pg.all_meta() == before["meta"]
        assert await pg.list_deliveries(failed=False) == before["pending"]
        assert await pg.list_deliveries(failed=True) == before["dead"]
        assert await pg.sink_states() == before["sinks"]
        for event_id, event in before["bodies"].items():
            assert await pg.get_event(event_id) == event
        # new deliveries get fresh ids after the copied ones; a re-detected event adds nothing (no flood)
        assert await pg.commit_sweep(upserts=[], deletes=[], events=[(make_event("run_c"), ["ops"])], meta={},
                                     now_ms=T0 + 10) == []
        new = await pg.commit_sweep(upserts=[], deletes=[], events=[(make_event("run_d"), ["ops"])], meta={},
                                    now_ms=T0 + 10)
        assert new == [make_event("run_d").id]
    with pytest.raises(StoreError, match="not empty"):
        await migrate_state(path, pg_url)


async def test_dry_run_copy_of_a_postgres_state(tmp_path: Path, pg_url: str, pg_cluster) -> None:
    path = tmp_path / "state.sqlite3"
    before = seed(path)
    await migrate_state(path, pg_url)
    memory = await copy_pg_to_memory(pg_url)
    try:
        assert memory.load_tracked() == before["tracked"] and memory.all_meta() == before["meta"]
        assert memory.list_deliveries(failed=True) == before["dead"]
    finally:
        memory.close()
    empty = await copy_pg_to_memory(pg_cluster.create_database())
    assert empty.load_tracked() == {}
    empty.close()
