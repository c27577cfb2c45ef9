"""Catch-up benchmark (issue 15): runs that finished while the watcher was stopped, reported after its restart.

The watcher starts once against an empty simulator (its first start: nothing from before it is reported) and is
stopped; its state is then moved back in time by the length of the downtime (first start and watermark), as if
it had stopped that long ago. N technique runs are created on the simulator over that downtime (one every 60 ms
of API time: 60,000 runs in an hour), all finished by the time the watcher starts again. The watcher is
restarted with one file sink; the benchmark waits until the file holds N events and reports the wall time from
the restart, the watcher's peak RSS and CPU seconds, the API requests the simulator counted, and lost /
duplicate events. The simulator runs in its own process, so CPU and memory
are the watcher's own.

    python bench/bench_catchup.py                      # 60,000 and 200,000 runs
    python bench/bench_catchup.py --runs 20000
    python bench/bench_catchup.py --write              # also write the figures to bench/RESULTS.md (own section)

Runs only on loopback; every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import _meta
import aiohttp

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk_test_bench_key_0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CREATE_CHUNK = 50_000  # runs per admin request (the simulator takes up to 100,000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Result:
    runs: int
    seconds: float  # restart → the last of the N events in the file
    first_event_s: float | None  # restart → the first event in the file (delivery started while reading)
    read_s: float | None  # the catch-up sweep's own duration (its sweep.finished line), reading and committing
    batches: int  # sweep.catchup log lines: batches committed while the catch-up read on
    load: float  # the machine's 1-minute load average when the watcher was restarted
    cpu_s: float
    rss_mb: float
    requests: dict[str, int]
    lines: int
    unique: int
    expected: int
    late: int

    @property
    def lost(self) -> int:
        return self.expected - self.unique

    @property
    def duplicates(self) -> int:
        return self.lines - self.unique


class Simulator:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.admin = f"http://127.0.0.1:{port}/_sim"
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Simulator:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "watcher", "--log-level", "warning", "simulate", "--port", str(self.port),
            "--api-key", KEY, "--runs", "0", "--seed", "1",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        for _ in range(400):
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(f"{self.admin}/stats") as r:
                    if r.status == 200:
                        return self
            await asyncio.sleep(0.05)
        raise RuntimeError("simulator did not start")

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await self.proc.wait()

    async def post(self, path: str, body: dict) -> dict:
        async with self.session.post(f"{self.admin}{path}", json=body) as r:
            r.raise_for_status()
            return await r.json()

    async def get(self, path: str) -> dict:
        async with self.session.get(f"{self.admin}{path}") as r:
            r.raise_for_status()
            return await r.json()


def write_config(tmp: Path, base: str, out: Path) -> Path:
    cfg = tmp / "watcher.toml"
    cfg.write_text(f"""
[api]
base_url = "{base}"
api_key = "{KEY}"
max_rps = 1000

[watch]
interval = 2
state_dir = "{tmp / 'state'}"

