"""The state store against a real SQLite file (tmp_path). No event loop except for the AsyncStore tests."""

from __future__ import annotations

import inspect
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.errors import StoreError
from watcher.model import Event, Output, Run, Technique, TrackedRun, event_id
from watcher.store import SCHEMA_VERSION, AsyncStore, Store, split_statements, store_path
from watcher.store_api import DEAD, DELIVERED, RETRY, Delivery, Outcome, SinkState
from watcher.store_sql import encode_event

T0 = 1_764_400_000_000


# ----------------------------------------------------------------------------------------- helpers


def make_run(run_id: str, status: str = "running", **kw) -> Run:
    return Run(
        run_id=run_id,
        status=status,
        progress=kw.pop("progress", 40.0),
        created_at=kw.pop("created_at", T0 - 10_000),
        workspace_id="ws_1",
        project_id="prj_1",
        technique=Technique("tech_1", "CCTV Cam ✓"),
        outputs=kw.pop("outputs", ()),
        poll_url=f"https://app.flora.ai/api/v1/runs/{run_id}",
        **kw,
    )


def make_tracked(run_id: str, status: str = "running", **kw) -> TrackedRun:
    return TrackedRun(
        run=make_run(run_id, status),
        first_seen_ms=T0,
        last_change_ms=kw.pop("last_change_ms", T0),
        poll_attempt=kw.pop("poll_attempt", 0),
        next_poll_ms=kw.pop("next_poll_ms", None),
    )


def make_event(run_id: str, event_type: str = "run.failed", created_at: int = T0) -> Event:
    run = make_run(run_id, "failed" if event_type == "run.failed" else "completed")
    data = {
        **run.to_dict(),
        "previous_status": "running",
        "late": False,
        "error_message": 'L\'échec — "quoted"',
    }
    return Event(id=event_id(run_id, event_type), type=event_type, created_at=created_at, data=data)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.sqlite3"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, db_path: Path) -> Iterator[Store]:
    """The same tests against both back ends: SQLite, and PostgreSQL (a fresh database on a throwaway cluster)
    driven through its async store from this synchronous test."""
    if request.param == "sqlite":
        s = Store.open(db_path)
    else:
        from watcher.store_pg import BlockingStore, PgStore

        url = request.getfixturevalue("pg_url")
        s = BlockingStore(lambda: PgStore.open(url))
    yield s
    s.close()


def is_integrity_error(exc: BaseException | None) -> bool:
    return any(cls.__name__ == "IntegrityError" for cls in type(exc).__mro__)


def commit_events(store: Store, *pairs: tuple[Event, list[str]], now_ms: int = T0) -> list[str]:
    return store.commit_sweep(upserts=[], deletes=[], events=list(pairs), meta={}, now_ms=now_ms)


def settle(store: Store, delivery: Delivery, state: str, now_ms: int, **fields) -> None:
    """One delivery's outcome, recorded as the dispatcher records it (``record_outcomes``)."""
    store.record_outcomes([Outcome(delivery.id, delivery.sink, state, now_ms, **fields)])


