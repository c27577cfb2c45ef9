"""Run the watcher daemon in the foreground.

Sweeps the FLORA API every [watch].interval seconds and delivers run.completed / run.failed events to the
configured sinks. SIGTERM or Ctrl-C stops it cleanly (in-flight deliveries finish within
[delivery].shutdown_grace; nothing pending is lost); SIGHUP reloads the config. When stdout is a pipe whose
reader goes away (`flora-watcher run | head -1`), it stops the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from watcher.commands import add_config_argument

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
    from watcher.sinks.registry import REGISTRY
    from watcher.validate import check_start

    cfg = load(args.config, sink_types=REGISTRY)  # ConfigError → exit 2 in cli.py
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
    if not args.once:
        tune_gc()
    try:
        return asyncio.run(_run(Daemon(cfg, opts)))
    finally:
        if lock is not None:
            lock.release()


async def _run(daemon) -> int:
    """The daemon, stopped cleanly (as by SIGTERM) when stdout is a pipe whose reader has gone
    (`flora-watcher run | head -1`): nobody reads the stdout sink any more."""
    closed: list[bool] = []

    def reader_gone() -> None:
        closed.append(True)
        daemon.request_stop()

    unwatch = watch_stdout_reader(reader_gone)
    try:
        return await daemon.run()
    finally:
        unwatch()
        if closed:  # the flush at exit must not fail; lines written after the reader left stay pending
            _silence_stdout(sys.stdout.fileno())


# The daemon process's cyclic garbage collector. A sweep at 10,000 active runs replaces ~30,000 objects that live
# one interval (observations, tracked runs); with Python's default thresholds (700, 10, 10) that meant ~25 young
# collections a second and a full one every few sweeps (150 ms each over ~160,000 objects) — a sixth of the
# daemon's CPU, to find nothing: the watcher's objects are freed by reference counting, not by this collector.
# Young collections now run every 50,000 net allocations and a full one every 200 of them (about once an hour
# under that load); the objects of the start (modules, config) are frozen out of every collection.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Set the process's garbage collector for a long-running daemon (``GC_THRESHOLDS``); ``run`` does, unless
    ``--once``."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def watch_stdout_reader(on_gone, fd: int | None = None):
    """Call ``on_gone()`` once when ``fd`` (default: stdout) is a pipe and its read end closes. Returns a
    function that stops watching. A no-op for anything but a pipe (a terminal, a file, /dev/null)."""
    import os
    import stat

    fd = sys.stdout.fileno() if fd is None else fd
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return lambda: None
    except (OSError, ValueError):
        return lambda: None
    loop = asyncio.get_running_loop()

    def gone() -> None:  # epoll reports EPOLLERR on a pipe's write end once nobody can read it
        loop.remove_reader(fd)
        from watcher.logs import get_logger

        get_logger("watcher.run").info("stdout.closed", note="the reader of stdout went away; stopping")
        on_gone()

    loop.add_reader(fd, gone)
    return lambda: loop.remove_reader(fd)


def _silence_stdout(fd: int) -> None:
    """Point ``fd`` at /dev/null, so that the last writes and the flush at exit do not fail."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


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
