"""Store benchmark: the sweep's commit at steady state, CPU per commit_sweep call, as an interleaved A/B.

The workload is the shape the 10,000-active-run engine commits (bench/RESULTS.md, issue 10: ~139 commits in
75 s with ~360 tracked-row upserts, ~80 deletes, ~75 new events to 2 sinks each, and the sweep's meta keys):
the store starts with ``--tracked`` runs, then ``--commits`` such commits are timed with ``time.process_time``
in the process that calls ``Store.commit_sweep`` directly (encoding the rows, SQLite's work and the fsyncs'
CPU; not the wall time, which the disk decides). With ``--postgres URL`` it is ``PgStore.commit_sweep`` on that
database instead (the client's CPU only: the server's is not counted).

``--ab DIR`` measures the watcher from the checkout DIR (the base) and from this one in turns, ``--rounds``
times each, every round a fresh process and a fresh store, so a busy shared machine's drift falls on both.
``--callgrind`` counts the instructions of the timed commits instead (valgrind's callgrind, switched on for
them only; SQLite's C code included): the same figure for the same build whatever the machine's load.

    python bench/bench_store.py                         # this checkout, 3 rounds
    python bench/bench_store.py --ab /tmp/base --rounds 6
    python bench/bench_store.py --ab /tmp/base --callgrind --rounds 1
    python bench/bench_store.py --ab /tmp/base --postgres postgresql://…/db   # each round empties its schema
    python bench/bench_store.py --ab /tmp/base --write  # also append the figures to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _meta

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_764_400_000_000
SINKS = ("ops", "journal")


# ------------------------------------------------------------------------------------- one measurement


def workload(args: argparse.Namespace) -> tuple[list, list[dict]]:
    """The initial tracked runs and, per commit, its arguments (built before timing starts)."""
    from watcher.model import Event, Run, Technique, TrackedRun, event_id

    def run(i: int, status: str = "running", progress: float = 10.0) -> Run:
        return Run(run_id=f"run_{i:06d}", status=status, progress=progress, created_at=T0 + i,
                   workspace_id="ws_1", project_id="prj_1", technique=Technique("tech_1", "Bench"),
                   poll_url=f"https://app.flora.ai/api/v1/runs/run_{i:06d}")

    def tracked(r: Run, now: int) -> TrackedRun:
        return TrackedRun(run=r, first_seen_ms=T0, last_change_ms=now)

    initial = [tracked(run(i), T0) for i in range(args.tracked)]
    commits, next_id, live = [], args.tracked, list(range(args.tracked))
    for c in range(args.commits):
        now = T0 + 5_000 * (c + 1)
        finished, live = live[: args.deletes], live[args.deletes:]
        moved = live[: args.upserts - args.deletes]
        live = live[len(moved):] + moved  # the next commit moves others
        new = list(range(next_id, next_id + args.deletes))
        next_id += args.deletes
        live += new
        events = []
        for i in finished[: args.events]:
            r = run(i, "completed", 100.0)
            data = {**r.to_dict(), "previous_status": "running", "late": False}
            events.append((Event(event_id(r.run_id, "run.completed"), "run.completed", now, data), list(SINKS)))
        commits.append({
            "upserts": [tracked(run(i, progress=10.0 + c % 80), now) for i in moved + new],
            "deletes": [f"run_{i:06d}" for i in finished],
            "events": events,
            "meta": {"last_sweep_ms": str(now), "high_watermark_ms:*|*|*": str(now)},
            "now_ms": now,
        })
    return initial, commits


def measure(args: argparse.Namespace) -> dict:
    """In this process: fill a fresh store, time the commits. The watcher is whatever ``import watcher`` finds."""
    import watcher

    initial, commits = workload(args)
    if args.postgres:
        return asyncio.run(_measure_pg(args, initial, commits)) | {"watcher": str(Path(watcher.__file__).parent)}
    from watcher.store import Store

    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "state.sqlite3") as store:
        store.commit_sweep(upserts=initial, deletes=[], events=[], meta={}, now_ms=T0)
        cpu = []
        handshake(args, "measure")
        for kw in commits:
            started = time.process_time()
            store.commit_sweep(**kw)
            cpu.append(time.process_time() - started)
        handshake(args, "done")
    return {"cpu_s": cpu, "watcher": str(Path(watcher.__file__).parent)}


def handshake(args: argparse.Namespace, word: str) -> None:
    """Under callgrind: the parent switches counting on ("measure") and off ("done"), then answers."""
    if args.callgrind:
        print(word, flush=True)
        sys.stdin.readline()


async def _measure_pg(args: argparse.Namespace, initial: list, commits: list[dict]) -> dict:
    import psycopg

    from watcher.store_pg import PgStore

    with psycopg.connect(args.postgres, autocommit=True) as conn:  # a fresh schema for every round
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    store = await PgStore.open(args.postgres)
    try:
        await store.commit_sweep(upserts=initial, deletes=[], events=[], meta={}, now_ms=T0)
        cpu = []
        handshake(args, "measure")
        for kw in commits:
            started = time.process_time()
            await store.commit_sweep(**kw)
            cpu.append(time.process_time() - started)
        handshake(args, "done")
    finally:
        await store.aclose()
    return {"cpu_s": cpu}


# ------------------------------------------------------------------------------------------ the rounds


def child(src: Path, args: argparse.Namespace) -> float:
    """One measurement in a fresh process, with the watcher package from the checkout ``src``: CPU ms per
    commit, or with ``--callgrind`` thousands of instructions per commit."""
    argv = [sys.executable, __file__, "--measure", "--tracked", str(args.tracked), "--commits", str(args.commits),
            "--upserts", str(args.upserts), "--deletes", str(args.deletes), "--events", str(args.events)]
    if args.postgres:
        argv += ["--postgres", args.postgres]
    env = {**os.environ, "PYTHONPATH": str(src)}
    if not args.callgrind:
        out = subprocess.run(argv, env=env, cwd=src, capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        check_source(result, src)
        return 1000 * statistics.mean(result["cpu_s"])
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if not valgrind or not control:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="flora-callgrind-") as tmp:
        trace = Path(tmp) / "callgrind.out"
        proc = subprocess.Popen([valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={trace}",
                                 *argv, "--callgrind"], env=env, cwd=src, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        last = ""
        for line in proc.stdout:
            last = line.strip() or last
            if last in ("measure", "done"):
                subprocess.run([control, "-i", "on" if last == "measure" else "off", str(proc.pid)], check=True,
                               stdout=subprocess.DEVNULL)
                proc.stdin.write("\n")
                proc.stdin.flush()
        if proc.wait() != 0:
            raise SystemExit(f"the measurement under callgrind exited with {proc.returncode}")
        check_source(json.loads(last), src)
        totals = re.search(r"^totals: (\d+)", trace.read_text(), re.MULTILINE)
        if totals is None:
            raise SystemExit("callgrind wrote no totals")
        return int(totals.group(1)) / args.commits / 1000


def check_source(result: dict, src: Path) -> None:
    assert Path(result["watcher"]).resolve() == (src / "watcher").resolve(), result["watcher"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracked", type=int, default=10_000, help="tracked runs in the store (default 10,000)")
    ap.add_argument("--commits", type=int, default=100, help="timed commits per round (default 100)")
    ap.add_argument("--upserts", type=int, default=360, help="tracked rows written per commit (default 360)")
    ap.add_argument("--deletes", type=int, default=80, help="finished runs forgotten (and new ones) per commit")
    ap.add_argument("--events", type=int, default=75, help="new events per commit, 2 sinks each (default 75)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ab", type=Path, metavar="DIR", help="also measure the checkout DIR (the base), in turns")
    ap.add_argument("--postgres", metavar="URL", help="PgStore on this database (its public schema is emptied)")
    ap.add_argument("--callgrind", action="store_true", help="count instructions instead of CPU time (valgrind)")
    ap.add_argument("--write", action="store_true", help="append the figures to bench/RESULTS.md")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.events > args.deletes:
        ap.error("--events cannot exceed --deletes (an event is a run that finished)")
    if args.measure:
        print(json.dumps(measure(args)))
        return 0

    shown = list(sys.argv[1:] if argv is None else argv)
    if args.postgres:
        shown[shown.index(args.postgres)] = "URL"
    extra = {"base": f"{args.ab} at {_meta.commit_of(args.ab)}"} if args.ab else {}
    meta = _meta.start("bench/bench_store.py", shown, **extra)
    builds = [("base", args.ab.resolve()), ("this", ROOT)] if args.ab else [("this", ROOT)]
    figures: dict[str, list[float]] = {name: [] for name, _ in builds}
    unit = "k instructions" if args.callgrind else "ms CPU"
    for r in range(args.rounds):
        for name, src in builds:
            value = child(src, args)
            figures[name].append(value)
            print(f"round {r + 1} {name:>4}: {value:.2f} {unit} per commit_sweep", flush=True)
    meta.finish()
    backend = "PostgreSQL (the client's side)" if args.postgres else "SQLite"
    lines = [f"- setup: {backend}; {args.tracked:,} tracked runs; each commit {args.upserts} upserts, "
             f"{args.deletes} deletes, {args.events} events × {len(SINKS)} sinks, 2 meta keys; "
             f"{args.commits} commits a round, {args.rounds} rounds, builds in turns, a fresh process each"]
    for name, values in figures.items():
        lines.append(f"- {name}: **{statistics.median(values):.2f} {unit}** per commit (median of rounds; "
                     + " / ".join(f"{v:.2f}" for v in values) + ")")
    if args.ab:
        ratio = statistics.median(figures["this"]) / statistics.median(figures["base"])
        lines.append(f"- this ÷ base: **{ratio:.2f}**")
    print("\n".join(lines))
    if args.write:
        what = "instructions" if args.callgrind else "CPU"
        entry = (f"\n### {meta.started} — commit_sweep {what} ({backend})\n\n{meta.markdown()}\n"
                 + "\n".join(lines) + "\n")
        results = ROOT / "bench" / "RESULTS.md"
        heading = "## The sweep's commit: the cost of one commit_sweep (bench_store.py)"
        text = results.read_text()
        if heading not in text:
            text = text.rstrip("\n") + f"\n\n{heading}\n"
        start = text.index(heading) + len(heading)
        nxt = text.find("\n## ", start)
        end = len(text) if nxt == -1 else nxt
        results.write_text(text[:end].rstrip("\n") + "\n" + entry + text[end:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
