"""Webhook sink throughput: N signed events through ``WebhookSink`` to a local aiohttp receiver.

The receiver runs in a separate process (so the sender's CPU accounting is its own); the sender pushes the
events with a small concurrency through the sink's real path (render body → sign → POST → classify) and
reports events/s and CPU seconds per event of the sender process (``resource.getrusage``). The figures and
the exact command are appended to ``bench/RESULTS.md`` under "Webhook sink throughput".

    python bench/bench_webhook.py [--events 10000] [--concurrency 8] [--signature standard|flora|none]
    python bench/bench_webhook.py --callgrind --stored-body --events 2000 [--watcher-src DIR] [--bare]

``--callgrind`` counts the instructions the sender executes per event under valgrind's callgrind, only while
the events are pushed (not the start-up or the warm-up send): the same figure on a busy machine as on a quiet
one, for an A/B of the send path (``--watcher-src DIR`` sends with another checkout's ``watcher``).
``--stored-body`` passes each event's stored JSON (as the dispatcher does) instead of rendering it per send.
``--bare`` sends the same POSTs through a plain ``aiohttp.ClientSession``: the floor under the sink's own steps.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import _meta

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if "--watcher-src" in sys.argv[:-1]:  # before any watcher import: send with another checkout's code
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--watcher-src") + 1]).resolve()))

HEADING = "## Webhook sink throughput"


# ------------------------------------------------------------------------------------------ receiver


def serve() -> None:
    """The receiver process: answers every POST with 200, counts them; GET /count returns the count.
    Prints its port on stdout, then serves until stdin closes."""
    from aiohttp import web

    count = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        count += 1
        return web.Response(text="ok")

    async def counter(_request: web.Request) -> web.Response:
        return web.json_response({"count": count})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_get("/count", counter)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
        await runner.cleanup()

    asyncio.run(main())


# -------------------------------------------------------------------------------------------- sender


def make_events(n: int):
    from watcher.model import Event, event_id

    events = []
    for i in range(n):
        run_id = f"run_bench{i:06d}"
        data = {
            "run_id": run_id, "run_type": "technique", "workspace_id": "ws_bench", "project_id": "prj_bench",
            "technique": {"technique_id": "tech_bench", "name": "Bench Technique"},
            "status": "failed" if i % 4 == 0 else "completed", "previous_status": "running",
            "error_code": "GPU_PROVIDER_ERROR" if i % 4 == 0 else None,
            "error_message": "The provider failed to complete the generation." if i % 4 == 0 else None,
            "progress": 100, "charged_cost": 0.05, "created_at": 1764399990000 + i, "started_at": 1764399991000 + i,
            "completed_at": 1764400000000 + i,
            "outputs": [] if i % 4 == 0 else [
                {"output_id": "output_1", "type": "imageUrl", "url": f"https://media.flora.ai/{i}.png"}],
            "poll_url": f"https://app.flora.ai/api/v1/techniques/bench/runs/{run_id}", "late": False,
        }
        event_type = "run.failed" if i % 4 == 0 else "run.completed"
        events.append(Event(id=event_id(run_id, event_type), type=event_type, created_at=1764400000123 + i,
                            data=data))
    return events


class _BarePost:
    """``--bare``: the same POSTs through a plain ``aiohttp.ClientSession`` (the sink's session settings, no
    signing, no classification): what aiohttp and the event loop cost without the sink's own steps."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = None

    async def start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                             cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)

    async def send(self, event, *, body: bytes | None = None) -> None:
        from watcher.render import event_body

        data = body if body is not None else event_body(event)
        async with self.session.post(self.url, data=data, headers={"Content-Type": "application/json"},
                                     allow_redirects=False) as resp:
            await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"HTTP {resp.status}")

    async def close(self) -> None:
        await self.session.close()