def raw(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the file with a separate plain sqlite3 connection, as another process would."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def count_rows(store: Store, table: str) -> int:
    """Count a table's rows over a separate connection, as another process would."""
    if isinstance(store, Store):
        return raw(Path(store.path), f"SELECT COUNT(*) FROM {table}")[0][0]
    import psycopg

    with psycopg.connect(store.astore._url) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------------------------- open / schema


def test_creates_schema_with_private_file_and_directory(tmp_path: Path) -> None:
    path = store_path(tmp_path / "new" / "dir")
    old_umask = os.umask(0o022)
    try:
        store = Store.open(path)
    finally:
        os.umask(old_umask)
    try:
        store.commit_sweep(upserts=[make_tracked("run_a")], deletes=[], events=[], meta={}, now_ms=T0)
        assert mode_of(path) == 0o600
        assert mode_of(path.parent) == 0o700
        for suffix in ("-wal", "-shm"):
            sidecar = Path(f"{path}{suffix}")
            assert sidecar.exists() and mode_of(sidecar) == 0o600, suffix
        assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert raw(path, "PRAGMA journal_mode") == [("wal",)]
        tables = {r[0] for r in raw(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"meta", "tracked", "events", "deliveries", "sinks"} <= tables
        assert store.integrity_check() == "ok"
    finally:
        store.close()


def test_reopen_keeps_data_and_does_not_migrate_again(db_path: Path) -> None:
    tracked = make_tracked("run_a", next_poll_ms=T0 + 5_000, poll_attempt=3)
    event = make_event("run_b")
    with Store.open(db_path) as store:
        store.commit_sweep(
            upserts=[tracked],
            deletes=[],
            events=[(event, ["ops"])],
            meta={"first_start_ms": str(T0)},
            now_ms=T0,
        )
    with Store.open(db_path) as store:
        assert store.load_tracked() == {"run_a": tracked}
        assert store.get_meta("first_start_ms") == str(T0)
        assert store.get_event(event.id) == event
        assert store.get_event(event.id).data == event.data
        assert store.pending_counts() == {"ops": 1}


def test_refuses_a_file_from_a_newer_version(db_path: Path) -> None:
    Store.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError) as info:
        Store.open(db_path)
    message = str(info.value)
    assert str(db_path) in message
    assert f"was written by a newer flora-watcher (schema {SCHEMA_VERSION + 1}" in message


def test_refuses_a_corrupt_file_naming_it(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"this is not sqlite at all\n" * 200)
    with pytest.raises(StoreError, match="corrupt or not a SQLite database") as info:
        Store.open(db_path)
    assert str(db_path) in str(info.value)


def test_refuses_another_applications_database(db_path: Path) -> None:
    db_path.parent.mkdir()
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="another application"):
        Store.open(db_path)
    assert raw(db_path, "SELECT name FROM sqlite_master") == [("customers",)]  # left untouched


def test_missing_file_without_create_is_an_error(db_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(db_path, create=False)
    assert not db_path.exists()


def test_parent_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    with pytest.raises(StoreError, match="blocker"):
        Store.open(tmp_path / "blocker" / "state.sqlite3")


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions")
def test_unreadable_file_is_a_permission_error(db_path: Path) -> None:
    Store.open(db_path).close()
    db_path.chmod(0o000)
    try:
        with pytest.raises(StoreError, match="permission denied"):
            Store.open(db_path)
    finally:
        db_path.chmod(0o600)


def test_file_without_read_write_access_is_named(db_path: Path, monkeypatch) -> None:
    """Runs as root too (where chmod 000 would not stop us): the access check itself is what we test."""
    Store.open(db_path).close()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == db_path else real_access(p, mode))
    with pytest.raises(StoreError, match="permission denied") as info:
        Store.open(db_path)
    assert str(db_path) in str(info.value)


def test_memory_store_for_tests() -> None:
    with Store.open(":memory:") as store:
        assert commit_events(store, (make_event("run_a"), ["ops"])) == [event_id("run_a", "run.failed")]
        assert store.pending_counts() == {"ops": 1}


def test_closing_while_another_process_writes_neither_waits_nor_fails(db_path: Path) -> None:
    # `flora-watcher deliveries` closing its store while the daemon holds the write lock: PRAGMA optimize
    # (which may write) is skipped instead of waiting out the busy timeout and failing the command.
    with Store.open(db_path) as s:  # enough rows that PRAGMA optimize wants to ANALYZE what the reader used
        commit_events(s, *((make_event(f"run_{i}"), ["ops", "journal"]) for i in range(2_000)))
    reader = Store.open(db_path, busy_timeout_ms=60_000)
    assert len(reader.list_deliveries(failed=False, limit=10)) == 10
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        reader.close()
        assert time.monotonic() - started < 30.0  # not the 60 s busy timeout (the old close waited it out, then failed)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    reader.close()  # twice: fine


def test_a_closed_store_raises_store_error(db_path: Path) -> None:
    store = Store.open(db_path)
    store.close()
    store.close()  # twice is fine
    with pytest.raises(StoreError, match="closed") as info:
        store.get_meta("x")
    assert str(db_path) in str(info.value)


def test_lock_held_beyond_busy_timeout_is_a_store_error(db_path: Path) -> None:
    with Store.open(db_path, busy_timeout_ms=50) as store:
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="locked"):
                store.set_meta({"k": "v"})
        finally:
            other.execute("ROLLBACK")
            other.close()
        store.set_meta({"k": "v"})
        assert store.get_meta("k") == "v"


