"""Recorded FLORA callbacks in the state store, on both back ends: once per delivery id, durable, done once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.store import Store
from watcher.store_api import RecordedCallback

T0 = 1_764_400_000_000
DAY = 24 * 3600 * 1000


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store.open(tmp_path / "state.sqlite3")
    else:
        from watcher.store_pg import BlockingStore, PgStore

        url = request.getfixturevalue("pg_url")
        s = BlockingStore(lambda: PgStore.open(url))  # type: ignore[assignment]
    yield s
    s.close()


def cb(n: int, received_ms: int = T0, **kw) -> RecordedCallback:
    fields = {"run_id": f"run_{n}", "type": "run.completed", "run_type": "technique", "workspace_id": "ws_1"} | kw
    return RecordedCallback(delivery_id=f"whd_{n:04d}", received_ms=received_ms, **fields)


def test_a_delivery_id_is_recorded_once(store: Store) -> None:
    assert store.record_callbacks([cb(1)]) == [True]
    assert store.record_callbacks([cb(1, received_ms=T0 + 60_000)]) == [False]  # FLORA's retry, or a replay
    assert store.pending_callbacks() == [cb(1)]


def test_pending_callbacks_oldest_first_without_those_in_hand_and_done_once(store: Store) -> None:
    for n, at in ((3, T0 + 2), (1, T0), (2, T0 + 1)):
        store.record_callbacks([cb(n, received_ms=at, run_type=None, workspace_id=None)])
    assert [c.delivery_id for c in store.pending_callbacks()] == ["whd_0001", "whd_0002", "whd_0003"]
    assert [c.delivery_id for c in store.pending_callbacks(limit=1, exclude=["whd_0001"])] == ["whd_0002"]
    assert store.pending_callbacks()[0].run_type is None
    store.finish_callbacks([("whd_0001", "confirmed"), ("whd_0003", "unlisted")], now_ms=T0 + 5)
    assert [c.delivery_id for c in store.pending_callbacks()] == ["whd_0002"]
    assert store.record_callbacks([cb(1)]) == [False]  # done: still a replay
    counts = store.callback_counts(since_ms=T0)
    assert counts == {"by_outcome": {"confirmed": 1, "pending": 1, "unlisted": 1}, "last_received_ms": T0 + 2}
    assert store.callback_counts(since_ms=T0 + 2)["by_outcome"] == {"unlisted": 1}


def test_recorded_callbacks_are_pruned_with_the_delivered_history(store: Store) -> None:
    store.record_callbacks([cb(1, received_ms=T0)])
    store.record_callbacks([cb(2, received_ms=T0 + 8 * DAY)])
    store.finish_callbacks([("whd_0001", "confirmed")], now_ms=T0)
    assert store.prune(now_ms=T0 + 9 * DAY, keep_done_ms=7 * DAY) == 1
    assert [c.delivery_id for c in store.pending_callbacks()] == ["whd_0002"]
    assert store.callback_counts(since_ms=0)["by_outcome"] == {"pending": 1}


def test_an_empty_store_has_no_callbacks(store: Store) -> None:
    assert store.pending_callbacks() == []
    assert store.callback_counts(since_ms=0) == {"by_outcome": {}, "last_received_ms": None}
    store.finish_callbacks([], now_ms=T0)


def test_many_in_one_transaction_each_with_its_own_answer(store: Store) -> None:
    store.record_callbacks([cb(1)])
    assert store.record_callbacks([cb(2), cb(1), cb(3), cb(2)]) == [True, False, True, False]
    assert [c.delivery_id for c in store.pending_callbacks()] == ["whd_0001", "whd_0002", "whd_0003"]
    assert store.record_callbacks([]) == []
