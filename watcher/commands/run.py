"""Run the watcher daemon in the foreground.

Sweeps the FLORA API every [watch].interval seconds and delivers run.completed / run.failed events to the
configured sinks. SIGTERM or Ctrl-C stops it cleanly (in-flight deliveries finish within
[delivery].shutdown_grace; nothing pending is lost); SIGHUP reloads the config.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from watcher.cli import add_config_argument

    add_config_argument(parser)
    parser.add_argument("--once", action="store_true",
                        help="one full sweep, then deliver what is due, then exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="render events to stdout; send nothing and write no state "
                        "(decides from an in-memory copy of the current state)")


def main(args: argparse.Namespace) -> int:
    from watcher import statelock
    from watcher.config import load
    from watcher.daemon import Daemon, Options
    from watcher.validate import check_start

    cfg = load(args.config)  # ConfigError → exit 2 in cli.py
    if not args.dry_run:  # --dry-run builds no sink and writes no state
        check_start(cfg)  # the same start-time checks as check-config; before the lock creates state_dir
    opts = Options(once=args.once, dry_run=args.dry_run, config_path=args.config,
                   live_view=live_view_wanted(once=args.once, dry_run=args.dry_run))
    lock = None
    if not args.dry_run and uses_sqlite_state(cfg):  # --dry-run writes no state
        try:
            lock = statelock.acquire(cfg.watch.state_dir)
        except statelock.StateLocked as exc:
            print(f"flora-watcher: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(Daemon(cfg, opts).run())
    finally:
        if lock is not None:
            lock.release()


def uses_sqlite_state(cfg) -> bool:
    """True unless the config points the state at a shared PostgreSQL store ([store] url), where several
    instances are a deliberate mode and coordinate through the database instead of this lock."""
    return cfg.store.backend == "sqlite"


def live_view_wanted(*, once: bool = False, dry_run: bool = False) -> bool:
    """The live table is for a person at a terminal: only when stdout and stderr are both TTYs
    (while it runs, rich routes stderr through the terminal too, which would steal logs meant for a file), and
    neither a one-shot ``--once`` nor ``--dry-run``."""
    return not once and not dry_run and _isatty(sys.stdout) and _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
