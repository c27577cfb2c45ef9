#!/usr/bin/env python3
"""Bounded soak (docs/reliability.md): the real watcher for ~20 minutes under a steady stream of runs with faults
on, sampled every minute; then faults off, and the outbox must drain to zero with nothing lost.

    /work/venv/bin/python scripts/soak.py --runs 10000 --minutes 20 --out soak-report.json

Every ``--sample`` seconds it records the watcher's RSS and open fds (/proc), its asyncio task count and outbox
depth (its /metrics endpoint), the state store's and WAL's size, and the simulator's request count. Passes when
each of those plateaus (the last third of the run grows no more than ``--growth`` over the middle third, plus a
small absolute allowance), the outbox drains to zero after the faults stop, no transition is lost, the file
sink holds each event once, and the store passes ``PRAGMA integrity_check``. Exit 0 pass, 1 fail. Loopback
only; the generator, the faults and the drain are all bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability.harness import (
    Canaries,
    Receiver,
    SimServer,
    WatcherProcess,
    check,
    find_leaks,
    proc_stats,
    write_config,
)
from watcher.simulator.app import Simulator
from watcher.store import Store, store_path

API_FAULTS: dict[str, Any] = {
    "latency_ms": 5, "latency_jitter_ms": 20,
    "rate_limit_share": 0.02, "retry_after": 1, "retry_after_mode": "seconds",
    "error_burst": [200, 3],
    "malformed_share": 0.01,
    "reset_share": 0.005,
    "stall_share": 0.002, "stall_ms": 2500,
}
# (metric, absolute allowance on top of the relative growth)
PLATEAU_ALLOWANCE = {
    "rss_bytes": 8 << 20, "open_fds": 4, "asyncio_tasks": 10, "store_bytes": 1 << 20, "wal_bytes": 1 << 20,
    "outbox_pending": 50,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000, help="runs created in all (default 10000)")
    p.add_argument("--minutes", type=float, default=20, help="how long runs are created (default 20)")
    p.add_argument("--sample", type=float, default=60, help="seconds between samples (default 60)")
    p.add_argument("--interval", type=float, default=1.0, help="the watcher's sweep interval (default 1)")
    p.add_argument("--max-rps", type=float, default=20, help="the watcher's API budget (default 20)")
    p.add_argument("--keep-delivered", type=float, default=120,
                   help="[delivery] keep_delivered (seconds) of the watcher: the retention horizon must fall inside "
                   "the soak for the store to plateau (default 120; 0 = leave the config default)")
    p.add_argument("--growth", type=float, default=0.10, help="allowed relative growth (default 0.10)")
    p.add_argument("--drain-timeout", type=float, default=300, help="seconds allowed to drain (default 300)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--workdir", type=Path, default=None, help="keep state, logs and events here")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_METRIC = re.compile(r"^(flora_watcher_asyncio_tasks|flora_watcher_outbox_pending)(\{[^}]*\})? ([0-9.eE+-]+)$")


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """asyncio tasks and total outbox depth from the watcher's /metrics."""
    out = {"asyncio_tasks": float("nan"), "outbox_pending": 0.0}
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        text = await resp.text()
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m is None:
            continue
        if m.group(1) == "flora_watcher_asyncio_tasks":
            out["asyncio_tasks"] = float(m.group(3))
        else:
            out["outbox_pending"] += float(m.group(3))
    return out


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def sample(proc: WatcherProcess, session: aiohttp.ClientSession, metrics_url: str, state: Path,
                 sim: Simulator, started: float, phase: str) -> dict[str, Any]:
    row: dict[str, Any] = {"t_s": round(time.monotonic() - started, 1), "phase": phase}
    assert proc.pid is not None
    row.update(proc_stats(proc.pid))
    try:
        row.update({k: int(v) if v == v else None for k, v in (await scrape(session, metrics_url)).items()})
    except (aiohttp.ClientError, TimeoutError) as exc:
        row.update({"asyncio_tasks": None, "outbox_pending": None, "scrape_error": type(exc).__name__})
    db = store_path(state)
    row["store_bytes"] = file_size(db)
    row["wal_bytes"] = file_size(db.with_name(db.name + "-wal"))
    stats = sim.stats()
    row["api_requests"] = stats["requests_total"]
    row["runs"] = stats["runs"]
    return row


