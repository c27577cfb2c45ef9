"""Helpers shared by the commands that read the state store (status, deliveries, replay)."""

from __future__ import annotations

import time
from pathlib import Path

from watcher.config import Config, load
from watcher.store import Store, store_path


def load_for_store(config_path: str | None) -> Config:
    """The config, for its state_dir and sink names; these commands need no API key."""
    return load(config_path, require_api_key=False)


def open_store(cfg: Config) -> Store | None:
    """The state store, or None when the watcher has never run with this state_dir."""
    path = store_path(cfg.watch.state_dir)
    if not Path(path).exists():
        return None
    return Store.open(path, create=False)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ago(ms: int | None, now: int | None = None) -> str:
    """'12s ago', '3m ago', 'never'."""
    if not ms:
        return "never"
    seconds = max(0, ((now or now_ms()) - int(ms)) // 1000)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def iso(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ms) / 1000))
