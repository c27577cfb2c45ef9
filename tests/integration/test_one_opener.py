"""One opener per state file (style.md §14; issue 24, item 1).

Closing any descriptor of a file drops every POSIX lock the process holds on it (SQLite "How To Corrupt" §2.2).
The daemon's reload once ran the start-time checks, which opened and closed ``state.sqlite3``: the daemon lost
its locks, the next admin command's close deleted the WAL under it. These tests hold the store open as the daemon
does and check, through ``/proc/locks``, that nothing else in the process touches the file; the real daemon, the
real commands and a kill -9 are in tests/reliability/test_reload_admin.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.procfs import HAVE_PROC, posix_locks
from watcher.config import Config, WatchConfig
from watcher.errors import ConfigError, StoreError
from watcher.sinks.registry import sink_config
from watcher.store import AsyncStore, Store, held_here, store_path
from watcher.validate import check_start, start_problems

pytestmark = pytest.mark.skipif(not HAVE_PROC, reason="needs Linux's /proc/locks")


def config(state_dir: Path, *sinks: Any) -> Config:
    return Config(watch=WatchConfig(state_dir=state_dir), sinks=tuple(sinks))


def test_a_second_store_on_the_same_file_in_one_process_is_refused(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    with Store.open(path):
        with pytest.raises(StoreError, match="already open in this process"):
            Store.open(path)
        with pytest.raises(StoreError, match="already open in this process"):
            Store.open(tmp_path / "." / "state.sqlite3", create=False)  # another spelling, the same file
        with pytest.raises(StoreError, match="already open in this process"):
            Store.snapshot(path)  # --dry-run's copy opens the file too
        assert held_here(path) and held_here(f"{path}-wal") and held_here(f"{path}-shm")
    assert not held_here(path)
    with Store.open(path, create=False) as again:  # closed: the next opener may have it
        assert again.pending_counts() == {}
    Store.snapshot(path).close()
    assert not held_here(path)


async def test_the_async_store_holds_the_file_until_it_is_closed(tmp_path: Path) -> None:
    store = await AsyncStore.open(store_path(tmp_path))
    try:
        assert held_here(store_path(tmp_path))
    finally:
        await store.aclose()
    assert not held_here(store_path(tmp_path))


def test_start_checks_leave_the_open_store_its_locks(tmp_path: Path) -> None:
    """What the daemon's SIGHUP reload runs, with the store open: the state is usable, and not opened to see."""
    path = store_path(tmp_path)
    cfg = config(tmp_path, sink_config(name="journal", type="file", path=tmp_path / "events.jsonl"))
    with Store.open(path) as store:
        store.set_meta({"k": "v"})
        before = posix_locks(path)
        assert before >= 1  # WAL mode: the connection holds a shared lock on the database file
        check_start(cfg)
        assert posix_locks(path) == before
        # a file check pointed at the held file (a sink misconfigured onto it) refuses without opening it
        from watcher.fsprobe import file_problem

        assert file_problem(path) == f"{path} is the watcher's state store"
        assert file_problem(Path(f"{path}-wal")) is not None
        assert posix_locks(path) == before


def test_a_file_sink_on_the_state_files_is_a_config_error(tmp_path: Path) -> None:
    """check-config refuses it before any store is open; the daemon would open its own state otherwise."""
    for name in ("state.sqlite3", "state.sqlite3-wal", "flora-watcher.lock"):
        cfg = config(tmp_path, sink_config(name="journal", type="file", path=tmp_path / name, where="sinks[0]"))
        problems = start_problems(cfg)
        assert [(p.key, "own state files" in p.message) for p in problems] == [("sinks[0].path", True)], name
        with pytest.raises(ConfigError):
            check_start(cfg)


def test_a_store_collected_unclosed_lets_its_file_go(tmp_path: Path) -> None:
    """Its connection closes with it (and the file's inode may be reused): the registration must not outlive it."""
    import gc

    path = store_path(tmp_path)
    store = Store.open(path)
    assert held_here(path)
    del store
    gc.collect()
    assert not held_here(path)
    Store.open(path).close()
