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
from watcher.store_api import DEAD, DELIVERED, Outcome, RecordedCallback
from watcher.store_pg import PgStore


def seed(path: Path) -> dict:
    with Store.open(path) as s:
        s.commit_sweep(upserts=[make_tracked("run_a"), make_tracked("run_b", "failed")], deletes=[],
                       events=[(make_event("run_b"), ["ops", "journal"]), (make_event("run_c"), ["ops"])],
                       meta={"first_start_ms": str(T0 - 5), "high_watermark_ms:all": str(T0)}, now_ms=T0)
        s.record_callbacks([RecordedCallback("whd_done", "run_b", "run.failed", "technique", "ws_1", T0 - 3)])
        s.record_callbacks([RecordedCallback("whd_pending", "run_a", "run.completed", None, None, T0 - 2)])
        s.finish_callbacks([("whd_done", "confirmed")], now_ms=T0 - 1)
        ops = s.due_deliveries("ops", T0)
        (journal,) = s.due_deliveries("journal", T0)
        s.record_outcomes([Outcome(ops[0].id, "ops", DELIVERED, T0 + 1, status=200),
                           Outcome(journal.id, "journal", DEAD, T0 + 2, status=400, error="HTTP 400", health=False)])
        return {"tracked": s.load_tracked(), "meta": s.all_meta(), "pending": s.list_deliveries(failed=False),
                "dead": s.list_deliveries(failed=True), "sinks": s.sink_states(),
                "bodies": {e: s.get_event(e) for e in (make_event("run_b").id, make_event("run_c").id)},
                "callbacks": (s.pending_callbacks(), s.callback_counts(since_ms=0))}


async def test_migrate_copies_everything_into_an_empty_schema_once(tmp_path: Path, pg_url: str) -> None:
    path = tmp_path / "state.sqlite3"
    before = seed(path)
    counts = await migrate_state(path, pg_url)
    assert counts == {"meta": 2, "tracked": 2, "events": 2, "deliveries": 3, "sinks": 1, "callbacks": 2}
    async with await PgStore.open(pg_url) as pg:
        assert await pg.load_tracked() == before["tracked"]
        assert await pg.all_meta() == before["meta"]
        assert await pg.list_deliveries(failed=False) == before["pending"]
        assert await pg.list_deliveries(failed=True) == before["dead"]
        assert await pg.sink_states() == before["sinks"]
        assert (await pg.pending_callbacks(), await pg.callback_counts(since_ms=0)) == before["callbacks"]
        assert await pg.record_callbacks([before["callbacks"][0][0]]) == [False]  # a replay after the move: still known
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


async def test_moving_a_running_watcher_to_postgres_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, pg_url: str
) -> None:
    """SQLite watcher sees runs start → migrate-state → the PostgreSQL watcher reports each ending once."""
    import dataclasses

    from tests.fakes import FakeClock
    from tests.integration.test_engine import EPOCH_MS, KEY, finish, make_config, once, read_events
    from watcher.config import StoreConfig
    from watcher.secret import Secret
    from watcher.simulator import run_simulator

    clock = FakeClock(0.0, epoch_ms=EPOCH_MS)
    state, events_file = tmp_path / "state", tmp_path / "events.jsonl"
    async with run_simulator(api_key=KEY, seed=5, clock=clock) as sim:
        cfg = make_config(sim.base_url, state, events_file)
        assert await once(cfg, clock) == 0  # the first start
        done = sim.sim.create_run(technique="cctv-cam", pending_ms=10, running_ms=150, outcome="failed")
        later = sim.sim.create_run(technique="cctv-cam", pending_ms=10, running_ms=5_000, outcome="completed")
        finish(sim.sim, clock, [done], seconds=0.5)
        assert await once(cfg, clock) == 0
        assert [e["data"]["run_id"] for e in read_events(events_file)] == [done]
        # the move: the daemon is stopped; its state goes to PostgreSQL
        counts = await migrate_state(state / "state.sqlite3", pg_url)
        assert counts["tracked"] >= 1 and counts["events"] == 1
        pg_cfg = dataclasses.replace(cfg, store=StoreConfig(url=Secret(pg_url), lease=5))
        finish(sim.sim, clock, [later], seconds=6)
        assert await once(pg_cfg, clock) == 0
        assert await once(pg_cfg, clock) == 0
        events = read_events(events_file)
        assert sorted(e["data"]["run_id"] for e in events) == sorted([done, later])


