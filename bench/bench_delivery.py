"""Delivery throughput through the durable outbox: N events committed to a real SQLite state store (as a sweep
commits them), then the real ``Dispatcher`` (claims, concurrent sends, group commits) delivers them to one
local webhook receiver running in a separate process.

Reports events/s from the dispatcher's start to the last committed outcome, CPU per event of this process
(event loop and store thread together, ``resource.getrusage``), store commits per event, and fsyncs per event
counted by ``strace -f -c -e trace=fsync,fdatasync`` in a second, identical run (when strace is installed).
Logging is set up as the daemon's (JSON, level info) into /dev/null, so its cost counts.

    python bench/bench_delivery.py [--events 10000] [--concurrency 8] [--no-record]
    python bench/bench_delivery.py --mix        # also a file, a Slack and a Discord sink (3,000 events)
    python bench/bench_delivery.py --callgrind --events 2000 [--watcher-src DIR]

``--callgrind`` counts the instructions of this process (event loop and store thread) per event under valgrind's
callgrind, from the dispatcher's start to the last committed outcome only: the same figure on a busy machine as
on a quiet one, for an A/B of the delivery path (``--watcher-src DIR`` delivers with another checkout's
``watcher``). Use it without ``--rate``: under valgrind the trickle's pacing is not kept.

The figures and the exact command are appended to ``bench/RESULTS.md`` under "Delivery through the outbox".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import _meta

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if "--watcher-src" in sys.argv[:-1]:  # before any watcher import: deliver with another checkout's code
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--watcher-src") + 1]).resolve()))

HEADING = "## Delivery through the outbox"


# ------------------------------------------------------------------------------------------ receiver


def serve() -> None:
    """The receiver process: answers every POST with 200 (Discord-style JSON on /discord), counts requests
    per path; GET /count returns the counts. Prints its port, then serves until stdin closes."""
    from aiohttp import web

    counts: dict[str, int] = {}

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        counts[request.path] = counts.get(request.path, 0) + 1
        if request.path.startswith("/discord"):
            return web.json_response({"id": "1"})
        return web.Response(text="ok")

    async def counter(_request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/count", counter)
        app.router.add_post("/{tail:.*}", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


async def counts(port: int) -> dict[str, int]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/count") as resp:
        return dict(await resp.json())


# -------------------------------------------------------------------------------------------- sender


def make_events(n: int):
    from watcher.model import Event, event_id

    events = []
    for i in range(n):
        run_id = f"run_bench{i:06d}"
        failed = i % 4 == 0
        data = {
            "run_id": run_id, "run_type": "technique", "workspace_id": "ws_bench", "project_id": "prj_bench",
            "technique": {"technique_id": "tech_bench", "name": "Bench Technique"},
            "status": "failed" if failed else "completed", "previous_status": "running",
            "error_code": "GPU_PROVIDER_ERROR" if failed else None,
            "error_message": "The provider failed to complete the generation." if failed else None,
            "progress": 100, "charged_cost": 0.05, "created_at": 1764399990000 + i, "started_at": 1764399991000 + i,
            "completed_at": 1764400000000 + i,
            "outputs": [] if failed else [
                {"output_id": "output_1", "type": "imageUrl", "url": f"https://media.flora.ai/{i}.png"}],
            "poll_url": f"https://app.flora.ai/api/v1/techniques/bench/runs/{run_id}", "late": False,
        }
        event_type = "run.failed" if failed else "run.completed"
        events.append(Event(id=event_id(run_id, event_type), type=event_type, created_at=1764400000123 + i,
                            data=data))
    return events


def sink_configs(port: int, tmp: Path, *, mix: bool, concurrency: int):
    from watcher.secret import Secret
    from watcher.sinks.registry import sink_config

    secret = Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    configs = [sink_config(name="ops", type="webhook", url=Secret(f"http://127.0.0.1:{port}/hook"), secrets=(secret,),
                          timeout=30)]
    if concurrency:
        configs[0] = _with(configs[0], concurrency=concurrency)
    if mix:
        configs += [
            sink_config(name="journal", type="file", path=tmp / "events.jsonl"),
            sink_config(name="slack", type="slack", url=Secret(f"http://127.0.0.1:{port}/slack")),
            sink_config(name="discord", type="discord", url=Secret(f"http://127.0.0.1:{port}/discord")),
        ]
    return configs


def _with(cfg, **changes):
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if k in fields})


async def drain(port: int, n: int, *, mix: bool, concurrency: int, rate: float = 0.0, chunk: int = 75,
                child: bool = False) -> dict:
    """Deliver ``n`` events. Without ``rate``, all are committed first (a burst, drained at once); with it,
    ``chunk`` events are committed every ``chunk / rate`` seconds while the dispatcher runs (as a sweep's batch
    commits bring them at 10,000 active runs: ~140 a second, ~75 at a time), so CPU per event is that of the
    steady trickle, committing the events included."""
    from watcher import logs
    from watcher.clock import SYSTEM_CLOCK
    from watcher.config import DeliveryConfig
    from watcher.dispatcher import Dispatcher
    from watcher.sinks.registry import build_sink
    from watcher.store import AsyncStore, Store

    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory(prefix="flora-bench-") as tmpdir:
        logs.configure("json", "info", stream=devnull)
        tmp = Path(tmpdir)
        store = AsyncStore(Store.open(tmp / "state.sqlite3"))
        configs = sink_configs(port, tmp, mix=mix, concurrency=concurrency)
        names = [c.name for c in configs]
        events = make_events(n)
        now = SYSTEM_CLOCK.now_ms()
        if not rate:
            for start in range(0, n, 1000):  # as sweeps commit them: events and deliveries before any send
                await store.commit_sweep(upserts=[], deletes=[],
                                         events=[(e, names) for e in events[start:start + 1000]], meta={}, now_ms=now)
        sinks = {}
        for cfg in configs:
            sinks[cfg.name] = build_sink(cfg)
            await sinks[cfg.name].start()
        expected = n * len(names)
        done = asyncio.Event()
        settled = 0
        outcomes: dict[str, int] = {}

        def on_outcome(_sink: str, outcome: str) -> None:
            nonlocal settled
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome in ("delivered", "dead", "disabled"):
                settled += 1
                if settled >= expected:
                    done.set()

        dispatcher = Dispatcher(sinks, store, cfg=DeliveryConfig(), clock=SYSTEM_CLOCK, rand=random.Random(1),
                                on_outcome=on_outcome)
        if child:
            handshake("measure")
        before = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter()
        dispatcher.start()

        async def produce() -> None:
            started = time.perf_counter()
            for i, start in enumerate(range(0, n, chunk)):
                await asyncio.sleep(max(0.0, started + i * chunk / rate - time.perf_counter()))
                batch = [(e, names) for e in events[start:start + chunk]]
                await store.commit_sweep(upserts=[], deletes=[], events=batch, meta={}, now_ms=SYSTEM_CLOCK.now_ms())
                dispatcher.wake()

        producer = asyncio.create_task(produce()) if rate else None
        await asyncio.wait_for(done.wait(), timeout=600)
        if producer is not None:
            await producer
        await dispatcher.outcomes.close()  # the last outcomes are committed
        wall = time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_SELF)
        if child:
            handshake("done")
        await dispatcher.stop(5.0)
        for sink in sinks.values():
            await sink.close()
        pending = sum((await store.pending_counts()).values())
        await store.aclose()
        logs.configure("console", "warning")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "events": n, "sinks": names, "deliveries": expected, "wall_s": wall, "cpu_s": cpu,
        "events_per_s": n / wall, "deliveries_per_s": expected / wall, "cpu_ms_per_event": cpu / n * 1000,
        "commits": dispatcher.outcomes.commits, "commits_per_event": dispatcher.outcomes.commits / n,
        "outcomes": outcomes, "pending_after": pending,
    }


def handshake(word: str) -> None:
    print(word, flush=True)
    sys.stdin.readline()


def callgrind(args: argparse.Namespace, port: int) -> int:
    """The drain under callgrind, counting only from the dispatcher's start to the last committed outcome;
    returns the instructions (every thread of the process)."""
    cmd = [str(Path(__file__).resolve()), "--events", str(args.events), "--concurrency", str(args.concurrency),
           "--drain-only", "--child", "--port", str(port), "--rate", str(args.rate), "--chunk", str(args.chunk)]
    cmd += ["--mix"] if args.mix else []
    cmd += ["--watcher-src", str(args.watcher_src)] if args.watcher_src else []
    return _meta.callgrind_count(cmd, "the drain")


def count_fsyncs(args: argparse.Namespace, port: int) -> tuple[int, float] | None:
    """Run the same drain again under strace, counting fsync + fdatasync of every thread. None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.NamedTemporaryFile(prefix="flora-strace-", suffix=".txt") as out:
        cmd = [strace, "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", "-o", out.name, sys.executable,
               str(Path(__file__).resolve()), "--events", str(args.events), "--concurrency", str(args.concurrency),
               "--drain-only", "--port", str(port), "--rate", str(args.rate), "--chunk", str(args.chunk)] + (
                   ["--mix"] if args.mix else [])
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"strace run failed ({result.returncode}): {result.stderr.strip()[:300]}", file=sys.stderr)
            return None
        text = Path(out.name).read_text()
    total = sum(int(m.group(1)) for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?f(?:data)?sync$",
                                                      text, re.MULTILINE))
    return total, total / args.events


