"""Routine operations next to a running daemon (issue 24), for the chaos tests and the crash loops: every admin
command an operator runs while ``flora-watcher run`` is up, and the checks that none of them harmed it.

An admin command is a separate process that opens the same state (the SQLite file, or the PostgreSQL database).
What it must never do to the daemon: end it, or detach it from its SQLite state — a reload's start checks once
opened and closed ``state.sqlite3`` inside the daemon, which drops every POSIX lock the process holds on it
(SQLite's "how to corrupt" §2.2), so the next admin command to close its connection believed it was the last
one, checkpointed and deleted ``-wal``/``-shm`` under the daemon (issue 24 item 1). From then on the daemon
wrote into deleted files: ``status`` went stale, ``events`` missed what was delivered, and a kill -9 lost
everything since the reload.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.reliability.harness import CliResult, WatcherProcess, http_get, run_cli

# Every admin command of CONTRACT §2 and §8 that works next to a running daemon, with the exit status it must
# give there. `migrate-state` needs the daemon stopped: next to it, it must refuse in one line (exit 1).
ADMIN_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("status",),
    ("status", "--json"),
    ("events",),
    ("events", "--json"),
    ("deliveries",),
    ("deliveries", "--failed"),
    ("replay", "--failed"),
    ("check-config",),
)
NOT_A_MIGRATION_TARGET = "postgresql://nobody@/flora_not_here?host=/nonexistent"  # never reached: refused first

# What the daemon logs when it answers a SIGHUP (WatcherProcess.reload waits for it).
RELOADED, REJECTED = '"config.reloaded"', '"config.reload_rejected"'
UNPARSEABLE = "[watch\ninterval = "  # a config file cut short by an editor: not TOML


def file_sink(name: str, path: Path | str) -> str:
    """A ``[[sinks]]`` table for a file sink (a config's ``extra_sinks``)."""
    return f'\n[[sinks]]\nname = "{name}"\ntype = "file"\npath = "{path}"\n'


# A sink whose file cannot be created: the config parses, but the start checks refuse it (and a reload with it).
FAILS_START_CHECKS = file_sink("broken", "/proc/flora-watcher-chaos/events.jsonl")


def admin_commands(*, test_sink: str | None = "hook", migrate: bool = True) -> list[tuple[tuple[str, ...], int]]:
    """(argv, expected exit status) of every admin command. ``test_sink``: the sink `test-sink` sends to (its
    synthetic ``run_test_…`` event is not a transition; the checker counts it apart)."""
    out = [(args, 0) for args in ADMIN_COMMANDS]
    if test_sink:
        out.append((("test-sink", test_sink), 0))
    if migrate:
        out.append((("migrate-state", "--to", NOT_A_MIGRATION_TARGET), 1))
    return out


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def harm(daemon: WatcherProcess, after: str) -> list[str]:
    """What is wrong with the daemon after ``after``: it exited, or it holds its state files deleted."""
    problems = []
    if not daemon.alive():
        assert daemon.proc is not None
        problems.append(f"the daemon exited ({daemon.proc.returncode}) after {after}")
    deleted = daemon.deleted_state_files()
    if deleted:
        problems.append(f"after {after} the daemon holds its state files deleted: {deleted} (issue 24 item 1: the "
                        "SQLite state is detached; writes from now on are lost at the next kill)")
    return problems


def judge(result: CliResult, expected: int) -> list[str]:
    """An admin command's own problems: the wrong exit status, a traceback, a refusal that is not one line."""
    what = f"`flora-watcher {' '.join(result.args)}`"
    if "Traceback" in result.out + result.err:
        return [f"{what} printed a traceback: {result.err[-800:]!r}"]
    if result.code != expected:
        return [f"{what} exited {result.code}, expected {expected}: {(result.err or result.out)[-400:]!r}"]
    if expected != 0 and (why := result.one_line_failure):
        return [why]
    return []


async def admin_round(config: Path, daemons: Sequence[WatcherProcess], commands: Iterable[tuple[tuple[str, ...], int]],
                      *, logs: Path | None = None, concurrently: bool = False) -> list[str]:
    """Run ``commands`` next to the running ``daemons``; every problem found (none: all well). One after another,
    checked after each so a failure names the command that did it; or ``concurrently`` (as monitoring scripts
    and an operator do), checked once all ended."""
    problems: list[str] = []
    commands = list(commands)
    if concurrently:
        results = await asyncio.gather(*(run_cli(config, *args, logs=logs) for args, _ in commands))
        for result, (_, expected) in zip(results, commands, strict=True):
            problems += judge(result, expected)
        together = ", ".join(f"`{' '.join(args)}`" for args, _ in commands)
        for daemon in daemons:
            problems += harm(daemon, f"admin commands run together: {together}")
        return problems
    for args, expected in commands:
        result = await run_cli(config, *args, logs=logs)
        problems += judge(result, expected)
        for daemon in daemons:
            problems += harm(daemon, f"`{' '.join(args)}`")
        if problems:  # the first command that did harm is the one to look at
            break
    return problems


def pick(rng: random.Random, k: int, **kwargs: object) -> list[tuple[tuple[str, ...], int]]:
    """``k`` admin commands drawn with ``rng`` (seeded: a failing round is reproducible)."""
    every = admin_commands(**kwargs)  # type: ignore[arg-type]
    return rng.sample(every, min(k, len(every)))


async def sweeps_ok(server_url: str) -> float:
    """The daemon's count of successful sweeps (``flora_watcher_sweeps_total{outcome="ok"}`` on /metrics)."""
    status, body = await http_get(f"{server_url}/metrics")
    assert status == 200, f"/metrics answered {status}: {body[:200]}"
    for line in body.splitlines():
        if line.startswith('flora_watcher_sweeps_total{outcome="ok"}'):
            return float(line.split()[-1])
    raise AssertionError("no flora_watcher_sweeps_total{outcome=\"ok\"} on /metrics")


async def sweeps_seen(server_url: str, count: int = 2, timeout: float = 60) -> None:
    """Wait until the daemon finished ``count`` more successful sweeps."""
    start = await sweeps_ok(server_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await sweeps_ok(server_url) >= start + count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the daemon did not finish {count} sweeps within {timeout}s")


async def stale_status(config: Path, daemon: WatcherProcess, *, logs: Path | None = None) -> str | None:
    """None when `status` shows the daemon's latest sweep; otherwise what it shows. Two sweeps are awaited after
    noting the time (on the daemon's /metrics), so the second one's commit is surely later: `status --json`'s
    ``last_sweep_ms`` must be too (item 1's "last sweep 112 s ago" while it sweeps every interval)."""
    noted = now_ms()
    await sweeps_seen(await daemon.server_url(), 2)
    result = await run_cli(config, "status", "--json", logs=logs)
    if result.code != 0:
        return f"`status --json` exited {result.code}: {result.err[-400:]!r}"
    last = json.loads(result.out)["meta"]["last_sweep_ms"]
    if last is None or last < noted:
        age = "never" if last is None else f"{(now_ms() - last) / 1000:.1f}s ago"
        return f"`status` is stale: last sweep {age}, though the daemon swept twice since {noted} (issue 24 item 1)"
    return None


async def events_missing(config: Path, delivered_ids: Iterable[str], *, logs: Path | None = None) -> list[str]:
    """Event ids a sink already got that `events --json` does not list (every delivered event was committed
    before it was sent, so the store's history must hold it)."""
    result = await run_cli(config, "events", "--json", logs=logs)
    assert result.code == 0, result.err
    listed = {json.loads(line)["id"] for line in result.out.splitlines() if line.strip()}
    return sorted(set(delivered_ids) - listed)
