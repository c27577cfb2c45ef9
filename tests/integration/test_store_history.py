"""The state store's history reads used by the status page and `flora-watcher events`: real SQLite, and real
PostgreSQL on the session's throwaway cluster (skipped without it, as tests/postgres is)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from watcher.model import Event
from watcher.store import Store
from watcher.store_api import DEAD, Outcome


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        with Store.open(tmp_path / "state.sqlite3") as sqlite:
            yield sqlite
        return
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from watcher.store_pg import BlockingStore, PgStore

    url = request.getfixturevalue("pg_url")
    pg = BlockingStore(lambda: PgStore.open(url))
    try:
        yield pg
    finally:
        pg.close()


def failed(run_id: str, at: int, code: str | None) -> Event:
    return Event(f"evt_{run_id}", "run.failed", at, {"run_id": run_id, "error_code": code})


def test_list_events_failure_counts_and_delivery_counts(store: Any) -> None:
    store.commit_sweep(upserts=(), deletes=(), meta={}, now_ms=100, events=[
        (failed("a", 100, "GPU"), ["ops", "journal"]),
        (failed("b", 200, "GPU"), ["ops"]),
        (failed("c", 300, None), ["ops"]),
        (Event("evt_d", "run.completed", 400, {"run_id": "d"}), ["journal"]),
    ])
    rows = store.list_events()
    assert [e.run_id for _, e in rows] == ["a", "b", "c", "d"]
    seqs = [seq for seq, _ in rows]
    assert seqs == sorted(seqs)
    assert [e.run_id for _, e in store.list_events(limit=2)] == ["c", "d"]
    assert [e.run_id for _, e in store.list_events(after_seq=seqs[1])] == ["c", "d"]
    assert [e.run_id for _, e in store.list_events(since_ms=200, types=["run.failed"])] == ["b", "c"]
    assert store.failure_counts(since_ms=0) == {"GPU": 2, None: 1}
    assert store.failure_counts(since_ms=150) == {"GPU": 1, None: 1}

    (first,) = store.due_deliveries("journal", now_ms=1_000, limit=1)
    store.record_outcomes([Outcome(first.id, "journal", DEAD, 500, status=400, error="nope")])
    assert store.delivery_counts() == {
        "journal": {"pending": 1, "dead": 1},
        "ops": {"pending": 3, "dead": 0},
    }
