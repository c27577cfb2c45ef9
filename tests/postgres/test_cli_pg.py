"""The CLI on a PostgreSQL store: check-config connects and reports the server and schema; status lists the
instances and the sweeper; deliveries/replay work; the URL's password appears nowhere."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tests.integration.test_store import T0, make_event
from watcher.cli import main
from watcher.store_pg import SCHEMA_VERSION, PgStore

PASSWORD = "pw-CANARY-0123456789"  # the throwaway cluster trusts every connection, so any password is accepted


def with_password(url: str) -> str:
    split = urlsplit(url)
    return url.replace(f"{split.username}@", f"{split.username}:{PASSWORD}@", 1)


@pytest.fixture
def config(tmp_path: Path, monkeypatch, pg_url: str) -> Path:
    monkeypatch.setenv("FLORA_API_KEY", "sk_live_CANARYkey0123456789")
    monkeypatch.setenv("STORE_URL", with_password(pg_url))
    cfg = tmp_path / "flora-watcher.toml"
    cfg.write_text(f"""
[watch]
state_dir = "{tmp_path / 'state'}"

[store]
url = "${{STORE_URL}}"
lease = 5

[[sinks]]
name = "journal"
type = "file"
path = "{tmp_path / 'events.jsonl'}"
""")
    return cfg


async def populate(url: str) -> None:
    async with await PgStore.open(url, instance_id="db1:4242:abcd") as s:
        await s.register_instance(role="sweeper", version="9.9", host="db1", pid=4242)
        await s.acquire_lease("https://app.flora.ai/api/v1|ws=*|prj=*|tech=*", 5_000)
        await s.commit_sweep(upserts=[], deletes=[], events=[(make_event("run_a"), ["journal"])],
                             meta={"first_start_ms": str(T0)}, now_ms=T0)


def test_check_config_reports_the_server_and_schema_state(config: Path, pg_url: str, capsys) -> None:
    assert main(["check-config", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "PostgreSQL 1" in out and "schema empty" in out and PASSWORD not in out
    (store,) = [line for line in out.splitlines() if line.lstrip().startswith("store:")]  # one line (it was two)
    assert "(lease 5s): PostgreSQL 1" in store and "schema empty" in store
    import asyncio

    asyncio.run(populate(pg_url))
    assert main(["check-config", "-c", str(config)]) == 0
    assert f"schema {SCHEMA_VERSION} (current)" in capsys.readouterr().out


def test_check_config_names_an_unreachable_store_without_its_password(tmp_path: Path, monkeypatch, config,
                                                                      capsys) -> None:
    monkeypatch.setenv("STORE_URL", f"postgresql://flora:{PASSWORD}@/nowhere?host={tmp_path}")
    assert main(["check-config", "-c", str(config)]) == 2
    out, err = capsys.readouterr()
    assert "store.url" in err and "cannot connect" in err and PASSWORD not in out + err
    assert "config OK" not in out


def test_status_lists_instances_and_the_sweeper_without_the_password(config: Path, pg_url: str, capsys) -> None:
    assert main(["status", "-c", str(config)]) == 0
    assert "no state yet" in capsys.readouterr().out
    import asyncio

    asyncio.run(populate(pg_url))
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "db1:4242:abcd: host db1, pid 4242, sweeper, heartbeat" in out
    assert "sweeper:      db1:4242:abcd (token 1, lease valid)" in out
    assert "1 pending" in out and PASSWORD not in out
    assert main(["status", "-c", str(config), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"instances"' in out and '"sweepers"' in out and PASSWORD not in out
    assert main(["deliveries", "-c", str(config)]) == 0
    assert make_event("run_a").id in capsys.readouterr().out


def test_a_crashed_instance_is_listed_as_dead_then_forgotten(config: Path, pg_url: str, capsys) -> None:
    """Issue 24: a crashed instance stayed listed as "sweeper" 21 minutes later. Past the lease without a heartbeat
    it is DEAD, with the role it had; a live instance's heartbeat forgets it 10 minutes after its last one."""
    import asyncio

    from tests.postgres.test_store_pg import sql

    asyncio.run(populate(pg_url))  # db1:4242:abcd, the sweeper; then kill -9: no unregister
    sql(pg_url, "UPDATE instances SET heartbeat_ms = heartbeat_ms - 300000")
    sql(pg_url, "UPDATE leases SET expires_ms = expires_ms - 300000")
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "instances:    0 alive, 1 dead" in out
    (line,) = [line for line in out.splitlines() if line.startswith("  db1:4242:abcd:")]
    assert line.startswith("  db1:4242:abcd: host db1, pid 4242, DEAD: no heartbeat for 5m (crashed or killed; "
                           "it was the sweeper); forgotten in ")
    assert "lease EXPIRED" in out
    assert main(["status", "--json", "-c", str(config)]) == 0
    (instance,) = json.loads(capsys.readouterr().out)["instances"]
    assert instance["alive"] is False and instance["role"] == "sweeper"

    sql(pg_url, "UPDATE instances SET heartbeat_ms = heartbeat_ms - 960000")  # 21 minutes now

    async def another_instance_beats() -> None:
        async with await PgStore.open(pg_url, instance_id="db2:7:beef") as store:
            await store.register_instance(role="standby", host="db2", pid=7)
            await store.heartbeat(role="standby")

    asyncio.run(another_instance_beats())
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    instances = out.split("sweeper:")[0]  # (the expired lease still names its last holder)
    assert "db1:4242:abcd" not in instances and "db2:7:beef: host db2, pid 7, standby, heartbeat" in instances
