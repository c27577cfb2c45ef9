#!/usr/bin/env python3
"""The crash loop over several instances on PostgreSQL (docs/reliability.md): kill -9 the sweeper or the other
instance, again and again, while runs finish; then check every transition reached the webhook receiver.

    .venv/bin/python scripts/crash_loop_pg.py --kills 120 --seed 1 --out crash-pg.json

A throwaway PostgreSQL cluster (initdb into a temp dir, socket only), the simulator and a webhook receiver on
loopback, two real `flora-watcher run` processes (lease 1 s, interval 0.2 s). Each round creates a few runs,
waits a random moment, SIGKILLs the sweeper (half the rounds) or the other instance, measures how long until
another instance holds a valid lease, and restarts the killed one. Before each kill both instances are reloaded
(SIGHUP: the same config, a changed webhook URL, an unparseable file) and one admin command runs next to them
(issue 24; ``--no-operations`` leaves them out). Exits 0 when nothing was lost, every transition arrived under one
webhook-id with one body, every duplicate follows a kill of its sender, and no reload or admin command harmed an
instance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.postgres.cluster import start_cluster
from tests.postgres.multi import fleet
from tests.reliability.ops import REJECTED, RELOADED, UNPARSEABLE, admin_round, pick


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=120, help="SIGKILLs in all (default 120)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lease", type=float, default=1.0, help="[store] lease, seconds (default 1)")
    p.add_argument("--interval", type=float, default=0.2, help="[watch] interval, seconds (default 0.2)")
    p.add_argument("--runs-per-round", type=int, default=6)
    p.add_argument("--max-seconds", type=float, default=1800, help="stop killing after this (default 1800)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--no-operations", dest="operations", action="store_false",
                   help="no reload and admin command before each kill")
    return p.parse_args(argv)


async def operate(f, rng: random.Random, number: int) -> list[str]:
    """Reload every instance (the same config, the webhook's URL changed, or an unparseable file that is rejected
    and put back), then one admin command; what that did to any instance."""
    variant = number % 3
    hook_dir = "/hooks/v2" if number % 6 in (1, 2, 3) else "/hooks"
    for inst in f.instances.values():
        if not inst.proc.alive():
            continue
        if variant == 2:
            inst.proc.config.write_text(UNPARSEABLE)
            await inst.proc.reload(REJECTED, timeout=30)
            inst.rewrite_config(hook_dir=hook_dir)
        else:
            inst.rewrite_config(hook_dir=hook_dir)
            await inst.proc.reload(RELOADED, timeout=30)
    procs = [inst.proc for inst in f.instances.values() if inst.proc.alive()]
    first = next(iter(f.instances.values()))
    return await admin_round(first.proc.config, procs, pick(rng, 1), logs=first.proc.logs)


async def crash_loop(workdir: Path, url: str, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    started = time.monotonic()
    takeovers: list[float] = []
    kills = {"sweeper": 0, "standby": 0}
    ops_problems: list[str] = []
    reloads = 0
    async with fleet(workdir, url, lease=args.lease, interval=args.interval, seed=args.seed) as f:
        for inst in f.instances.values():
            await inst.start()
        await f.wait_sweeper(timeout=30)
        while sum(kills.values()) < args.kills and time.monotonic() - started < args.max_seconds:
            if args.operations:
                ops_problems += await operate(f, rng, reloads)
                reloads += 1
            f.create(args.runs_per_round, rng)
            await asyncio.sleep(rng.uniform(0.1, 1.2))
            sweeper, _, _ = f.sweeper()
            if sweeper not in f.instances:  # between leases: wait for the next sweeper
                sweeper, _ = await f.wait_sweeper(timeout=30)
            if rng.random() < 0.5:
                victim, role = f.instances[sweeper], "sweeper"
            else:
                victim = next(i for n, i in f.instances.items() if n != sweeper)
                role = "standby"
            if not victim.proc.alive():
                await victim.start()
                continue
            await victim.kill()
            kills[role] += 1
            if role == "sweeper":
                _, waited = await f.wait_sweeper(other_than=victim.name, timeout=30)
                takeovers.append(waited)
            await victim.start()
            if sum(kills.values()) % 10 == 0:
                print(f"{sum(kills.values())} kills ({kills['sweeper']} of the sweeper), "
                      f"{len(f.created)} runs, {time.monotonic() - started:.0f}s", flush=True)
        f.create(args.runs_per_round, rng)
        await f.settle(timeout=120)
        verdict = f.verdict()
        requests = len(f.api.requests)
        for inst in f.instances.values():
            await inst.proc.terminate()
    return {
        "kills": kills,
        "runs": len(f.created),
        "transitions": verdict.expected,
        "delivered": verdict.delivered.get("hook", 0),
        "lost": sum(len(v) for v in verdict.lost.values()),
        "duplicates": verdict.duplicates.get("hook", 0),
        "unexplained_duplicates": len(verdict.unexplained),
        "id_conflicts": len(verdict.id_conflicts),
        "body_conflicts": len(verdict.body_conflicts),
        "bad_signatures": verdict.bad_signatures,
        "takeover_s": {
            "count": len(takeovers),
            "median": round(statistics.median(takeovers), 3) if takeovers else None,
            "max": round(max(takeovers), 3) if takeovers else None,
            "bound": args.lease + args.interval,
        },
        "api_requests": requests,
        "reload_rounds": reloads,
        "admin_commands": reloads,
        "ops_problems": ops_problems,
        "seconds": round(time.monotonic() - started, 1),
        "problems": verdict.problems + ops_problems[:5],
    }


async def main_async(args: argparse.Namespace) -> int:
    cluster = start_cluster()
    try:
        url = cluster.create_database("crash")
        with tempfile.TemporaryDirectory(prefix="flora-crash-pg-") as tmp:
            report = await crash_loop(Path(tmp), url, args)
    finally:
        cluster.stop()
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    late = report["takeover_s"]["max"] is not None and report["takeover_s"]["max"] > report["takeover_s"]["bound"] + 0.5
    return 1 if report["problems"] or late else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
