"""Where the watcher's CPU goes in a steady sweep: the engine benchmark's workload, split by phase.

The same setup as ``bench_engine.py`` (the simulator and a webhook receiver in their own processes, the watcher
as `flora-watcher run` with the webhook as its only sink, 10,000 or 1,000 active runs, interval 5 s), with the
watcher started through this script's ``--child`` mode, which wraps the functions of each phase before the daemon
starts:

- **counts** (how many times each phase ran, and per-item counters: items listed, full parses, memo answers,
  ``detect`` calls, stall checks, tracked-row upserts, events, claims, rows claimed, sends). They depend on the
  workload, not on the machine's speed or load: compare them between builds first.
- **CPU** of each phase, *exclusive* of the phases it calls, as ``time.thread_time`` (CPU time of the thread that
  ran it: a busy machine slows it down less than wall time, but cache and frequency effects remain). Coroutines
  (an API request, a webhook send) count only their own steps: what aiohttp does in the event loop's callbacks
  for them (reading the socket, parsing the response) lands in "event loop, aiohttp callbacks, the rest".
- the **process** CPU over the same window (``/proc``), per thread, so the unattributed rest is visible.

A phase whose function a build does not have is left out (the script also profiles an older checkout with
``--watcher-src``). The wrappers cost some CPU themselves (~0.3 µs a call; the process total includes it).

    python bench/profile_engine.py                      # 10,000 active runs, 45 s window after 30 s warm-up
    python bench/profile_engine.py --active 1000
    python bench/profile_engine.py --watcher-src /tmp/base   # the same split for another checkout's watcher
    python bench/profile_engine.py --cprofile /tmp/w.prof    # also a cProfile of the watcher's main thread
                                                             # (slower; for the call tree, not the figures)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import _meta

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (phase, "module:attribute path", kind): kind "sync" is a plain function or method, "async" a coroutine function
# (its steps are timed), "store" a store method run on the store's worker thread (timed there). The first phase
# listed for a function wins. Per-item counters are kept by the "count" entries below.
PHASES: list[tuple[str, str, str]] = [
    ("API request (aiohttp, own steps)", "watcher.api:FloraClient._exchange", "async"),
    ("decode (JSON → Python)", "watcher.api:json.loads", "sync"),
    ("decode (JSON → Python)", "watcher.wire:decode_page", "sync"),  # typed Structs, in C (issue 22)
    ("parse/memo (items → runs)", "watcher.api:parse_list_page", "sync"),
    ("parse/memo (items → runs)", "watcher.api:parse_list_body", "sync"),
    ("listing bookkeeping (dedup, statuses)", "watcher.api:FloraClient._note_statuses", "sync"),
    ("observe (sweep per item, less detect)", "watcher.sweep:Sweeper._take_page", "sync"),
    ("detect (transition rules, less stall)", "watcher.sweep:detect", "sync"),
    ("stall check", "watcher.transitions:stall_check", "sync"),
    ("sweep commit: prepare (prune, route)", "watcher.sweep:Sweeper._commit", "async"),
    ("webhook send (sign, POST; own steps)", "watcher.sinks.webhook:WebhookSink.send", "async"),
    ("event body JSON (render, store)", "watcher.model:Event.body", "sync"),
]
STORE_PHASES = {  # store methods (run on the store thread) -> phase
    "commit_sweep": "store: commit_sweep (rows, events, deliveries)",
    "commit_and_claim": "store: commit_sweep (rows, events, deliveries)",  # with the hand-off's claim
    "due_deliveries": "store: claims (due_deliveries)",
    "record_outcomes": "store: outcomes (record_outcomes)",
}
COUNTERS = [  # (counter, "module:attribute path"): calls counted, no timing
    ("full parses (parse_run)", "watcher.normalize:parse_run"),
    ("full parses (wire_run, typed items)", "watcher.normalize:wire_run"),
    ("detect calls", "watcher.transitions:detect"),
    ("stall checks", "watcher.transitions:stall_check"),
]


# ------------------------------------------------------------------------------------------------ the child


class Account:
    """Exclusive CPU time and calls per phase, per thread (a stack per thread subtracts nested phases)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.counts: dict[str, int] = defaultdict(int)
        self._local = threading.local()
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.cpu.clear()
            self.calls.clear()
            self.counts.clear()

    def _stack(self) -> list[float]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def enter(self) -> None:
        self._stack().append(0.0)  # CPU of the nested phases, to subtract

    def leave(self, phase: str, spent: float, *, done: bool = True) -> None:
        """``spent`` CPU seconds of ``phase`` (nested phases included; ``done``: the call is over, count it)."""
        stack = self._stack()
        nested = stack.pop()
        if stack:
            stack[-1] += spent
        with self.lock:
            self.cpu[phase] += spent - nested
            self.calls[phase] += done


