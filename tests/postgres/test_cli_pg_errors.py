"""Admin commands against a PostgreSQL store that cannot be used (issue 24, item 4): a stopped server, a closed
port, a wrong password, a database that does not exist. Each command fails in one line that gives the
database's own reason, exits 1 (2 for check-config, whose job is to judge the config), prints no traceback and
no pool warnings, and never shows the password. Real processes against a real cluster whose role has a
SCRAM password (the session's test cluster trusts everyone, so it cannot refuse a password)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tests.postgres.cluster import Cluster, start_cluster
from tests.postgres.fixtures import _missing
from watcher.store import Store, store_path

ROLE = "flora_pw"
PASSWORD = "right-CANARY-pw-4242"
WRONG = "wrong-CANARY-pw-1717"
API_KEY = "sk_live_CANARYkey0123456789"


@dataclass
class AuthCluster:
    cluster: Cluster
    database: str

    def url(self, password: str = PASSWORD, database: str | None = None) -> str:
        return f"postgresql://{ROLE}:{password}@/{database or self.database}?host={self.cluster.sockdir}"


@pytest.fixture(scope="module")
def auth_cluster() -> Iterator[AuthCluster]:
    """A cluster of our own: a role that must give its password (scram-sha-256), and its database."""
    reason = _missing()
    if reason:
        if os.environ.get("FLORA_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL tests required: {reason}")
        pytest.skip(reason)
    cluster = start_cluster()
    try:
        cluster.psql("SET password_encryption = 'scram-sha-256'; "
                     f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        cluster.psql(f"CREATE DATABASE {ROLE}_db OWNER {ROLE}")
        hba = cluster.datadir / "pg_hba.conf"
        hba.write_text(f"local all {ROLE} scram-sha-256\n" + hba.read_text())  # first match wins
        cluster._run(str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir), "reload")
        yield AuthCluster(cluster, f"{ROLE}_db")
    finally:
        cluster.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "flora-watcher.toml"
    cfg.write_text(f"""
[api]
api_key = "{API_KEY}"

[watch]
state_dir = "{tmp_path / 'state'}"

[store]
url_file = "{tmp_path / 'store-url'}"

[[sinks]]
name = "journal"
type = "file"
path = "{tmp_path / 'events.jsonl'}"
""")
    (tmp_path / "store-url").write_text(url)
    return cfg


@dataclass
class Result:
    argv: list[str]
    code: int
    out: str
    err: str


async def flora(config: Path, *argv: str) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLORA_", "PG"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher", *argv, "-c", str(config), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(config.parent))
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Result(list(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


ADMIN = [["status"], ["status", "--json"], ["events"], ["deliveries"], ["deliveries", "--failed"],
         ["replay", "--failed"], ["migrate-state"]]
COMMANDS = [*ADMIN, ["check-config"]]


def problems_of(r: Result, reason: str, secrets: tuple[str, ...] = (PASSWORD, WRONG)) -> list[str]:
    """An admin command: one line on stderr naming ``reason``, exit 1, nothing else; check-config: exit 2."""
    problems = []
    lines = [line for line in r.err.splitlines() if line.strip()]
    want = 2 if r.argv == ["check-config"] else 1
    if r.code != want:
        problems.append(f"{r.argv}: exit {r.code}, expected {want}")
    if len(lines) != 1 or reason not in lines[0]:
        problems.append(f"{r.argv}: stderr is not one line giving {reason!r}: {r.err[:600]!r}")
    if "Traceback" in r.err + r.out:
        problems.append(f"{r.argv}: a traceback")
    if r.out.strip():
        problems.append(f"{r.argv}: stdout {r.out[:200]!r}")
    if any(secret in r.err + r.out for secret in secrets):
        problems.append(f"{r.argv}: shows the password")
    return problems


PROCESSES = [["status"], ["events"], ["deliveries"], ["replay", "--failed"], ["migrate-state"]]


async def check_processes(config: Path, reason: str) -> None:
    """Each kind of command as a real process (the interpreter's own traceback, stdlib logging, warnings at
    exit); the in-process check covers every variant."""
    results = await asyncio.gather(*(flora(config, *argv) for argv in PROCESSES))
    problems = [p for r in results for p in problems_of(r, reason)]
    assert not problems, "\n".join(problems)


def check_in_process(config: Path, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command through ``cli.main`` (cheaper than a process each; an escaping exception fails the test)."""
    from watcher.cli import main

    problems = []
    for argv in COMMANDS:
        code = main([*argv, "-c", str(config)])
        out, err = capsys.readouterr()
        problems += problems_of(Result(argv, code, out, err), reason)
    assert not problems, "\n".join(problems)


@pytest.fixture
def sqlite_source(tmp_path: Path) -> None:
    """A SQLite state for migrate-state to copy (so it gets as far as the target)."""
    Store.open(store_path(tmp_path / "state")).close()


def test_wrong_password(tmp_path: Path, auth_cluster: AuthCluster, sqlite_source: None,
                              capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, auth_cluster.url(password=WRONG))
    reason = f'password authentication failed for user "{ROLE}"'
    check_in_process(config, reason, capsys)
    asyncio.run(check_processes(config, reason))


def test_a_database_that_does_not_exist(tmp_path: Path, auth_cluster: AuthCluster, sqlite_source: None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, auth_cluster.url(database="no_such_db"))
    check_in_process(config, 'database "no_such_db" does not exist', capsys)


def test_a_closed_port(tmp_path: Path, sqlite_source: None, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{closed_port()}/x")
    check_in_process(config, "Connection refused", capsys)


def test_a_stopped_server(tmp_path: Path, sqlite_source: None, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = start_cluster()  # one of its own to stop: the module's cluster serves the other tests
    try:
        url = cluster.url()
        cluster._run(str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir), "-m", "fast", "-w", "stop")
        config = write_config(tmp_path, url.replace("flora@", f"flora:{PASSWORD}@"))
        check_in_process(config, "No such file or directory", capsys)  # the server's socket went with it
    finally:
        cluster.stop()


async def test_the_right_password_works(tmp_path: Path, auth_cluster: AuthCluster) -> None:
    """The control: the same role with its password gets in (the cluster refuses only what it should)."""
    config = write_config(tmp_path, auth_cluster.url())
    r = await flora(config, "status")
    assert r.code == 0 and "no state yet" in r.out, r
    assert PASSWORD not in r.out + r.err


def test_connect_failure_is_one_line_of_the_servers_reason_without_the_password() -> None:
    from watcher.store_pg import connect_failure

    url = "postgresql://flora:hunter2-CANARY@db.example/flora?password=q-CANARY-pw&sslmode=require"
    auth = Exception('connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  password '
                     'authentication failed for user "flora"')
    assert connect_failure(auth, url) == 'password authentication failed for user "flora"'
    refused = Exception('connection failed: connection to server at "127.0.0.1", port 5 failed: Connection refused\n'
                        '\tIs the server running on that host and accepting TCP/IP connections?')
    assert connect_failure(refused, url) == ('connection to server at "127.0.0.1", port 5 failed: Connection refused; '
                                             'Is the server running on that host and accepting TCP/IP connections?')
    echoed = Exception(f"invalid connection string {url!r} (hunter2-CANARY, q-CANARY-pw)")
    text = connect_failure(echoed, url)
    assert "CANARY" not in text and "\n" not in text
    assert connect_failure(Exception(""), url) == "Exception"