def test_split_statements_keeps_semicolons_inside_literals() -> None:
    script = "CREATE TABLE a(x);\nINSERT INTO a VALUES ('x;y');\n  -- done\n"
    assert split_statements(script) == ["CREATE TABLE a(x);", "INSERT INTO a VALUES ('x;y');"]


# ----------------------------------------------------------------------------------- commit_sweep


def test_commit_sweep_writes_everything_and_returns_new_event_ids(store: Store) -> None:
    keep, gone = make_tracked("run_keep"), make_tracked("run_gone")
    store.commit_sweep(upserts=[keep, gone], deletes=[], events=[], meta={}, now_ms=T0)
    updated = make_tracked("run_keep", "failed", last_change_ms=T0 + 1)
    ev = make_event("run_keep")
    new = store.commit_sweep(
        upserts=[updated],
        deletes=["run_gone"],
        events=[(ev, ["ops", "journal", "ops"])],
        meta={"last_sweep_ms": str(T0 + 1)},
        now_ms=T0 + 1,
    )
    assert new == [ev.id]
    assert store.load_tracked() == {"run_keep": updated}
    assert store.get_meta("last_sweep_ms") == str(T0 + 1)
    assert store.pending_counts() == {"journal": 1, "ops": 1}
    (delivery,) = store.due_deliveries("ops", T0 + 1)
    assert (delivery.attempts, delivery.created_ms, delivery.next_attempt_ms) == (0, T0 + 1, T0 + 1)


def test_same_event_twice_is_stored_once_with_one_delivery_per_sink(store: Store) -> None:
    ev = make_event("run_a")
    assert commit_events(store, (ev, ["ops", "journal"])) == [ev.id]
    assert commit_events(store, (ev, ["ops", "journal", "extra"]), now_ms=T0 + 99) == []
    assert store.pending_counts() == {"journal": 1, "ops": 1}
    assert count_rows(store, "events") == 1


def test_a_delivered_event_redetected_after_a_crash_is_not_sent_again(store: Store) -> None:
    ev = make_event("run_a")
    commit_events(store, (ev, ["ops"]))
    (d,) = store.due_deliveries("ops", T0)
    settle(store, d, DELIVERED, T0 + 1, status=200)
    assert commit_events(store, (ev, ["ops"]), now_ms=T0 + 2) == []
    assert store.due_deliveries("ops", T0 + 10) == []


def test_event_without_sinks_is_still_remembered(store: Store) -> None:
    ev = make_event("run_a")
    assert commit_events(store, (ev, [])) == [ev.id]
    assert store.events_exist([ev.id, "evt_unknown"]) == {ev.id}
    assert store.pending_counts() == {}


def test_commit_sweep_is_atomic_when_a_sink_name_is_invalid(store: Store) -> None:
    store.commit_sweep(upserts=[make_tracked("run_old")], deletes=[], events=[], meta={"a": "1"}, now_ms=T0)
    before = (store.load_tracked(), store.all_meta())
    with pytest.raises(TypeError, match="sink name"):
        store.commit_sweep(
            upserts=[make_tracked("run_new")],
            deletes=["run_old"],
            events=[(make_event("run_x"), ["ops"]), (make_event("run_y"), ["ops", 7])],
            meta={"a": "2"},
            now_ms=T0 + 1,
        )
    assert (store.load_tracked(), store.all_meta()) == before
    assert store.events_exist([event_id("run_x", "run.failed")]) == set()
    assert store.pending_counts() == {}


def test_commit_sweep_is_atomic_when_sqlite_fails_midway(store: Store) -> None:
    broken = Event(id="evt_broken", type="run.failed", created_at=T0, data={"run_id": None})  # NOT NULL
    with pytest.raises(StoreError, match="commit_sweep failed") as info:
        store.commit_sweep(
            upserts=[make_tracked("run_new")],
            deletes=[],
            events=[(make_event("run_x"), ["ops"]), (broken, ["ops"])],
            meta={"last_sweep_ms": "1"},
            now_ms=T0,
        )
    assert store.path in str(info.value)
    assert is_integrity_error(info.value.__cause__)
    assert store.load_tracked() == {}
    assert store.all_meta() == {}
    assert store.pending_counts() == {}
    # the connection is usable afterwards (no transaction left open)
    assert commit_events(store, (make_event("run_x"), ["ops"])) == [event_id("run_x", "run.failed")]


