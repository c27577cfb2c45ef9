"""Helpers shared by the commands that read the state store (status, deliveries, replay)."""

from __future__ import annotations

import time
from pathlib import Path

from watcher.config import Config, load
from watcher.store import Store, store_path


def load_for_store(config_path: str | None) -> Config:
    """The config, for its state_dir and sink names; these commands need no API key."""
    from watcher.sinks.registry import REGISTRY

    return load(config_path, sink_types=REGISTRY, require_api_key=False)


def open_store(cfg: Config) -> Store | None:
    """The state store (SQLite, or PostgreSQL with [store] url), or None when the watcher has never run with it."""
    if cfg.store.url is not None:
        from watcher.stores import open_blocking

        return open_blocking(cfg)
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


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 attempt', '2 attempts'; ``many`` for irregular plurals ('deliveries')."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def known_sinks(cfg: Config, store: Store | None) -> set[str]:
    """Sink names a command may be asked about: the configured ones, and any the state store still holds
    deliveries or health for (a sink removed from the config keeps its dead letters)."""
    names = {s.name for s in cfg.sinks}
    if store is not None:
        names |= set(store.summary()["sinks"])
    return names


def unknown_sink_message(name: str, known: set[str]) -> str:
    return f"flora-watcher: no sink named {name!r}; known sinks: {', '.join(sorted(known)) or '(none)'}"