ACCOUNT = Account()


def _resolve(target: str) -> tuple[Any, str] | None:
    module_name, _, path = target.partition(":")
    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    if getattr(owner, name, None) is None:
        return None
    return owner, name


def _timed_sync(phase: str, fn: Any) -> Any:
    thread_time = time.thread_time

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ACCOUNT.enter()
        t0 = thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            ACCOUNT.leave(phase, thread_time() - t0)

    return wrapper


class _Steps:
    """Awaits ``coro`` timing only its own steps (each resumption) as ``phase``."""

    __slots__ = ("coro", "phase")

    def __init__(self, phase: str, coro: Any) -> None:
        self.phase, self.coro = phase, coro

    def __await__(self) -> Any:
        it = self.coro.__await__()
        thread_time = time.thread_time
        value: Any = None
        error: BaseException | None = None
        spent = 0.0
        ACCOUNT.enter()
        try:
            while True:
                t0 = thread_time()
                try:
                    yielded = it.throw(error) if error is not None else it.send(value)
                except StopIteration as stop:
                    spent += thread_time() - t0
                    return stop.value
                spent += thread_time() - t0
                # the time between steps is other tasks': not ours, and not our nested phases' either
                ACCOUNT.leave(self.phase, spent, done=False)
                spent = 0.0
                try:
                    value, error = (yield yielded), None
                except BaseException as exc:  # handed to the coroutine, as await would
                    value, error = None, exc
                ACCOUNT.enter()
        finally:
            ACCOUNT.leave(self.phase, spent)