def plateau(samples: list[dict[str, Any]], metric: str, growth: float) -> dict[str, Any]:
    """Max of the last third vs max of the middle third of the generator phase."""
    values = [s[metric] for s in samples if s["phase"] == "load" and s.get(metric) is not None]
    if len(values) < 3:
        return {"ok": False, "reason": "too few samples"}
    third = len(values) // 3
    middle = max(values[third:2 * third] or values[:1])
    last = max(values[2 * third:])
    allowed = middle * (1 + growth) + PLATEAU_ALLOWANCE[metric]
    return {"ok": last <= allowed, "middle_max": middle, "last_max": last, "allowed": round(allowed)}


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    canaries = Canaries.fresh()
    seconds = args.minutes * 60
    rate = args.runs / seconds
    sim = Simulator(api_key=canaries.api_key, seed=args.seed)
    events_file = workdir / "events.jsonl"
    port = free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    def sink_mode() -> str | int:  # the receiver misbehaves too, rarely
        roll = rng.random()
        return 500 if roll < 0.01 else 429 if roll < 0.015 else "reset" if roll < 0.018 else "ok"

    samples: list[dict[str, Any]] = []
    async with SimServer(sim) as api, Receiver(mode=sink_mode, delay=lambda: rng.uniform(0, 0.01),
                                            signing_secret=canaries.signing_secret) as hook, \
            aiohttp.ClientSession() as session:
        cfg = write_config(
            workdir, base_url=api.base_url, api_key=canaries.api_key, events_file=events_file,
            webhook_url=f"{hook.origin}/hooks/{canaries.url_token}", signing_secret=canaries.signing_secret,
            interval=args.interval, max_rps=args.max_rps, timeout=2, poll_max_interval=10, concurrency=8,
            backoff_initial=1, backoff_max=10, listen=f"127.0.0.1:{port}",
        )
        if args.keep_delivered:
            text = cfg.read_text()
            cfg.write_text(text.replace("[delivery]\n", f"[delivery]\nkeep_delivered = {args.keep_delivered}\n", 1))
        proc = WatcherProcess(cfg, workdir / "logs")
        await proc.start()
        await proc.wait_for_log('"sweep.finished"', timeout=30)
        started = time.monotonic()
        sim.set_faults(**API_FAULTS)
        sim.start_generator(rate, duration_ms=(2_000, 30_000), pending_ms=(0, 2_000), fail_ratio=0.2,
                            stop_after_ms=int(seconds * 1000))
        print(f"soak: {args.runs} runs at {rate:.2f}/s for {args.minutes:g} min, faults on; watcher pid {proc.pid}",
              flush=True)
        next_sample = started
        flip = 0
        while time.monotonic() - started < seconds:
            if time.monotonic() >= next_sample:
                row = await sample(proc, session, metrics_url, workdir / "state", sim, started, "load")
                samples.append(row)
                print(json.dumps(row), flush=True)
                next_sample += args.sample
                flip += 1
                # shape drift: camelCase and seconds timestamps come and go
                sim.set_faults(camel_case=flip % 3 == 1, seconds_timestamps=flip % 4 == 2)
            if not proc.alive():
                raise SystemExit(f"the watcher died during the soak: exit {proc.proc.returncode}")
            await asyncio.sleep(1)
        sim.stop_generator()
        sim.set_faults(**{k: 0 for k in ("latency_ms", "latency_jitter_ms", "rate_limit_share", "malformed_share",
                                         "reset_share", "stall_share")}, error_burst=None, camel_case=False,
                       seconds_timestamps=False)
        hook.mode = "ok"
        created = list(sim.scenario.runs)
        drain_started = time.monotonic()
        drained = False
        while time.monotonic() - drain_started < args.drain_timeout:
            row = await sample(proc, session, metrics_url, workdir / "state", sim, started, "drain")
            truth = sim.transitions()
            verdict = check(truth=truth, created=created, events_file=events_file, webhook=hook)
            all_done = len(truth) >= len(created)
            if all_done and row["outbox_pending"] == 0 and not verdict.lost["journal"] and not verdict.lost["hook"]:
                drained = True
                samples.append(row)
                print(json.dumps(row), flush=True)
                break
            await asyncio.sleep(2)
        drain_seconds = time.monotonic() - drain_started
        final = await sample(proc, session, metrics_url, workdir / "state", sim, started, "final")
        samples.append(final)
        exit_code = await proc.terminate(30)
        verdict = check(truth=sim.transitions(), created=created, events_file=events_file, webhook=hook)
        api_stats = sim.stats()
        budget = {
            "max_rps": args.max_rps,
            "mean_rps": round(len(api.requests) / max(1.0, time.monotonic() - started), 2),
            "max_in_any_1s": max_in_window_of(api.requests),
        }
    with Store.open(store_path(workdir / "state"), create=False) as store:
        integrity = store.integrity_check()
        summary = store.summary()
    leaks = find_leaks([workdir / "logs", events_file, workdir / "state"], canaries.needles())
    plateaus = {m: plateau(samples, m, args.growth) for m in PLATEAU_ALLOWANCE}
    problems = list(verdict.problems)
    problems += [f"{m} did not plateau: {p}" for m, p in plateaus.items() if not p["ok"]]
    if not drained:
        problems.append(f"the outbox did not drain within {args.drain_timeout:g}s")
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    if exit_code != 0:
        problems.append(f"the watcher exited {exit_code} on SIGTERM")
    if leaks:
        problems.append(f"secrets leaked: {leaks[:5]}")
    return {
        "runs_created": len(created), "minutes": args.minutes, "rate_per_s": round(rate, 2),
        "faults": API_FAULTS, "verdict": verdict.summary(), "drained": drained,
        "drain_seconds": round(drain_seconds, 1), "exit_code": exit_code, "integrity": integrity,
        "store_events": summary.get("events"), "api": {"requests": api_stats["requests_total"],
                                                       "by_status": api_stats["by_status"],
                                                       "faults": api_stats["faults"], **budget},
        "receiver": {"requests": len(hook.received), "accepted": len(hook.accepted())},
        "plateaus": plateaus, "samples": samples, "leaks": len(leaks), "problems": problems,
    }


def max_in_window_of(requests) -> int:
    from tests.reliability.harness import max_in_window

    return max_in_window(sorted(r.at for r in requests), 1.0)


async def main_async(args: argparse.Namespace) -> int:
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = await soak(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="flora-soak-") as tmp:
            report = await soak(args, Path(tmp))
    brief = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(brief, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if not report["problems"] else 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