async def push(url: str, events, concurrency: int, signature: str, *, stored_body: bool = False,
               child: bool = False, bare: bool = False) -> dict:
    from watcher.render import event_body
    from watcher.secret import Secret
    from watcher.sinks.registry import sink_config
    from watcher.sinks.webhook import WebhookSink

    secrets = () if signature == "none" else (Secret("whsec_" + base64.b64encode(os.urandom(32)).decode()),)
    cfg = sink_config(name="bench", type="webhook", url=Secret(url), secrets=secrets,
                     signature="standard" if signature == "none" else signature, timeout=30)
    sink = WebhookSink(cfg) if not bare else _BarePost(url)
    await sink.start()
    queue: asyncio.Queue = asyncio.Queue()
    for event in events:
        queue.put_nowait((event, event_body(event) if stored_body else None))
    latencies: list[float] = []
    failures = 0

    async def worker() -> None:
        nonlocal failures
        while not queue.empty():
            event, body = queue.get_nowait()
            started = time.perf_counter()
            try:
                await sink.send(event, body=body)
            except Exception:
                failures += 1
            latencies.append(time.perf_counter() - started)

    await sink.send(events[0])  # warm-up: connection pool, imports (not counted)
    if child:
        handshake("measure")
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    if child:
        handshake("done")
    await sink.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    latencies.sort()
    return {
        "events": len(events), "failures": failures, "wall_s": wall, "cpu_s": cpu,
        "events_per_s": len(events) / wall, "cpu_ms_per_event": cpu / len(events) * 1000,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


async def received(url: str) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return int((await resp.json())["count"])


def handshake(word: str) -> None:
    print(word, flush=True)
    sys.stdin.readline()


def callgrind(args: argparse.Namespace, url: str) -> int:
    """The sender under callgrind, counting only the pushed events (not start-up or warm-up); returns the
    instructions."""
    cmd = [str(Path(__file__).resolve()), "--child", url, "--events", str(args.events),
           "--concurrency", str(args.concurrency), "--signature", args.signature]
    cmd += ["--stored-body"] if args.stored_body else []
    cmd += ["--bare"] if args.bare else []
    cmd += ["--watcher-src", str(args.watcher_src)] if args.watcher_src else []
    return _meta.callgrind_count(cmd, "the sender")


# ------------------------------------------------------------------------------------------- results


def record(results_path: Path, figures: dict, args: argparse.Namespace, meta: _meta.Meta) -> str:
    import aiohttp

    from watcher import __version__

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    entry = (
        f"\n### {when} — flora-watcher {__version__}\n\n"
        f"{meta.markdown()}\n"
        f"- setup: {figures['events']} events, concurrency {args.concurrency}, signature `{args.signature}`, "
        f"receiver in a separate process on 127.0.0.1; aiohttp {aiohttp.__version__}\n"
        f"- throughput: **{figures['events_per_s']:.0f} events/s** ({figures['wall_s']:.2f} s wall)\n"
        f"- sender CPU: **{figures['cpu_ms_per_event']:.3f} ms per event** ({figures['cpu_s']:.2f} s user+sys "
        f"for the run)\n"
        f"- latency per send: p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms; "
        f"failures {figures['failures']}; receiver counted {figures['received']}\n"
    )
    text = results_path.read_text() if results_path.exists() else "# Benchmark results\n"
    if HEADING in text:
        start = text.index(HEADING) + len(HEADING)
        nxt = text.find("\n## ", start)
        end = len(text) if nxt == -1 else nxt
        text = text[:end].rstrip("\n") + "\n" + entry + text[end:]
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\nSigned webhook deliveries through `WebhookSink` (body " \
            f"serialisation, signing, POST, classification) to a local receiver process.\n" + entry
    results_path.write_text(text)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--signature", choices=("standard", "flora", "none"), default="standard")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-record", action="store_true", help="print the figures only")
    parser.add_argument("--stored-body", action="store_true",
                        help="send each event's stored JSON (as the dispatcher does) instead of rendering it per send")
    parser.add_argument("--callgrind", action="store_true",
                        help="count the sender's instructions per event (valgrind) instead of CPU time; prints only")
    parser.add_argument("--bare", action="store_true",
                        help="POST through a plain aiohttp session instead of the sink (aiohttp's own cost)")
    parser.add_argument("--watcher-src", type=Path, default=None,
                        help="send with the watcher package of this checkout (an A/B against another build)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    if args.child:
        asyncio.run(push(args.child, make_events(args.events), args.concurrency, args.signature,
                         stored_body=args.stored_body, child=True, bare=args.bare))
        return 0
    meta = _meta.start("bench/bench_webhook.py", sys.argv[1:] if argv is None else argv)
    receiver = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        if args.callgrind:
            instructions = callgrind(args, f"http://127.0.0.1:{port}/hook")
            received_n = asyncio.run(received(f"http://127.0.0.1:{port}/count")) - 1
            meta.finish()
            print(f"{instructions / args.events / 1000:.1f} k instructions per event ({instructions:,} for "
                  f"{args.events} events; receiver counted {received_n}; watcher from "
                  f"{args.watcher_src or ROOT})")
            return 0 if received_n == args.events else 1
        events = make_events(args.events)
        figures = asyncio.run(push(f"http://127.0.0.1:{port}/hook", events, args.concurrency, args.signature,
                                   stored_body=args.stored_body, bare=args.bare))
        figures["received"] = asyncio.run(received(f"http://127.0.0.1:{port}/count")) - 1  # minus warm-up
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
    return 0 if figures["failures"] == 0 and figures["received"] == figures["events"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
