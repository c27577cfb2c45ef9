"""Helpers shared by the commands that read the state store (status, deliveries, replay)."""

from __future__ import annotations

import time
from pathlib import Path

from watcher.config import Config, load
from watcher.store import Store, store_path
from watcher.store_api import AdminStore


def load_for_store(config_path: str | None) -> Config:
    """The config, for its state_dir and sink names; these commands need no API key."""
    from watcher.sinks.registry import REGISTRY

    return load(config_path, sink_types=REGISTRY, require_api_key=False)


def open_store(cfg: Config) -> AdminStore | None:
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
    return f"{span((now or now_ms()) - int(ms))} ago"


def span(ms: int) -> str:
    """A length of time, coarsely: '12s', '3m', '5h', '2d' (negative counts as 0)."""
    seconds = max(0, int(ms) // 1000)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def iso(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ms) / 1000))


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 attempt', '2 attempts'; ``many`` for irregular plurals ('deliveries')."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def known_sinks(cfg: Config, store: AdminStore | None) -> set[str]:
    """Sink names a command may be asked about: the configured ones, and any the state store still holds
    deliveries or health for (a sink removed from the config keeps its dead letters)."""
    from watcher.sinks.spec import delivery_targets

    names = {s.name for s in cfg.sinks} | {s.name for s in delivery_targets(cfg.sinks)}  # apprise: one per URL
    if store is not None:
        names |= set(store.summary()["sinks"])
    return names


def unknown_sink_message(name: str, known: set[str]) -> str:
    return f"flora-watcher: no sink named {name!r}; known sinks: {', '.join(sorted(known)) or '(none)'}"


# ------------------------------------------------------------------------------------ a paused sink

PROBE_GRACE_MS = 30_000  # past its time, a probe may still be in flight for the sink's timeout plus this


def live_pause(pause: tuple[int, int | None] | None, *, last_success_ms: int | None,
               last_failure_ms: int | None) -> tuple[int, int | None] | None:
    """The stored pause of a sink (since, next probe), or None when it no longer holds. Pure.

    A pause is written by the process whose circuit breaker opened, renewed after each failed probe and cleared
    by the first success. A process started later begins with the breaker closed and retries each delivery on
    its own schedule: a success after the pause began, or a failure after its next probe was due (a failed probe
    would have renewed it), means the record is left over from an earlier process, and the truth is the sink's
    health (failing, or ok)."""
    if pause is None:
        return None
    since, probe = pause
    if (last_success_ms or 0) > since:
        return None
    if probe is not None and (last_failure_ms or 0) > probe:
        return None
    return pause


def probe_text(probe_ms: int | None, now: int, *, timeout_s: float, last_sweep_ms: int | None) -> str:
    """When a paused sink is tried again: 'next probe in 4s', 'probing now', or an overdue probe, which a
    running daemon does not leave (its probe is sent on time and ends within the sink's timeout). Pure."""
    if probe_ms is None:
        return "probing"
    if probe_ms > now:
        return f"next probe in {span(probe_ms - now)} ({iso(probe_ms)})"
    if now - probe_ms <= timeout_s * 1000 + PROBE_GRACE_MS:
        return "probing now"
    return (f"next probe overdue by {span(now - probe_ms)}: is the daemon running? "
            f"(last sweep {ago(last_sweep_ms, now)})")


def sink_timeouts(cfg: Config) -> dict[str, float]:
    from watcher.sinks.spec import delivery_targets

    return {s.name: float(s.timeout) for s in delivery_targets(cfg.sinks)}  # an apprise sink: one per URL