def _timed_async(phase: str, fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await _Steps(phase, fn(*args, **kwargs))

    return wrapper


def _counted(counter: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ACCOUNT.counts[counter] += 1
        return fn(*args, **kwargs)

    return wrapper


def install() -> list[str]:
    """Wrap every phase and counter this build has; returns what was found."""
    found = []
    wrapped: set[tuple[int, str]] = set()
    for counter, target in COUNTERS:
        where = _resolve(target)
        if where is not None:
            owner, name = where
            setattr(owner, name, _counted(counter, getattr(owner, name)))
    for phase, target, kind in PHASES:
        where = _resolve(target)
        if where is None or (id(where[0]), where[1]) in wrapped:
            continue
        owner, name = where
        wrapped.add((id(owner), name))
        fn = getattr(owner, name)
        if target == "watcher.api:json.loads":  # the api module's json only, not every json.loads
            import types

            shim = types.SimpleNamespace(**{k: getattr(owner, k) for k in dir(owner) if not k.startswith("__")})
            shim.loads = _timed_sync(phase, fn)
            sys.modules["watcher.api"].json = shim  # type: ignore[attr-defined]
        else:
            setattr(owner, name, (_timed_async if kind == "async" else _timed_sync)(phase, fn))
        found.append(f"{phase} <- {target}")
    _install_store()
    _install_item_counts()
    return found


def _install_store() -> None:
    """Store methods on the SQLite store's worker thread: timed there, with rows in and out counted."""
    try:
        from watcher.store import AsyncStore
    except ImportError:
        return
    original = AsyncStore._call

    async def _call(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(fn, "__name__", "")
        phase = STORE_PHASES.get(name, "store: other calls")
        if name in ("commit_sweep", "commit_and_claim"):
            upserts = kwargs.get("upserts")
            if upserts is not None and not isinstance(upserts, list | tuple):
                kwargs["upserts"] = upserts = list(upserts)
            ACCOUNT.counts["tracked-row upserts"] += len(upserts or ())
            ACCOUNT.counts["tracked-row deletes"] += len(list(kwargs.get("deletes") or ()))
            ACCOUNT.counts["events committed"] += len(list(kwargs.get("events") or ()))
        result = await original(self, _timed_sync(phase, fn), *args, **kwargs)
        if name == "due_deliveries":
            ACCOUNT.counts["rows claimed"] += len(result)
        elif name == "commit_and_claim":
            ACCOUNT.counts["rows handed over (claimed in the commit)"] += len(result.claimed)
        return result

    AsyncStore._call = _call  # type: ignore[method-assign]


def _install_item_counts() -> None:
    """Items listed and memo answers (RunMemo.hits) read at dump time; items via the pages' runs."""
    try:
        from watcher import sweep
    except ImportError:
        return
    original = sweep.Sweeper._take_page

    def _take_page(self: Any, runs: Any, *args: Any, **kwargs: Any) -> Any:
        ACCOUNT.counts["pages observed"] += 1
        ACCOUNT.counts["items observed"] += len(runs)
        return original(self, runs, *args, **kwargs)

    sweep.Sweeper._take_page = _take_page  # type: ignore[method-assign]


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process, by Python thread name (native threads of C libraries as 'other')."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = defaultdict(float)
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), "other")
        if name.startswith("flora-store"):
            name = "store thread"
        elif name == "MainThread":
            name = "main thread"
        out[name] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return dict(out)


def child(out: str, argv: list[str], cprofile: str | None) -> int:
    found = install()
    state: dict[str, Any] = {"found": found}
    profiler = None
    if cprofile:
        import cProfile

        profiler = cProfile.Profile()

    def start(_sig: int, _frame: Any) -> None:
        ACCOUNT.reset()
        memo_hits = _memo_hits()
        state.update(t0=time.monotonic(), threads0=thread_cpu(), memo0=memo_hits)
        if profiler is not None:
            profiler.enable()

    def dump(_sig: int, _frame: Any) -> None:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(cprofile)
        with ACCOUNT.lock:
            report = {
                "seconds": time.monotonic() - state["t0"],
                "threads0": state["threads0"], "threads1": thread_cpu(),
                "cpu": dict(ACCOUNT.cpu), "calls": dict(ACCOUNT.calls), "counts": dict(ACCOUNT.counts),
                "memo_hits": _memo_hits() - state["memo0"], "found": state["found"],
            }
        Path(out).write_text(json.dumps(report))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    from watcher import cli

    return cli.main(argv)


def _memo_hits() -> int:
    import gc

    from watcher import normalize

    memo_type = getattr(normalize, "RunMemo", None)
    if memo_type is None:
        return 0
    return sum(getattr(o, "hits", 0) for o in gc.get_objects() if type(o) is memo_type)


# ------------------------------------------------------------------------------------------------ the parent


async def profile(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    import bench_engine as be

    src = str(Path(args.watcher_src).resolve()) if args.watcher_src else None
    receiver_proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "bench_engine.py"), "--serve-receiver",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert receiver_proc.stdout is not None and receiver_proc.stdin is not None
    receiver = f"http://127.0.0.1:{int(await receiver_proc.stdout.readline())}"
    rate = args.active / 70  # mean duration 70 s
    max_rps = 60.0 if args.active > 2_000 else 20.0
    try:
        with tempfile.TemporaryDirectory(prefix="flora-profile-") as tmpdir:
            tmp = Path(tmpdir)
            async with be.Simulator(be.free_port()) as sim:
                await sim.generate(rate)
                out = tmp / "watcher.jsonl"
                cmd = be.watcher_cmd(tmp, sim.base, out, max_rps=max_rps, interval=args.interval, receiver=receiver,
                                     file_sink=False)
                run_args = cmd[cmd.index("watcher") + 1:]
                stats = tmp / "profile.json"
                child_cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(stats)]
                if args.cprofile:
                    child_cmd += ["--cprofile", str(Path(args.cprofile).resolve())]
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                env.pop("NOTIFY_SOCKET", None)
                if src is not None:
                    env["PYTHONPATH"] = src
                proc = await asyncio.create_subprocess_exec(
                    *child_cmd, "--", *run_args, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL, env=env, cwd=src)
                try:
                    print(f"{args.active:,} active runs: {args.warmup:.0f} s warm-up + {args.seconds:.0f} s …",
                          flush=True)
                    await asyncio.sleep(args.warmup)
                    if proc.returncode is not None:
                        raise RuntimeError(f"the watcher exited early with {proc.returncode}")
                    load0 = os.getloadavg()[0]
                    await sim.post("/stats/reset", {})
                    proc.send_signal(signal.SIGUSR1)
                    cpu0 = be.cpu_seconds(proc.pid)
                    await asyncio.sleep(args.seconds)
                    cpu1 = be.cpu_seconds(proc.pid)
                    proc.send_signal(signal.SIGUSR2)
                    load1 = os.getloadavg()[0]
                    sim_stats = await sim.get("/stats")
                    for _ in range(200):
                        if stats.exists():
                            break
                        await asyncio.sleep(0.05)
                finally:
                    if proc.returncode is None:
                        proc.send_signal(signal.SIGTERM)
                        try:
                            await asyncio.wait_for(proc.wait(), 20)
                        except TimeoutError:
                            proc.kill()
                report = json.loads(stats.read_text())
    finally:
        receiver_proc.stdin.close()
        await asyncio.wait_for(receiver_proc.wait(), 10)
    print_report(report, cpu_s=cpu1 - cpu0, load=(load0, load1), sim_stats=sim_stats, args=args, src=src)