def test_commit_sweep_rolls_back_when_the_events_iterable_raises(store: Store) -> None:
    def events() -> Iterator[tuple[Event, list[str]]]:
        yield make_event("run_x"), ["ops"]
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        store.commit_sweep(
            upserts=[make_tracked("run_a")], deletes=[], events=events(), meta={"k": "v"}, now_ms=T0
        )
    assert store.load_tracked() == {}
    assert store.get_meta("k") is None
    assert store.events_exist([event_id("run_x", "run.failed")]) == set()


def test_event_body_is_the_exact_compact_json_and_round_trips(store: Store) -> None:
    ev = make_event("run_a")
    commit_events(store, (ev, ["ops"]))
    (d,) = store.due_deliveries("ops", T0)
    assert d.body == encode_event(ev)
    assert b'"api_version":"flora-watcher.v1"' in d.body
    assert "échec".encode() in d.body  # UTF-8, not \u escapes
    assert d.event == ev and d.event.data == ev.data
    assert encode_event(d.event) == d.body  # re-encoding a stored event gives the same bytes


def test_tracked_run_with_outputs_round_trips(store: Store) -> None:
    run = make_run(
        "run_a", "completed", outputs=(Output("o1", "imageUrl", "https://m/1.png"),), completed_at=T0
    )
    tracked = TrackedRun(
        run=run, first_seen_ms=T0, last_change_ms=T0 + 5, poll_attempt=2, next_poll_ms=T0 + 9
    )
    store.commit_sweep(upserts=[tracked], deletes=[], events=[], meta={}, now_ms=T0)
    assert store.load_tracked()["run_a"] == tracked


# -------------------------------------------------------------------------------------------- outbox


def test_due_deliveries_are_filtered_by_sink_and_time_and_ordered(store: Store) -> None:
    a, b, c = make_event("run_a"), make_event("run_b"), make_event("run_c")
    commit_events(store, (a, ["ops", "journal"]), now_ms=T0)
    commit_events(store, (b, ["ops"]), now_ms=T0 + 10)
    commit_events(store, (c, ["ops"]), now_ms=T0 + 20)
    da = store.due_deliveries("ops", T0)[0]
    settle(store, da, RETRY, T0 + 1, next_attempt_ms=T0 + 15, error="HTTP 503", status=503)

    assert [d.event_id for d in store.due_deliveries("ops", T0 + 12)] == [b.id]
    assert [d.event_id for d in store.due_deliveries("ops", T0 + 15)] == [b.id, a.id]
    assert [d.event_id for d in store.due_deliveries("ops", T0 + 30)] == [b.id, a.id, c.id]
    assert [d.event_id for d in store.due_deliveries("ops", T0 + 30, limit=1)] == [b.id]
    assert [d.event_id for d in store.due_deliveries("journal", T0 + 30)] == [a.id]
    assert store.due_deliveries("nobody", T0 + 30) == []
    assert store.next_due_ms("ops") == T0 + 10
    assert store.next_due_ms("nobody") is None


def test_due_deliveries_leave_out_what_the_caller_holds_and_keep_run_order(store: Store) -> None:
    a, b, c = make_event("run_a"), make_event("run_b"), make_event("run_c")
    a2 = make_event("run_a", "run.stalled")  # a second event of the same run
    commit_events(store, (a, ["ops"]), (b, ["ops"]), (c, ["ops"]), now_ms=T0)
    commit_events(store, (a2, ["ops"]), now_ms=T0 + 1)
    da, db, dc = store.due_deliveries("ops", T0 + 5)  # a2 waits behind a (same run)
    held = (da.id, db.id)  # the worker holds a and b (in flight)
    # only c is read again, and the limit counts only what the caller does not hold (both back ends alike)
    assert [d.event_id for d in store.due_deliveries("ops", T0 + 5, exclude=held)] == [c.id]
    assert [d.event_id for d in store.due_deliveries("ops", T0 + 5, limit=1, exclude={da.id})] == [b.id]
    # a, still pending while held, keeps a2 back; once delivered, a2 is due
    assert a2.id not in {d.event_id for d in store.due_deliveries("ops", T0 + 5, exclude=(*held, dc.id))}
    settle(store, da, DELIVERED, T0 + 6)
    assert a2.id in {d.event_id for d in store.due_deliveries("ops", T0 + 6, exclude=(db.id, dc.id))}


