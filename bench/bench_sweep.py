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
(``bench_delivery.py``) nor the whole daemon (``bench_engine.py``, ``profile_engine.py``) — unless ``--deliver``:
then the routed sink is a signed webhook to a receiver in a process of its own (``bench_delivery.py``'s), the
daemon's ``Dispatcher`` runs on the same clock, and each measured sweep also delivers what it found before the
clock moves on (the sweep, then its deliveries: claims or hand-offs, sends, outcome commits, the workers'
rechecks). It also counts the store calls per sweep by method, and the events delivered.

    python bench/bench_sweep.py                          # 10,000 active runs, 4 warm-up sweeps, 8 measured
    python bench/bench_sweep.py --active 1000
    python bench/bench_sweep.py --callgrind --sweeps 3   # instructions per sweep
    python bench/bench_sweep.py --cprofile /tmp/s.prof   # and a cProfile of the measured sweeps
    python bench/bench_sweep.py --deliver --callgrind    # a sweep and the delivery of its events
    PYTHONPATH=/tmp/base python bench/bench_sweep.py     # another checkout's watcher (an A/B)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mmap
import os
import random
import statistics
import struct
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

    def __init__(self, path: Path, *, deadlines_jump: bool = True) -> None:
        path.write_bytes(b"\0" * 8)
        self._file = open(path, "r+b")  # open while the clock lives
        self._map = mmap.mmap(self._file.fileno(), 8)
        super().__init__(0.0, epoch_ms=EPOCH_MS, deadlines_jump=deadlines_jump)
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


async def sweeps(args: argparse.Namespace, base_url: str, clock: SharedClock, tmp: Path,
                 receiver_port: int | None = None) -> dict[str, Any]:
    """Warm-up sweeps, then the measured ones; with ``--child`` (under callgrind) it asks the parent to switch
    counting on and off around the measured ones. With a receiver (``--deliver``) the dispatcher delivers each
    sweep's events before the clock moves on."""
    from watcher.api import FloraClient
    from watcher.config import WatchConfig
    from watcher.secret import Secret
    from watcher.store import AsyncStore, Store
    from watcher.sweep import Sweeper

    store = AsyncStore(Store.open(tmp / "state.db"))
    calls = count_store_calls(store)
    watch = WatchConfig(interval=args.interval, state_dir=tmp)
    if receiver_port is None:
        sinks = [file_sink(tmp / "events.jsonl")]  # routed, not sent
    else:
        sinks = [webhook_sink(receiver_port)]
    client = FloraClient(base_url, Secret(KEY), timeout=30, max_rps=1e6, clock=clock)
    delivery = Delivery(sinks, store, clock, args.seed) if receiver_port is not None else None
    sweeper = Sweeper(client, store, watch=watch, sinks=sinks, clock=clock, rand=random.Random(args.seed),
                      **({} if delivery is None else {"on_commit": delivery.committed}))
    await sweeper.load()
    if delivery is not None:
        await delivery.start()
        if hasattr(sweeper, "handoff"):  # commits hand their deliveries to the workers (as the daemon wires it)
            sweeper.handoff = delivery.dispatcher
            delivery.wake_on_commit = False
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
            before = dict(calls)
            delivered = delivery.delivered if delivery is not None else 0
            t0 = time.process_time()
            result = await sweeper.sweep()
            if delivery is not None:
                await delivery.settled()
            t1 = time.process_time()
            if profiler is not None:
                profiler.disable()
            if not result.ok:
                raise RuntimeError(f"sweep {i} failed: {result.error}")
            if i >= args.warm:
                cpu.append(t1 - t0)
                row = {"pages": result.pages, "observed": result.observed, "polls": result.polls,
                       "events": result.new_events, "tracked": len(sweeper.tracked)}
                if delivery is not None:
                    row["delivered"] = delivery.delivered - delivered
                    row.update({f"store.{k}": calls[k] - before.get(k, 0) for k in sorted(calls)})
                per_sweep.append(row)
            clock.advance(args.interval)
        if args.child:
            handshake("done")
        if profiler is not None:
            profiler.dump_stats(args.cprofile)
    finally:
        if delivery is not None:
            await delivery.stop()
        await client.close()
        await store.aclose()
    return {"cpu": cpu, "sweeps": per_sweep}


def count_store_calls(store: Any) -> dict[str, int]:
    """Count the calls of every coroutine of ``store`` (by name), wrapping them on the instance."""
    import inspect

    calls: dict[str, int] = {}
    for name in dir(type(store)):
        fn = getattr(store, name, None)
        if name.startswith("_") or not inspect.iscoroutinefunction(fn) or name in ("aclose",):
            continue

        def wrap(fn: Any, name: str) -> Any:
            async def counted(*args: Any, **kwargs: Any) -> Any:
                calls[name] = calls.get(name, 0) + 1
                return await fn(*args, **kwargs)
            return counted

        setattr(store, name, wrap(fn, name))
    return calls


class Delivery:
    """``--deliver``: the daemon's Dispatcher for the webhook sink, on the benchmark's clock; ``settled()`` waits
    (real time, a liveness bound) until every delivery committed so far has its outcome committed."""

    def __init__(self, sink_configs: list[Any], store: Any, clock: SharedClock, seed: int) -> None:
        self.configs = sink_configs
        self.store = store
        self.clock = clock
        self.seed = seed
        self.committed_deliveries = 0
        self.delivered = 0
        self.dispatcher: Any = None
        self.sinks: dict[str, Any] = {}
        self.wake_on_commit = True
        self._outcome = asyncio.Event()

    def committed(self, result: Any) -> None:
        self.committed_deliveries += len(result.new_event_ids) * len(self.configs)
        if self.dispatcher is not None and self.wake_on_commit:  # a build without the hand-off: as its daemon did
            self.dispatcher.wake()

    def outcome(self, _sink: str, outcome: str) -> None:
        if outcome == "delivered":
            self.delivered += 1
        self._outcome.set()

    async def start(self) -> None:
        from watcher.config import DeliveryConfig
        from watcher.dispatcher import Dispatcher
        from watcher.sinks.registry import build_sink

        for cfg in self.configs:
            self.sinks[cfg.name] = build_sink(cfg, clock=self.clock)
            await self.sinks[cfg.name].start()
        self.dispatcher = Dispatcher(self.sinks, self.store, cfg=DeliveryConfig(), clock=self.clock,
                                     rand=random.Random(self.seed), on_outcome=self.outcome)
        self.dispatcher.start()

    async def settled(self) -> None:
        """Until every delivery committed so far is delivered (an outcome is told after its commit). Woken by
        each outcome, not polled, so that under callgrind the wait adds no instructions of its own."""
        deadline = time.monotonic() + 600
        while self.delivered < self.committed_deliveries:
            self._outcome.clear()
            try:
                await asyncio.wait_for(self._outcome.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise RuntimeError(f"only {self.delivered} of {self.committed_deliveries} deliveries settled") from None

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop(5.0)
        for sink in self.sinks.values():
            await sink.close()


def webhook_sink(port: int) -> Any:
    from watcher.secret import Secret
    from watcher.sinks.registry import sink_config

    return sink_config(name="ops", type="webhook", url=Secret(f"http://127.0.0.1:{port}/hook"),
                       secrets=(Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),), timeout=30)


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
        # --deliver: an idle worker's recheck waits on the clock, which must not jump (the simulator reads it)
        clock = SharedClock(tmp / "clock", deadlines_jump=not args.deliver)
        receiver = None
        if args.deliver:
            receiver = await asyncio.create_subprocess_exec(
                sys.executable, str(HERE / "bench_delivery.py"), "--serve",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        sim = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--serve-simulator", str(tmp / "clock"),
            str(args.active / 70), str(args.seed),  # mean duration 70 s
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert sim.stdout is not None and sim.stdin is not None
        try:
            port = int(await asyncio.wait_for(sim.stdout.readline(), 30))
            receiver_port = None
            if receiver is not None:
                assert receiver.stdout is not None
                receiver_port = int(await asyncio.wait_for(receiver.stdout.readline(), 30))
            return await sweeps(args, f"http://127.0.0.1:{port}/api/v1", clock, tmp, receiver_port)
        finally:
            if receiver is not None and receiver.stdin is not None:
                receiver.stdin.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(receiver.wait(), 10)
                if receiver.returncode is None:
                    receiver.kill()
            sim.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sim.wait(), 10)
            if sim.returncode is None:
                sim.kill()


def mean_counts(per_sweep: list[dict[str, int]]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for row in per_sweep for k in row))
    return {k: sum(row.get(k, 0) for row in per_sweep) / len(per_sweep) for k in keys}


