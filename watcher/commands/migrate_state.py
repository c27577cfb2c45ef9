"""Copy this host's SQLite state into an empty PostgreSQL store, to run several instances on it.

Tracked runs, events (their exact bytes), pending deliveries, dead letters, delivered history, sink state,
watermarks and the first start are copied in one transaction; the target must hold no state yet. Stop the
daemon first (the command takes the same lock as `run` on the SQLite state). Then set [store] url and start the
instances: they carry on where this one stopped, nothing lost and nothing sent twice.

Exit status: 0 copied; 1 not copied (target not empty, unreachable, source unreadable); 2 usage or config error.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from watcher.commands import add_config_argument

    add_config_argument(parser)
    parser.add_argument("--to", metavar="URL",
                        help="the PostgreSQL store, postgresql://user@host/dbname (default: [store] url of the "
                        "config); prefer the config or $PGPASSWORD/.pgpass for the password: a command line is "
                        "visible to other users")
    parser.add_argument("--from", dest="source", metavar="FILE",
                        help="the SQLite state file (default: state.sqlite3 in [watch].state_dir)")


def main(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from watcher import statelock
    from watcher.commands._common import load_for_store
    from watcher.errors import ConfigError, StoreError
    from watcher.migrate import migrate_state
    from watcher.store import store_path
    from watcher.store_pg import is_postgres_url, redact_url

    cfg = load_for_store(args.config)
    url = args.to or (cfg.store.url.reveal() if cfg.store.url is not None else None)
    if not url:
        raise ConfigError("--to", "give the PostgreSQL URL (or set [store] url in the config)")
    if not is_postgres_url(url):
        raise ConfigError("--to", "expected a postgresql://user@host/dbname URL")
    from watcher import logs

    logs.register_secrets([url, *([p] if (p := _password(url)) else [])])
    source = Path(args.source) if args.source else store_path(cfg.watch.state_dir)
    if not source.exists():
        print(f"flora-watcher: nothing to migrate: {source} does not exist", file=sys.stderr)
        return 1
    lock = None
    if not args.source:
        try:
            lock = statelock.acquire(cfg.watch.state_dir)
        except statelock.StateLocked as exc:
            print(f"flora-watcher: {exc}", file=sys.stderr)
            return 1
    from watcher.store_pg import quiet_pool_logs

    quiet_pool_logs()  # a failure is reported below, in one line
    try:
        counts = asyncio.run(migrate_state(source, url))
    except StoreError as exc:
        print(f"flora-watcher migrate-state: {exc}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()
    copied = ", ".join(f"{n} {table}" for table, n in counts.items())
    print(f"copied {source} into {redact_url(url)}: {copied}")
    print("next: set [store] url in the config of every instance and start them")
    return 0


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None