def test_retry_delivered_and_dead_outcomes_change_state(store: Store) -> None:
    commit_events(store, (make_event("run_a"), ["ops"]), (make_event("run_b"), ["ops"]))
    da, db = store.due_deliveries("ops", T0)

    settle(store, da, RETRY, T0 + 1, next_attempt_ms=T0 + 100, error="timeout")
    (retried,) = [d for d in store.list_deliveries(failed=False) if d.id == da.id]
    assert (retried.state, retried.attempts, retried.next_attempt_ms) == ("pending", 1, T0 + 100)
    assert (retried.last_error, retried.last_attempt_ms) == ("timeout", T0 + 1)

    settle(store, da, DELIVERED, T0 + 100, status=204)
    settle(store, db, DEAD, T0 + 2, error="HTTP 400: bad payload", status=400)
    assert store.pending_counts() == {}
    (dead,) = store.list_deliveries(failed=True)
    assert (dead.event_id, dead.state, dead.attempts, dead.last_status) == (db.event_id, "dead", 1, 400)
    assert (dead.dead_ms, dead.event_type, dead.run_id) == (T0 + 2, "run.failed", "run_b")
    summary = store.summary()["sinks"]["ops"]
    assert (summary["pending"], summary["delivered"], summary["dead"]) == (0, 1, 1)

    # a dead letter is not resurrected by a late retry verdict; unknown ids change nothing
    settle(store, db, RETRY, T0 + 3, next_attempt_ms=T0 + 4, error="x")
    store.record_outcomes([Outcome(424242, "ops", DEAD, T0, error="x")])
    assert store.pending_counts() == {}
    assert store.list_deliveries(failed=True) == [dead]


def test_a_dead_outcome_without_an_attempt_keeps_the_attempt_count(store: Store) -> None:
    commit_events(store, (make_event("run_a"), ["ops"]))
    (d,) = store.due_deliveries("ops", T0)
    settle(store, d, DEAD, T0 + 5, error="expired", attempted=False)
    (row,) = store.list_deliveries(failed=True)
    assert (row.attempts, row.last_attempt_ms, row.last_error) == (0, None, "expired")


def test_long_errors_are_cut(store: Store) -> None:
    commit_events(store, (make_event("run_a"), ["ops"]))
    (d,) = store.due_deliveries("ops", T0)
    settle(store, d, RETRY, T0, next_attempt_ms=T0, error="x" * 50_000, status=500)
    assert len(store.list_deliveries(failed=False)[0].last_error) == 1_000


def test_dead_letter_sink_moves_only_that_sinks_pending(store: Store) -> None:
    commit_events(store, (make_event("run_a"), ["gone", "ops"]), (make_event("run_b"), ["gone"]))
    assert store.dead_letter_sink("gone", now_ms=T0 + 1, reason="sink removed from config") == 2
    assert store.pending_counts() == {"ops": 1}
    dead = store.list_deliveries(failed=True)
    assert {(d.sink, d.last_error) for d in dead} == {("gone", "sink removed from config")}
    assert store.dead_letter_sink("gone", now_ms=T0 + 2, reason="again") == 0


def test_replay_requeues_dead_and_delivered_deliveries(store: Store) -> None:
    a, b = make_event("run_a"), make_event("run_b")
    commit_events(store, (a, ["ops", "journal"]), (b, ["ops"]))
    by_key = {(d.event_id, d.sink): d for s in ("ops", "journal") for d in store.due_deliveries(s, T0)}
    settle(store, by_key[(a.id, "ops")], DEAD, T0 + 1, error="HTTP 400", status=400)
    settle(store, by_key[(a.id, "journal")], DELIVERED, T0 + 1)
    # b/ops stays pending: replay must not touch it

    assert store.replay([a.id, b.id, "evt_unknown"], now_ms=T0 + 50) == 2
    due = store.due_deliveries("ops", T0 + 50)
    assert [(d.event_id, d.attempts, d.next_attempt_ms) for d in due] == [
        (b.id, 0, T0),
        (a.id, 0, T0 + 50),
    ]
    assert [d.event_id for d in store.due_deliveries("journal", T0 + 50)] == [a.id]
    assert store.list_deliveries(failed=True) == []
    assert store.replay([a.id], now_ms=T0 + 60) == 0  # nothing dead or delivered any more


