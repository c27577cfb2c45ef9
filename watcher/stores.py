"""Which state store the config asks for: SQLite in ``[watch].state_dir`` (the default) or PostgreSQL
(``[store].url``). Shell. Both give the same coroutines (``store.AsyncStore`` / ``store_pg.PgStore``); psycopg is
imported only when a PostgreSQL URL is configured, so the base install never needs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from watcher.config import Config
from watcher.store import AsyncStore, Store, store_path


def describe(cfg: Config) -> str:
    """Where the state lives, safe to print (no password)."""
    if cfg.store.url is None:
        return str(store_path(cfg.watch.state_dir).resolve())
    from watcher.store_pg import redact_url

    return redact_url(cfg.store.url.reveal())


async def open_async(cfg: Config, *, dry_run: bool = False, instance_id: str | None = None) -> Any:
    """The daemon's store: opened (and migrated) for writing, or for ``--dry-run`` an in-memory SQLite copy of
    the real state, so the run decides as the daemon would and writes nothing back."""
    if cfg.store.url is None:
        path = store_path(cfg.watch.state_dir)
        return AsyncStore(Store.snapshot(path) if dry_run else Store.open(path))
    from watcher.store_pg import PgStore

    if dry_run:
        from watcher.migrate import copy_pg_to_memory

        return AsyncStore(await copy_pg_to_memory(cfg.store.url.reveal()))
    store = await PgStore.open(cfg.store.url.reveal(), instance_id=instance_id)
    store.liveness_ms = int(cfg.store.lease * 1000)
    return store


def open_blocking(cfg: Config) -> Any:
    """For the CLI's status/deliveries/replay/events: the existing store, or None when the watcher never ran with
    it. Raises StoreError (one line: the database's own reason, no password) when it cannot be opened."""
    if cfg.store.url is None:
        path = store_path(cfg.watch.state_dir)
        if not Path(path).exists():
            return None
        return Store.open(path, create=False)
    from watcher.store_pg import BlockingStore, EmptySchema, PgStore, quiet_pool_logs

    quiet_pool_logs()  # a command reports a failure itself, in one line (StoreError → cli.py)
    url = cfg.store.url.reveal()
    try:
        store = BlockingStore(lambda: PgStore.open(url, migrate=False, max_size=1))
    except EmptySchema:
        return None
    store.astore.liveness_ms = int(cfg.store.lease * 1000)
    return store