def callgrind(args: argparse.Namespace) -> tuple[int, dict[str, float]]:
    """This benchmark under callgrind, counting only the measured sweeps; returns the instructions and the
    child's counts a sweep."""
    cmd = [str(Path(__file__).resolve()), "--child", "--active", str(args.active), "--warm", str(args.warm),
           "--sweeps", str(args.sweeps), "--interval", str(args.interval), "--seed", str(args.seed)] + (
               ["--deliver"] if args.deliver else [])
    counts: dict[str, float] = {}

    def report(line: str) -> None:
        if line.startswith("counts "):
            counts.update(json.loads(line[len("counts "):]))

    return _meta.callgrind_count(cmd, "the benchmark", report), counts


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
    ap.add_argument("--deliver", action="store_true",
                    help="route to a webhook and deliver each sweep's events (the Dispatcher) within the sweep")
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
        measured = [callgrind(args) for _ in range(args.rounds)]
        per = [n / args.sweeps for n, _ in measured]
        print(f"watcher {where}; {args.active:,} active runs, {args.warm} warm-up + {args.sweeps} counted sweeps "
              f"x {len(per)}{'; each delivered to a webhook' if args.deliver else ''}; instructions a sweep "
              f"(callgrind): " + ", ".join(f"{p / 1e6:,.1f} M" for p in per))
        if measured[0][1]:
            print("a sweep: " + ", ".join(f"{k} {v:,.1f}" for k, v in measured[0][1].items()))
            delivered = measured[0][1].get("delivered")
            if delivered:
                print("instructions per delivered event (the sweep's included): "
                      + ", ".join(f"{p / delivered / 1e3:,.0f} k" for p in per))
        if meta is not None:
            meta.finish()
        return
    logs.configure(fmt="json", level="warning")  # as bench_engine runs the daemon
    tune_gc()  # the daemon's garbage-collector settings
    rounds = [asyncio.run(one_round(args)) for _ in range(args.rounds)]
    if args.child:
        print("counts " + json.dumps(mean_counts(rounds[0]["sweeps"])), flush=True)
        return
    per_round = [sum(r["cpu"]) / len(r["cpu"]) for r in rounds]
    every = [c for r in rounds for c in r["cpu"]]
    mean = mean_counts(rounds[0]["sweeps"])
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