def test_replay_can_target_one_sink(store: Store) -> None:
    a = make_event("run_a")
    commit_events(store, (a, ["ops", "journal"]))
    for sink in ("ops", "journal"):
        (d,) = store.due_deliveries(sink, T0)
        settle(store, d, DELIVERED, T0 + 1)
    assert store.replay([a.id], now_ms=T0 + 2, sink="journal") == 1
    assert store.pending_counts() == {"journal": 1}


def test_replay_failed_requeues_all_dead_letters_and_reenables_the_sink(store: Store) -> None:
    commit_events(store, (make_event("run_a"), ["ops", "journal"]), (make_event("run_b"), ["ops"]))
    for sink in ("ops", "journal"):
        for d in store.due_deliveries(sink, T0):
            settle(store, d, DEAD, T0 + 1, error="HTTP 410", status=410)
    store.set_sink_state("ops", disabled_reason="HTTP 410 Gone", now_ms=T0 + 1)
    store.set_sink_state("other", disabled_reason="HTTP 410 Gone", now_ms=T0 + 1)

    assert store.replay_failed(now_ms=T0 + 5, sink="journal") == 1
    assert store.replay_failed(now_ms=T0 + 5) == 2
    assert store.replay_failed(now_ms=T0 + 6) == 0
    assert store.pending_counts() == {"journal": 1, "ops": 2}
    states = store.sink_states()
    assert not states["ops"].disabled
    assert states["other"].disabled  # nothing of it was replayed


# ---------------------------------------------------------------------------------------- sink state


def test_sink_state_disable_enable_and_health(store: Store) -> None:
    commit_events(store, *((make_event(f"run_{i}"), ["ops"]) for i in range(3)), (make_event("run_f"), ["fresh"]))
    d1, d2, d3 = store.due_deliveries("ops", T0)
    store.set_sink_state("ops", disabled_reason="HTTP 410 Gone", now_ms=T0)
    settle(store, d1, RETRY, T0 + 1, next_attempt_ms=T0 + 60_000, error="HTTP 503", status=503, health=False)
    settle(store, d2, RETRY, T0 + 2, next_attempt_ms=T0 + 60_000, error="timeout", health=False)
    assert store.sink_states()["ops"] == SinkState(
        name="ops",
        disabled_reason="HTTP 410 Gone",
        disabled_ms=T0,
        last_success_ms=None,
        last_failure_ms=T0 + 2,
        last_error="timeout",
        consecutive_failures=2,
    )
    settle(store, d3, DELIVERED, T0 + 3, status=200, health=True)
    store.set_sink_state("ops", disabled_reason=None, now_ms=T0 + 4)
    state = store.sink_states()["ops"]
    assert (state.disabled, state.disabled_ms, state.last_success_ms, state.consecutive_failures) == (
        False,
        None,
        T0 + 3,
        0,
    )
    assert state.last_error == "timeout"  # kept as history
    (f,) = store.due_deliveries("fresh", T0)
    settle(store, f, DELIVERED, T0, status=200, health=True)
    assert store.sink_states()["fresh"] == SinkState("fresh", last_success_ms=T0)


# ---------------------------------------------------------------------------------- status / upkeep


def test_summary_counts(store: Store) -> None:
    store.commit_sweep(
        upserts=[make_tracked("r1"), make_tracked("r2", "pending"), make_tracked("r3", "failed")],
        deletes=[],
        events=[(make_event("r3"), ["ops", "journal"]), (make_event("r4", "run.completed"), ["ops"])],
        meta={"first_start_ms": str(T0 - 1), "last_sweep_ms": str(T0)},
        now_ms=T0,
    )
    commit_events(store, (make_event("r5"), ["ops"]), now_ms=T0 + 7)
    d3_journal, *_ = store.due_deliveries("journal", T0)
    settle(store, d3_journal, DEAD, T0 + 1, error="HTTP 400", status=400, health=False)
    first_ops = store.due_deliveries("ops", T0)[0]
    settle(store, first_ops, DELIVERED, T0 + 1)

    s = store.summary()
    assert s["schema_version"] == store.schema_version and s["path"] == store.path and s["file_bytes"] > 0
    assert s["tracked"] == {
        "total": 3,
        "active": 2,
        "terminal": 1,
        "by_status": {"failed": 1, "pending": 1, "running": 1},
    }
    assert s["events"] == 3
    assert s["deliveries"] == {"pending": 2, "delivered": 1, "dead": 1, "oldest_pending_ms": T0}
    assert s["sinks"]["ops"]["pending"] == 2 and s["sinks"]["ops"]["delivered"] == 1
    assert s["sinks"]["ops"]["oldest_pending_ms"] == T0
    assert s["sinks"]["journal"]["dead"] == 1 and s["sinks"]["journal"]["consecutive_failures"] == 1
    assert s["sinks"]["journal"]["last_error"] == "HTTP 400"
    assert s["meta"] == {"first_start_ms": str(T0 - 1), "last_sweep_ms": str(T0)}
    assert store.oldest_pending_ms() == T0
    assert store.pending_counts() == {"ops": 2}