# ------------------------------------------------------------------------------------------- results


def record(results_path: Path, figures: dict, args: argparse.Namespace, meta: _meta.Meta) -> str:
    import aiohttp

    from watcher import __version__

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    fsyncs = figures.get("fsyncs")
    fsync_line = (f"**{fsyncs[1]:.3f} fsyncs per event** ({fsyncs[0]} in all, strace-counted in a second identical "
                  f"run)" if fsyncs else "fsyncs not counted (strace missing)")
    entry = (
        f"\n### {when} — flora-watcher {__version__}\n\n"
        f"{meta.markdown()}\n"
        f"- setup: {figures['events']} events committed to the SQLite outbox, "
        + (f"{args.chunk} every {args.chunk / args.rate:.2f} s ({args.rate:g}/s) while " if args.rate else "then ")
        + "delivered by the Dispatcher to "
        f"{', '.join(figures['sinks'])}; receiver in a separate process on 127.0.0.1; logging JSON at info; "
        f"aiohttp {aiohttp.__version__}\n"
        f"- throughput: **{figures['events_per_s']:.0f} events/s** ({figures['deliveries_per_s']:.0f} deliveries/s, "
        f"{figures['wall_s']:.2f} s from start to the last committed outcome)\n"
        f"- CPU: **{figures['cpu_ms_per_event']:.3f} ms per event** ({figures['cpu_s']:.2f} s user+sys, event loop "
        f"and store thread)\n"
        f"- durability cost: {figures['commits']} outcome commits ({figures['commits_per_event']:.3f} per event); "
        f"{fsync_line}\n"
        f"- receiver counted {figures['received']}; outcomes {figures['outcomes']}; pending after "
        f"{figures['pending_after']}\n"
    )
    text = results_path.read_text() if results_path.exists() else "# Benchmark results\n"
    if HEADING in text:
        start = text.index(HEADING) + len(HEADING)
        nxt = text.find("\n## ", start)
        end = len(text) if nxt == -1 else nxt
        text = text[:end].rstrip("\n") + "\n" + entry + text[end:]
    else:
        text = text.rstrip("\n") + (
            f"\n\n{HEADING}\n\nEvents through the durable outbox (commit, claim, send, group-commit the outcome) "
            f"with the real Dispatcher and sinks (`bench/bench_delivery.py`).\n" + entry)
    results_path.write_text(text)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=None, help="default 10000 (3000 with --mix)")
    parser.add_argument("--concurrency", type=int, default=0, help="the webhook sink's concurrency (default: its own)")
    parser.add_argument("--mix", action="store_true", help="webhook + file + Slack + Discord sinks")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-record", action="store_true", help="print the figures only")
    parser.add_argument("--no-strace", action="store_true", help="do not count fsyncs")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="commit the events at this many a second while delivering (the engine's steady "
                             "trickle; 140 is 10,000 active runs) instead of all before the start")
    parser.add_argument("--chunk", type=int, default=75, help="with --rate: events per commit (default 75)")
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions per event (valgrind) instead of CPU time; prints only")
    parser.add_argument("--watcher-src", type=Path, default=None,
                        help="deliver with the watcher package of this checkout (an A/B against another build)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--drain-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 3000 if args.mix else 10_000
    if args.serve:
        serve()
        return 0
    if args.drain_only:
        asyncio.run(drain(args.port, args.events, mix=args.mix, concurrency=args.concurrency, rate=args.rate,
                          chunk=args.chunk, child=args.child))
        return 0
    meta = _meta.start("bench/bench_delivery.py", sys.argv[1:] if argv is None else argv)
    receiver = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        if args.callgrind:
            instructions = callgrind(args, port)
            got = sum(asyncio.run(counts(port)).values())
            meta.finish()
            print(f"{instructions / args.events / 1000:.1f} k instructions per event ({instructions:,} for "
                  f"{args.events} events; receiver counted {got}; watcher from {args.watcher_src or ROOT})")
            return 0
        figures = asyncio.run(drain(port, args.events, mix=args.mix, concurrency=args.concurrency, rate=args.rate,
                                    chunk=args.chunk))
        figures["received"] = asyncio.run(counts(port))
        figures["fsyncs"] = None if args.no_strace else count_fsyncs(args, port)
    finally:
        if receiver.stdin is not None:
            receiver.stdin.close()
        try:
            receiver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            receiver.kill()
            receiver.wait()
    meta.finish()
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}, indent=2))
    if not args.no_record:
        print(record(args.results, figures, args, meta))
    return 0 if figures["pending_after"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