def test_migrate_state_command(tmp_path: Path, pg_url: str, monkeypatch, capsys) -> None:
    from watcher.cli import main

    monkeypatch.setenv("FLORA_API_KEY", "sk_live_CANARYkey0123456789")
    cfg = tmp_path / "flora-watcher.toml"
    cfg.write_text(f'[watch]\nstate_dir = "{tmp_path / "state"}"\n')
    assert main(["migrate-state", "-c", str(cfg), "--to", pg_url]) == 1  # nothing to migrate yet
    seed(tmp_path / "state" / "state.sqlite3")
    password_url = pg_url.replace("flora@", "flora:pw-CANARY-42@", 1)
    assert main(["migrate-state", "-c", str(cfg), "--to", password_url]) == 0
    out, err = capsys.readouterr()
    assert "2 tracked" in out and "3 deliveries" in out and "pw-CANARY-42" not in out + err
    assert main(["migrate-state", "-c", str(cfg), "--to", password_url]) == 1
    out, err = capsys.readouterr()
    assert "not empty" in err and "pw-CANARY-42" not in out + err
    assert main(["migrate-state", "-c", str(cfg), "--to", "mysql://x@y/z"]) == 2


async def test_the_history_keeps_its_order_across_the_move(tmp_path: Path, pg_url: str) -> None:
    path = tmp_path / "state.sqlite3"
    runs = [f"run_{c}" for c in "zyxwvu"]  # ids in reverse alphabetical order, stored in this order
    with Store.open(path) as s:
        for i, run in enumerate(runs):
            s.commit_sweep(upserts=[], deletes=[], events=[(make_event(run, created_at=T0 + i), [])], meta={},
                           now_ms=T0)
        before = [e.id for _, e in s.list_events()]
    await migrate_state(path, pg_url)
    async with await PgStore.open(pg_url) as pg:
        assert [e.id for _, e in await pg.list_events()] == before


async def test_run_dry_run_on_a_postgres_store_decides_from_a_copy_and_writes_nothing(
    tmp_path: Path, pg_url: str, capsys
) -> None:
    import dataclasses

    from tests.fakes import FakeClock
    from tests.integration.test_engine import EPOCH_MS, KEY, finish, make_config, once
    from watcher.config import StoreConfig
    from watcher.daemon import Daemon, Options
    from watcher.secret import Secret
    from watcher.simulator import run_simulator

    clock = FakeClock(0.0, epoch_ms=EPOCH_MS)
    async with run_simulator(api_key=KEY, seed=6, clock=clock) as sim:
        cfg = dataclasses.replace(make_config(sim.base_url, tmp_path / "state", tmp_path / "events.jsonl"),
                                  store=StoreConfig(url=Secret(pg_url), lease=5))
        assert await once(cfg, clock) == 0  # the first start, on PostgreSQL
        run = sim.sim.create_run(technique="cctv-cam", pending_ms=10, running_ms=150, outcome="failed")
        finish(sim.sim, clock, [run], seconds=0.5)
        async with await PgStore.open(pg_url) as pg:
            before = (await pg.all_meta(), await pg.load_tracked(), await pg.pending_counts())
        capsys.readouterr()
        opts = Options(once=True, dry_run=True, install_signal_handlers=False)
        assert await Daemon(cfg, opts, clock=clock).run() == 0
        assert run in capsys.readouterr().out  # it would send the failure
        async with await PgStore.open(pg_url) as pg:
            assert (await pg.all_meta(), await pg.load_tracked(), await pg.pending_counts()) == before
            assert await pg.instances() == []  # a dry run does not join the instances either