def test_prune_drops_old_delivered_and_orphan_events_but_keeps_the_rest(store: Store) -> None:
    old, fresh, dead, quiet = (make_event(r) for r in ("run_old", "run_fresh", "run_dead", "run_quiet"))
    commit_events(store, (old, ["ops"]), (dead, ["ops"]), (quiet, []), now_ms=T0)
    commit_events(store, (fresh, ["ops"]), now_ms=T0 + 500)
    by_event = {d.event_id: d for d in store.due_deliveries("ops", T0 + 500)}
    settle(store, by_event[old.id], DELIVERED, T0 + 10)
    settle(store, by_event[fresh.id], DELIVERED, T0 + 900)
    settle(store, by_event[dead.id], DEAD, T0 + 10, error="HTTP 400", status=400)

    # delivered(old) + orphan events old and quiet; dead letters are kept by default
    assert store.prune(now_ms=T0 + 1_000, keep_done_ms=500) == 3
    assert store.events_exist([old.id, fresh.id, dead.id, quiet.id]) == {fresh.id, dead.id}
    assert store.prune(now_ms=T0 + 1_000, keep_done_ms=500) == 0
    assert store.prune(now_ms=T0 + 1_000, keep_done_ms=500, keep_dead_ms=100) == 2  # dead + its event
    assert store.events_exist([dead.id]) == set()
    assert store.integrity_check() == "ok"


def test_ensure_meta_sets_only_once(store: Store) -> None:
    assert store.ensure_meta("first_start_ms", str(T0)) == str(T0)
    assert store.ensure_meta("first_start_ms", str(T0 + 1)) == str(T0)
    store.set_meta({"first_start_ms": str(T0 + 2), "other": "x"})
    assert store.all_meta() == {"first_start_ms": str(T0 + 2), "other": "x"}


