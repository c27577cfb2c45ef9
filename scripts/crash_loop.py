#!/usr/bin/env python3
"""The long crash-consistency run (docs/reliability.md): many SIGKILL/crash-point rounds against the real watcher.

    /work/venv/bin/python scripts/crash_loop.py --rounds 240 --seed 1 --out crash-report.json

Rounds are run in batches (``--batch`` rounds per batch, each batch a fresh simulator, state and receivers, so a
failure names a small reproducible batch: ``--seed`` + batch number). Exits 0 when every batch passed, 1 when any
check failed, and stops starting new batches after ``--max-seconds``. Loopback only.

Each random-kill round first reloads the daemon (SIGHUP: the same config, a changed webhook URL, an unparseable
file) and runs one admin command next to it (issue 24); ``--no-operations`` leaves them out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability.crashloop import MODES, crash_loop


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=240, help="crash rounds in all (default 240)")
    p.add_argument("--batch", type=int, default=40, help="rounds per batch (default 40)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first batch; batch i uses seed + i")
    p.add_argument("--probability", type=float, default=0.3, help="crash point probability (default 0.3)")
    p.add_argument("--max-seconds", type=float, default=1800, help="start no batch after this (default 1800)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--keep", type=Path, default=None, help="keep each batch's work directory under this one")
    p.add_argument("--apprise", action="store_true",
                   help="add an apprise sink (json:// to a third receiver; needs flora-watcher[apprise])")
    p.add_argument("--no-operations", dest="operations", action="store_false",
                   help="no reload and admin command before each random kill")
    return p.parse_args(argv)


async def main_async(args: argparse.Namespace) -> int:
    started = time.monotonic()
    batches = []
    done = 0
    index = 0
    while done < args.rounds and time.monotonic() - started < args.max_seconds:
        rounds = min(args.batch, args.rounds - done)
        seed = args.seed + index
        if args.keep:
            workdir = args.keep / f"batch-{index:03d}"
            workdir.mkdir(parents=True, exist_ok=True)
            report = await crash_loop(workdir, rounds=rounds, seed=seed, modes=MODES, probability=args.probability,
                                      operations=args.operations, apprise=args.apprise)
        else:
            with tempfile.TemporaryDirectory(prefix="flora-crash-") as tmp:
                report = await crash_loop(Path(tmp), rounds=rounds, seed=seed, modes=MODES,
                                          probability=args.probability, operations=args.operations,
                                          apprise=args.apprise)
        summary = {"batch": index, "seed": seed, **report.summary(), "problems": report.problems}
        batches.append(summary)
        done += rounds
        index += 1
        status = "ok" if not report.problems else "FAILED: " + "; ".join(report.problems)
        print(f"batch {index}: {rounds} rounds, {report.created} runs, {report.deaths} deaths, "
              f"{report.reloads} reloads, {report.admin_commands} admin commands, "
              f"hook duplicates {report.verdict.duplicates.get('hook', 0)}, {report.seconds:.0f}s — {status}",
              flush=True)
    total = {
        "rounds": done,
        "batches": len(batches),
        "runs_created": sum(b["runs_created"] for b in batches),
        "expected_transitions": sum(b["expected"] for b in batches),
        "deaths": sum(b["deaths"] for b in batches),
        "deaths_by_cause": _sum_dicts(b["deaths_by_cause"] for b in batches),
        "lost": _sum_dicts(b["lost"] for b in batches),
        "spurious": _sum_dicts(b["spurious"] for b in batches),
        "duplicates": _sum_dicts(b["duplicates"] for b in batches),
        "unexplained_duplicates": sum(b["unexplained_duplicates"] for b in batches),
        "id_conflicts": sum(b["id_conflicts"] for b in batches),
        "body_conflicts": sum(b["body_conflicts"] for b in batches),
        "torn_lines": sum(b["torn_lines"] for b in batches),
        "bad_signatures": sum(b["bad_signatures"] for b in batches),
        "authorization_to_receivers": sum(b["foreign_auth"] for b in batches),
        "late_events": sum(b["late_events"] for b in batches),
        "integrity_ok": all(b["integrity"] == "ok" for b in batches),
        "leaks": sum(b["leaks"] for b in batches),
        **({"apprise": _sum_dicts(b["apprise"] for b in batches)} if args.apprise else {}),
        "reloads": sum(b["reloads"] for b in batches),
        "admin_commands": sum(b["admin_commands"] for b in batches),
        "ops_problems": sum(b["ops_problems"] for b in batches),
        "failed_batches": [b["batch"] for b in batches if b["problems"]],
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(total, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"total": total, "batches": batches}, indent=2) + "\n")
    return 0 if done >= args.rounds and not total["failed_batches"] else 1


def _sum_dicts(dicts) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
