"""Admin commands on a SQLite state they cannot use (issue 24, item 4): one line with the reason, exit 1, no
traceback. The PostgreSQL side (server down, wrong password, no such database):
tests/postgres/test_cli_pg_errors.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from watcher.cli import main

COMMANDS = [["status"], ["status", "--json"], ["events"], ["deliveries"], ["deliveries", "--failed"],
            ["replay", "--failed"]]


@pytest.fixture
def config(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.delenv("FLORA_WATCHER_CONFIG", raising=False)
    cfg = tmp_path / "flora-watcher.toml"
    cfg.write_text(f'[watch]\nstate_dir = "{tmp_path / "state"}"\n')
    (tmp_path / "state").mkdir()
    return cfg


def not_a_database(path: Path) -> str:
    path.write_bytes(b"this is not a database, " * 100)
    return "file is not a database"


def another_application(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    return "another application"


@pytest.mark.parametrize("make", [not_a_database, another_application])
def test_an_unusable_state_file_is_one_line_and_exit_1(config: Path, capsys, make) -> None:
    reason = make(config.parent / "state" / "state.sqlite3")
    for argv in COMMANDS:
        assert main([*argv, "-c", str(config)]) == 1, argv
        out, err = capsys.readouterr()
        assert out == "", argv
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"flora-watcher {argv[0]}: state store "), (argv, err)
        assert reason in lines[0], (argv, err)