def test_another_process_sees_committed_sweeps(db_path: Path) -> None:
    """The daemon writes while `flora-watcher status` (another process) reads the same file."""
    read = "import sys; from watcher.store import Store; print(Store.open(sys.argv[1], create=False).pending_counts())"
    with Store.open(db_path) as daemon:
        commit_events(daemon, (make_event("run_a"), ["ops"]))
        out = subprocess.run([sys.executable, "-c", read, str(db_path)], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "{'ops': 1}", out.stderr
        assert daemon.pending_counts() == {"ops": 1}


# -------------------------------------------------------------------------------------- durability

CHILD = textwrap.dedent(
    """
    import sys, time
    from watcher.model import Event, Run, TrackedRun, event_id
    from watcher.store import Store

    T0 = {t0}
    store = Store.open(sys.argv[1])
    run = Run(run_id="run_a", status="failed")
    event = Event(event_id("run_a", "run.failed"), "run.failed", T0, run.to_dict())
    store.commit_sweep(upserts=[TrackedRun(run, T0, T0)], deletes=[], events=[(event, ["ops"])],
                       meta={{"last_sweep_ms": str(T0)}}, now_ms=T0)
    store._conn.execute("BEGIN IMMEDIATE")  # an uncommitted second sweep, in flight at the kill
    store._conn.execute("INSERT INTO meta(key, value) VALUES ('uncommitted', 'x')")
    store._conn.execute("DELETE FROM tracked")
    print("committed", flush=True)
    time.sleep(60)
    """
)


def test_a_committed_sweep_survives_sigkill(db_path: Path) -> None:
    code = CHILD.format(t0=T0)
    child = subprocess.Popen([sys.executable, "-c", code, str(db_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "committed"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with Store.open(db_path) as store:
        assert store.integrity_check() == "ok"
        assert set(store.load_tracked()) == {"run_a"}
        assert store.all_meta() == {"last_sweep_ms": str(T0)}
        assert [d.event_id for d in store.due_deliveries("ops", T0)] == [event_id("run_a", "run.failed")]


# ------------------------------------------------------------------------------------- performance


def test_a_sweep_commit_is_one_transaction_of_one_write_per_row_and_loading_is_one_query(db_path: Path) -> None:
    """What keeps the sweep's commit and the start's load cheap, counted rather than timed (CPU figures are
    bench/'s, on any load): commit_sweep is one transaction whose statements are one write per tracked run,
    event and delivery plus its meta (no read per row, nothing per row outside the transaction), whatever the
    number of rows; load_tracked reads every tracked run in one query."""
    with Store.open(db_path) as store:
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)  # every statement SQLite runs, executemany rows too
        for runs in (10, 1_000):
            statements.clear()
            upserts = [make_tracked(f"run_{runs}_{i:05d}") for i in range(runs)]
            events = [(make_event(f"run_{runs}_{i:05d}"), ["ops", "journal"]) for i in range(runs // 10)]
            assert len(store.commit_sweep(upserts=upserts, deletes=[], events=events, meta={"k": "v"},
                                          now_ms=T0)) == runs // 10
            verbs = [sql.split(None, 1)[0].upper() for sql in statements]
            assert verbs[0] == "BEGIN" and verbs[-1] == "COMMIT" and verbs.count("BEGIN") == 1
            assert verbs.count("INSERT") == runs + runs // 10 * 3 + 1  # runs, events, 2 deliveries each, meta
            assert len(statements) == verbs.count("INSERT") + 2
        statements.clear()
        assert len(store.load_tracked()) == 1_010
        assert len(statements) == 1


# ------------------------------------------------------------------------------------------- async


def test_async_store_mirrors_every_public_store_method() -> None:
    def public(cls: type) -> set[str]:
        return {n for n, f in vars(cls).items() if not n.startswith("_") and inspect.isfunction(f)}

    missing = public(Store) - public(AsyncStore) - {"open", "close"}
    assert missing == set()
    for name in public(Store) - {"open", "close"}:
        assert inspect.iscoroutinefunction(getattr(AsyncStore, name)), name
        store_params = list(inspect.signature(getattr(Store, name)).parameters)
        assert list(inspect.signature(getattr(AsyncStore, name)).parameters) == store_params, name


async def test_async_store_runs_every_call_on_one_thread(db_path: Path) -> None:
    store = Store.open(db_path)
    seen: set[int] = set()

    def recording(method):
        def call(*args, **kwargs):
            seen.add(threading.get_ident())
            return method(*args, **kwargs)

        return call

    for name in (
        "commit_sweep",
        "due_deliveries",
        "record_outcomes",
        "pending_counts",
        "load_tracked",
        "close",
    ):
        setattr(store, name, recording(getattr(store, name)))
    astore = AsyncStore(store)
    try:
        ev = make_event("run_a")
        for i in range(5):
            await astore.commit_sweep(
                upserts=[make_tracked(f"run_{i}")], deletes=[], events=[(ev, ["ops"])], meta={}, now_ms=T0
            )
        (delivery,) = await astore.due_deliveries("ops", T0)
        assert isinstance(delivery, Delivery)
        await astore.record_outcomes([Outcome(delivery.id, "ops", DELIVERED, T0 + 1, status=200)])
        assert await astore.pending_counts() == {}
        assert len(await astore.load_tracked()) == 5
    finally:
        await astore.aclose()
    assert len(seen) == 1 and threading.get_ident() not in seen
    await astore.aclose()  # twice is fine
    with pytest.raises(StoreError, match="closed"):
        await astore.get_meta("x")


async def test_async_store_open_and_errors_cross_as_store_error(db_path: Path) -> None:
    async with await AsyncStore.open(db_path) as astore:
        assert await astore.ensure_meta("first_start_ms", "1") == "1"
        with pytest.raises(StoreError, match="commit_sweep failed"):
            await astore.commit_sweep(
                upserts=[],
                deletes=[],
                events=[(Event("evt_x", "run.failed", T0, {"run_id": None}), ["ops"])],
                meta={},
                now_ms=T0,
            )
        assert await astore.integrity_check() == "ok"
    with pytest.raises(StoreError, match="does not exist"):
        await AsyncStore.open(db_path.parent / "missing.sqlite3", create=False)