[[sinks]]
name = "journal"
type = "file"
path = "{out}"
""")
    return cfg


async def start_watcher(cfg: Path, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher", "--log-level", "info", "--log-format", "json", "run", "-c", str(cfg),
        stdout=log.open("ab"), stderr=asyncio.subprocess.STDOUT,
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


async def wait_for_log(log: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and needle in log.read_text(errors="replace"):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{needle!r} not in {log} after {timeout:g}s")


async def measure(n: int, *, timeout: float) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-catchup-") as d:
        tmp = Path(d)
        out = tmp / "events.jsonl"
        log = tmp / "watcher.log"
        async with Simulator(free_port()) as sim:
            cfg = write_config(tmp, sim.base, out)
            first = await start_watcher(cfg, log)
            await wait_for_log(log, '"sweep.finished"', 60)
            await stop(first)
            # The downtime: the watcher stopped `span` ms ago; N runs created meanwhile, all finished now.
            span = max(60_000, n * 60)
            stopped = int(time.time() * 1000) - span - 10_000
            with sqlite3.connect(tmp / "state" / "state.sqlite3") as conn:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'first_start_ms' OR key LIKE 'high_watermark_ms:%'",
                             (str(stopped),))
            left = n
            while left:
                chunk = min(CREATE_CHUNK, left)
                await sim.post("/runs", {"count": chunk, "pending_ms": [0, 10], "running_ms": [10, 1000],
                                         "fail_ratio": 0.15, "created_at_offset_ms": [-span, -3_000]})
                left -= chunk
            await asyncio.sleep(1.5)  # the newest runs finish (created ≥ 3 s ago, ≤ 1.01 s long)
            transitions = await sim.get("/transitions")
            await sim.post("/stats/reset", {})
            load = os.getloadavg()[0]
            log_at = log.stat().st_size
            started = time.monotonic()
            proc = await start_watcher(cfg, log)
            rss = cpu = 0.0
            first_event: float | None = None
            lines = 0
            try:
                while time.monotonic() - started < timeout:
                    await asyncio.sleep(0.25)
                    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                        rss = max(rss, peak_rss_mb(proc.pid))
                        cpu = cpu_seconds(proc.pid)
                    lines = count_lines(out)
                    if lines and first_event is None:
                        first_event = time.monotonic() - started
                    if lines >= n:
                        break
                seconds = time.monotonic() - started
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    rss = max(rss, peak_rss_mb(proc.pid))
                    cpu = cpu_seconds(proc.pid)
            finally:
                await stop(proc)
            stats = await sim.get("/stats")
            read_s, batches = catchup_sweep(log, log_at, n)
        ids, late = [], 0
        with out.open() as f:
            for line in f:
                obj = json.loads(line)
                ids.append(obj["id"])
                late += bool(obj["data"].get("late"))
        expected = len(transitions) if isinstance(transitions, list) else len(transitions.get("transitions", []))
        by_route = {route: sum(codes.values()) for route, codes in stats.get("by_route", {}).items()}
        return Result(runs=n, seconds=seconds, first_event_s=first_event, read_s=read_s, batches=batches, load=load,
                      cpu_s=cpu, rss_mb=rss,
                      requests=by_route, lines=len(ids), unique=len(set(ids)), expected=expected, late=late)


def catchup_sweep(log: Path, offset: int, n: int) -> tuple[float | None, int]:
    """From the restarted watcher's log: the duration of the sweep that read the catch-up (the first that
    observed at least ``n`` runs), and how many batches it logged."""
    seconds, batches = None, 0
    with log.open("rb") as f:
        f.seek(offset)
        for raw in f:
            if b'"sweep.catchup"' in raw:
                batches += 1
            elif seconds is None and b'"sweep.finished"' in raw:
                with contextlib.suppress(ValueError):
                    line = json.loads(raw)
                    if line.get("observed", 0) >= n:
                        seconds = float(line["seconds"])
    return seconds, batches


SECTION = "## Catch-up after a downtime (issue 15)"


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of RESULTS.md (up to the next ``## ``), or append it."""
    old = path.read_text() if path.exists() else ""
    start = old.find(SECTION)
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    end = old.find("\n## ", start + len(SECTION))
    rest = "" if end < 0 else old[end + 1:]
    path.write_text(old[:start] + text + ("\n" + rest if rest else ""))


def report(results: list[Result], meta: _meta.Meta) -> str:
    head = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"## Catch-up after a downtime (issue 15) — {head}",
        "",
        meta.markdown(),
        "- setup: one file sink; runs created while the watcher was stopped, all finished before its restart; "
        "simulator in its own process.",
        "",
        "| runs finished while stopped | all reported after | first event after | catch-up sweep (batches) "
        "| peak RSS | CPU | API requests | events / late / lost / duplicate | load avg at start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        reqs = sum(r.requests.values())
        first = "—" if r.first_event_s is None else f"{r.first_event_s:.1f} s"
        read = "—" if r.read_s is None else f"{r.read_s:.1f} s"
        lines.append(f"| {r.runs:,} | {r.seconds:.1f} s | {first} | {read} ({r.batches}) | {r.rss_mb:.0f} MB "
                     f"| {r.cpu_s:.1f} s | {reqs:,} | {r.lines:,} / {r.late:,} / {r.lost} / {r.duplicates} "
                     f"| {r.load:.1f} |")
    lines.append("")
    for r in results:
        routes = ", ".join(f"{k} {v:,}" for k, v in sorted(r.requests.items()))
        lines.append(f"- {r.runs:,} runs: {routes}")
    return "\n".join(lines) + "\n"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, action="append", help="runs finished during the downtime (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds per size")
    parser.add_argument("--write", action="store_true", help="write the figures to bench/RESULTS.md (own section)")
    args = parser.parse_args()
    sizes = args.runs or [60_000, 200_000]
    meta = _meta.start("bench/bench_catchup.py", sys.argv[1:])
    results = []
    for n in sizes:
        r = await measure(n, timeout=args.timeout)
        print(f"{n:>7,} runs: {r.seconds:.1f} s, first event {r.first_event_s}, catch-up sweep {r.read_s} s "
              f"({r.batches} batches), load {r.load:.1f}, peak RSS {r.rss_mb:.0f} MB, "
              f"CPU {r.cpu_s:.1f} s, requests {sum(r.requests.values()):,}, events {r.lines:,} "
              f"(late {r.late:,}, lost {r.lost}, duplicates {r.duplicates})", flush=True)
        results.append(r)
    meta.finish()
    text = report(results, meta)
    print(text)
    if args.write:
        write_section(ROOT / "bench" / "RESULTS.md", text)


if __name__ == "__main__":
    asyncio.run(main())
