"""Steady sweeps on a fixed workload: the watcher's cost per sweep, without the noise of wall-clock time.

The simulator (seeded; the engine benchmark's generator: runs of 20-120 s, 15 % fail, already in steady state)
serves on loopback from a process of its own, on a clock this benchmark sets (a shared 8-byte file): the
watcher's ``Sweeper`` (the daemon's: API client, parse memo, transition rules, SQLite store, a sink routed but
not sent) sweeps it on a ``FakeClock`` moved on by the interval between sweeps. So every run sees the same pages,
in the same order, with the same transitions, whatever the machine's load.

Two measures of a steady sweep (after ``--warm`` sweeps):

- default: the process's CPU time per sweep (``time.process_time``: the sweep and the store thread). Less
  noisy than wall time, but still moved by a busy machine (caches, frequency): compare builds back to back.
- ``--callgrind``: the instructions the watcher's process executes per sweep, counted by valgrind's callgrind
  (instrumentation switched on for the measured sweeps only). The same for the same build on any load:
  the figure to compare builds by on a shared machine. (About 50x slower while counting.)

It measures what a sweep costs (listing, decoding, parsing, detection, the commit), not delivery
(``bench_delivery.py``) nor the whole daemon (``bench_engine.py``, ``profile_engine.py``).

    python bench/bench_sweep.py                          # 10,000 active runs, 4 warm-up sweeps, 8 measured
    python bench/bench_sweep.py --active 1000
    python bench/bench_sweep.py --callgrind --sweeps 3   # instructions per sweep
    python bench/bench_sweep.py --cprofile /tmp/s.prof   # and a cProfile of the measured sweeps
    PYTHONPATH=/tmp/base python bench/bench_sweep.py     # another checkout's watcher (an A/B)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import mmap
import os
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _meta

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(ROOT))

from tests.fakes import FakeClock  # noqa: E402

KEY = "sk_test_bench_sweep_0123456789"
EPOCH_MS = 1_764_399_000_000


class SharedClock(FakeClock):
    """A FakeClock whose wall-clock reading is also written to ``path`` (8 bytes), for the simulator process."""

    def __init__(self, path: Path) -> None:
        path.write_bytes(b"\0" * 8)
        self._file = open(path, "r+b")  # open while the clock lives
        self._map = mmap.mmap(self._file.fileno(), 8)
        super().__init__(0.0, epoch_ms=EPOCH_MS)
        self._publish()

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self._publish()

    def _publish(self) -> None:
        self._map[:8] = struct.pack("<q", self.now_ms())


def serve_simulator(clock_path: str, rate: float, seed: int) -> None:
    """The simulator process: serves on an OS-chosen port (printed), on the shared clock, until stdin closes."""
    from watcher.simulator import run_simulator

    with open(clock_path, "rb") as f:
        shared = mmap.mmap(f.fileno(), 8, access=mmap.ACCESS_READ)

    def now_ms() -> int:
        return struct.unpack("<q", shared[:8])[0]

    async def main() -> None:
        async with run_simulator(api_key=KEY, seed=seed, clock=now_ms) as running:
            running.sim.start_generator(rate, duration_ms=(20_000, 120_000), pending_ms=(0, 2_000),
                                        fail_ratio=0.15, warm=True)
            print(running.port, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


async def sweeps(args: argparse.Namespace, base_url: str, clock: SharedClock, tmp: Path) -> dict[str, Any]:
    """Warm-up sweeps, then the measured ones; with ``--child`` (under callgrind) it asks the parent to switch
    counting on and off around the measured ones."""
    from watcher.api import FloraClient
    from watcher.config import WatchConfig
    from watcher.secret import Secret
    from watcher.store import AsyncStore, Store
    from watcher.sweep import Sweeper

    store = AsyncStore(Store.open(tmp / "state.db"))
    watch = WatchConfig(interval=args.interval, state_dir=tmp)
    sinks = [file_sink(tmp / "events.jsonl")]  # routed, not sent
    client = FloraClient(base_url, Secret(KEY), timeout=30, max_rps=1e6, clock=clock)
    sweeper = Sweeper(client, store, watch=watch, sinks=sinks, clock=clock, rand=random.Random(args.seed))
    await sweeper.load()
    cpu: list[float] = []
    per_sweep: list[dict[str, int]] = []
    profiler = None
    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
    try:
        for i in range(args.warm + args.sweeps):
            if args.child and i == args.warm:
                handshake("measure")
            if profiler is not None and i >= args.warm:
                profiler.enable()
            t0 = time.process_time()
            result = await sweeper.sweep()
            t1 = time.process_time()
            if profiler is not None:
                profiler.disable()
            if not result.ok:
                raise RuntimeError(f"sweep {i} failed: {result.error}")
            if i >= args.warm:
                cpu.append(t1 - t0)
                per_sweep.append({"pages": result.pages, "observed": result.observed, "polls": result.polls,
                                  "events": result.new_events, "tracked": len(sweeper.tracked)})
            clock.advance(args.interval)
        if args.child:
            handshake("done")
        if profiler is not None:
            profiler.dump_stats(args.cprofile)
    finally:
        await client.close()
        await store.aclose()
    return {"cpu": cpu, "sweeps": per_sweep}


def file_sink(path: Path) -> Any:
    try:
        from watcher.sinks.registry import sink_config
    except ImportError:  # a checkout from before sinks/registry (an A/B against an older build)
        from watcher.config import SinkConfig

        return SinkConfig(name="journal", type="file", path=path)
    return sink_config(name="journal", type="file", path=path)


def handshake(word: str) -> None:
    print(word, flush=True)
    sys.stdin.readline()


async def one_round(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flora-bench-sweep-") as tmpdir:
        tmp = Path(tmpdir)
        clock = SharedClock(tmp / "clock")
        sim = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--serve-simulator", str(tmp / "clock"),
            str(args.active / 70), str(args.seed),  # mean duration 70 s
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert sim.stdout is not None and sim.stdin is not None
        try:
            port = int(await asyncio.wait_for(sim.stdout.readline(), 30))
            return await sweeps(args, f"http://127.0.0.1:{port}/api/v1", clock, tmp)
        finally:
            sim.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sim.wait(), 10)
            if sim.returncode is None:
                sim.kill()


def callgrind(args: argparse.Namespace) -> int:
    """This benchmark under callgrind, counting only the measured sweeps; returns the instructions."""
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if not valgrind or not control:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="flora-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", sys.executable,
               str(Path(__file__).resolve()), "--child", "--active", str(args.active), "--warm", str(args.warm),
               "--sweeps", str(args.sweeps), "--interval", str(args.interval), "--seed", str(args.seed)]
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True)
        assert child.stdin is not None and child.stdout is not None
        for line in child.stdout:
            word = line.strip()
            if word in ("measure", "done"):
                subprocess.run([control, "-i", "on" if word == "measure" else "off", str(child.pid)],
                               check=True, stdout=subprocess.DEVNULL)
                child.stdin.write("\n")
                child.stdin.flush()
        if child.wait() != 0:
            raise SystemExit(f"the benchmark under callgrind exited with {child.returncode}")
        totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        if totals is None:
            raise SystemExit("callgrind wrote no totals")
        return int(totals.group(1))


def main() -> None:
    if "--serve-simulator" in sys.argv:
        i = sys.argv.index("--serve-simulator")
        serve_simulator(sys.argv[i + 1], float(sys.argv[i + 2]), int(sys.argv[i + 3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--active", type=int, default=10_000, help="active runs (default 10,000)")
    ap.add_argument("--sweeps", type=int, default=8, help="measured sweeps (default 8)")
    ap.add_argument("--warm", type=int, default=4, help="sweeps before measuring (default 4)")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1, help="repeat with fresh state (default 1)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--callgrind", action="store_true", help="count instructions instead (valgrind)")
    ap.add_argument("--cprofile", metavar="FILE", help="also write a cProfile of the measured sweeps (main thread)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import watcher
    from watcher import logs
    from watcher.commands.run import tune_gc

    where = watcher.__file__.rsplit("/watcher/", 1)[0]
    meta = None
    if not args.child:
        other = Path(where).resolve() != ROOT
        meta = _meta.start("bench/bench_sweep.py", sys.argv[1:],
                           **({"watcher under test": f"{_meta.commit_of(Path(where))} ({where})"} if other else {}))
    load = os.getloadavg()[0]
    if args.callgrind:
        instructions = [callgrind(args) for _ in range(args.rounds)]
        per = [n / args.sweeps for n in instructions]
        print(f"watcher {where}; {args.active:,} active runs, {args.warm} warm-up + {args.sweeps} counted sweeps "
              f"x {len(per)}; instructions a sweep (callgrind): "
              + ", ".join(f"{p / 1e6:,.1f} M" for p in per))
        if meta is not None:
            meta.finish()
        return
    logs.configure(fmt="json", level="warning")  # as bench_engine runs the daemon
    tune_gc()  # the daemon's garbage-collector settings
    rounds = [asyncio.run(one_round(args)) for _ in range(args.rounds)]
    if args.child:
        return
    per_round = [sum(r["cpu"]) / len(r["cpu"]) for r in rounds]
    every = [c for r in rounds for c in r["cpu"]]
    counts = rounds[0]["sweeps"]
    mean = {k: sum(s[k] for s in counts) / len(counts) for k in counts[0]}
    print(f"watcher {where}; {args.active:,} active runs, interval {args.interval:g} s, {args.warm} warm-up + "
          f"{args.sweeps} measured sweeps x {len(rounds)} round(s); load average {load:.1f} → "
          f"{os.getloadavg()[0]:.1f}")
    print("a sweep: " + ", ".join(f"{k} {v:,.0f}" for k, v in mean.items()))
    print(f"CPU a sweep (process): median {statistics.median(every) * 1000:.1f} ms, min {min(every) * 1000:.1f} ms; "
          f"round means " + ", ".join(f"{c * 1000:.1f}" for c in per_round) + " ms; "
          f"= {statistics.median(every) / args.interval * 100:.2f} % of a core at one sweep every {args.interval:g} s")
    if meta is not None:
        meta.finish()


if __name__ == "__main__":
    main()