def print_report(report: dict[str, Any], *, cpu_s: float, load: tuple[float, float], sim_stats: dict[str, Any],
                 args: argparse.Namespace, src: str | None) -> None:
    seconds = report["seconds"]
    sweeps = seconds / args.interval
    threads = {k: report["threads1"].get(k, 0.0) - report["threads0"].get(k, 0.0) for k in report["threads1"]}
    attributed = sum(report["cpu"].values())
    lines = [
        f"watcher from {src or 'this checkout'}; {args.active:,} active runs, interval {args.interval:g} s, "
        f"{seconds:.0f} s window (~{sweeps:.0f} sweeps); load average {load[0]:.1f} → {load[1]:.1f}",
        f"process CPU {cpu_s:.2f} s = {cpu_s / seconds * 100:.1f} % of a core; by thread: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v >= 0.005),
        f"API requests {sim_stats['requests_total']:,}",
        "",
        "| phase | calls | CPU s | % of a core | µs a call |",
        "|---|---:|---:|---:|---:|",
    ]
    for phase, spent in sorted(report["cpu"].items(), key=lambda kv: -kv[1]):
        calls = report["calls"].get(phase, 0)
        lines.append(f"| {phase} | {calls:,} | {spent:.2f} | {spent / seconds * 100:.2f} | "
                     f"{spent / calls * 1e6 if calls else 0:,.0f} |")
    rest = cpu_s - attributed
    lines.append(f"| event loop, aiohttp callbacks, the rest | — | {rest:.2f} | {rest / seconds * 100:.2f} | — |")
    lines += ["", "| counter | in the window | a sweep |", "|---|---:|---:|"]
    counts = dict(report["counts"])
    counts["memo answers (no full parse)"] = report.get("memo_hits", 0)
    for key, value in sorted(counts.items()):
        lines.append(f"| {key} | {value:,} | {value / sweeps:,.0f} |")
    print("\n".join(lines))


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        out = sys.argv[i + 1]
        cprofile = None
        if "--cprofile" in sys.argv:
            cprofile = sys.argv[sys.argv.index("--cprofile") + 1]
        raise SystemExit(child(out, sys.argv[sys.argv.index("--") + 1:], cprofile))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--active", type=int, default=10_000, help="active runs (default 10,000; 1,000 for the small case)")
    ap.add_argument("--seconds", type=float, default=45.0, help="profiled window (default 45)")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds before the window (default 30)")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--watcher-src", metavar="DIR", help="profile the watcher of another checkout")
    ap.add_argument("--cprofile", metavar="FILE", help="also dump a cProfile of the watcher's main thread")
    args = ap.parse_args()
    under_test = {} if args.watcher_src is None else {"watcher under test": _meta.commit_of(Path(args.watcher_src))}
    meta = _meta.start("bench/profile_engine.py", sys.argv[1:], **under_test)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(profile(args))
    meta.finish()


if __name__ == "__main__":
    main()
