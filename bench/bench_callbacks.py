"""Push + poll benchmark: FLORA callbacks → sink latency, and what a flood of forged callbacks costs.

Every part runs in its own process on loopback: the FLORA simulator (`flora-watcher simulate`, real time,
signing its callbacks), the watcher (`flora-watcher run`, `interval = 30`, `[ingress]` on, one webhook sink), a
webhook receiver that notes when each event arrives, and for the flood a forger.

1. **Latency** (`--rate`, default 100 callbacks/s for `--seconds`): the driver starts runs with a `callback_url`
   pointing at the watcher's ingress at that rate (each ends 0.5-3.5 s later, so callbacks come at the same
   rate). Reported: callback → sink (the simulator's first delivery attempt to the receiver's arrival) p50/p99,
   run end → sink, events lost and duplicated (every run must arrive once), the watcher's CPU time and API
   requests by route in the window.
2. **Flood** (`--flood-rate`, default 1,000 forged requests/s): genuine callbacks at `--genuine-rate` (20/s),
   first alone, then with the forger sending requests that pass every cheap check (a current `t`, a well-formed
   `v1`, a plausible body) so each one costs a body read and an HMAC — the worst case short of a valid
   signature. Reported: the watcher's CPU time per second in both windows (the difference is the flood's cost),
   the forged requests answered (and with what), and the genuine callbacks' latency p99 during the flood.

    python bench/bench_callbacks.py                  # both parts, 60 s windows
    python bench/bench_callbacks.py --seconds 30 --skip-flood --write

CPU figures are CPU time of the watcher process (utime + stime from /proc), not wall time: this machine is
shared. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import _meta
import aiohttp
from bench_engine import cpu_seconds, free_port, now_ms, serve_receiver  # the engine bench's probes and receiver

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk_test_bench_callbacks_0123456789"
SECRET = "whsec_bench_callbacks_signing_secret"


def bucket_q(buckets: list[tuple[float, float]], q: float) -> float:
    """The upper bound of the histogram bucket holding quantile ``q`` (cumulative counts)."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    total = buckets[-1][1]
    return next(le for le, n in buckets if n >= q * total)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))]


# ------------------------------------------------------------------------------------------------ processes


async def spawn(*args: str, stdout=asyncio.subprocess.DEVNULL, stdin=asyncio.subprocess.DEVNULL,
                env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, stdin=stdin, stdout=stdout, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


async def stop(proc: asyncio.subprocess.Process | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def wait_http(session: aiohttp.ClientSession, url: str, what: str) -> None:
    for _ in range(400):
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as r:
                if r.status < 500:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def forge(port: int, path: str, rate: float, seconds: float, connections: int, kind: str = "forged") -> None:
    """The forger: ``rate`` requests a second over keep-alive connections, each a plausible callback with a
    current ``t`` and a random, well-formed ``v1`` (``forged``: it costs the watcher a body read and an HMAC)
    or with no signature at all (``unsigned``: refused before the body is read). Prints {"sent", "answered",
    "by_status"} as JSON at the end."""

    async def one_connection(index: int, share: float, stats: dict[int, int], sent: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        rng = random.Random(index)
        interval = 1.0 / share
        next_at = time.monotonic()
        end = next_at + seconds
        pending = 0

        async def read_answers() -> None:
            nonlocal pending
            while True:
                line = await reader.readline()
                if not line:
                    return
                status = int(line.split()[1])
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                stats[status] = stats.get(status, 0) + 1
                pending -= 1

        answers = asyncio.create_task(read_answers())
        try:
            while time.monotonic() < end:
                run = f"run_{rng.getrandbits(80):020x}"
                body = json.dumps({"id": f"whd_{rng.getrandbits(96):024x}", "type": "run.completed",
                                   "api_version": "2026-06-11", "created_at": now_ms(),
                                   "data": {"run_id": run, "run_type": "technique", "workspace_id": "ws_sim4f10ra",
                                            "status": "completed"}}).encode()
                v1 = hmac.new(b"not the secret", body, hashlib.sha256).hexdigest()
                signature = f"Flora-Signature: t={int(time.time())},v1={v1}\r\n" if kind == "forged" else ""
                head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        f"{signature}Content-Length: {len(body)}\r\n\r\n")
                writer.write(head.encode() + body)
                pending += 1
                sent[0] += 1
                next_at += interval
                await writer.drain()
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            for _ in range(200):
                if pending <= 0:
                    break
                await asyncio.sleep(0.01)
        finally:
            answers.cancel()
            writer.close()

    async def main() -> None:
        stats: dict[int, int] = {}
        sent = [0]
        await asyncio.gather(*(one_connection(i, rate / connections, stats, sent) for i in range(connections)))
        print(json.dumps({"sent": sent[0], "answered": sum(stats.values()), "by_status": stats}), flush=True)

    asyncio.run(main())


@dataclass
class Stack:
    sim_port: int
    sim: asyncio.subprocess.Process
    receiver_proc: asyncio.subprocess.Process
    receiver: str
    watcher: asyncio.subprocess.Process
    ingress_port: int
    session: aiohttp.ClientSession
    tmp: Path
    server_port: int

    async def histogram(self, name: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of a histogram of the watcher's /metrics."""
        async with self.session.get(f"http://127.0.0.1:{self.server_port}/metrics") as r:
            text = await r.text()
        out = []
        for line in text.splitlines():
            if line.startswith(f"{name}_bucket{{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        return out

    async def outcomes(self) -> dict[str, int]:
        """The watcher's flora_watcher_callbacks_confirmed_total by outcome (its /metrics)."""
        async with self.session.get(f"http://127.0.0.1:{self.server_port}/metrics") as r:
            text = await r.text()
        out: dict[str, int] = {}
        for line in text.splitlines():
            if line.startswith("flora_watcher_callbacks_confirmed_total{"):
                label = line.split('outcome="', 1)[1].split('"', 1)[0]
                out[label] = int(float(line.rsplit(" ", 1)[1]))
        return out

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}/_sim"

    @property
    def callback_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}/flora/callbacks"

    async def admin_post(self, path: str, body: dict) -> dict:
        async with self.session.post(self.admin + path, json=body) as r:
            r.raise_for_status()
            return await r.json()

    async def admin_get(self, path: str) -> dict:
        async with self.session.get(self.admin + path) as r:
            r.raise_for_status()
            return await r.json()

    async def arrivals(self) -> dict[str, list[int]]:
        async with self.session.get(self.receiver + "/arrivals") as r:
            return await r.json()


@contextlib.asynccontextmanager
async def stack(tmp: Path, *, max_rps: float, interval: float):
    sim_port, ingress_port, server_port = free_port(), free_port(), free_port()
    sim = await spawn("-m", "watcher", "--log-level", "warning", "simulate", "--port", str(sim_port), "--api-key",
                      KEY, "--runs", "0", "--signing-secret", SECRET)
    receiver_proc = await spawn(str(Path(__file__).resolve()), "--serve-receiver", stdin=asyncio.subprocess.PIPE,
                                stdout=asyncio.subprocess.PIPE)
    watcher = None
    session = aiohttp.ClientSession()
    try:
        assert receiver_proc.stdout is not None
        receiver = f"http://127.0.0.1:{int(await receiver_proc.stdout.readline())}"
        await wait_http(session, f"http://127.0.0.1:{sim_port}/_sim/stats", "the simulator")
        tmp.mkdir(parents=True, exist_ok=True)
        cfg = tmp / "watcher.toml"
        cfg.write_text(f"""
[api]
base_url = "http://127.0.0.1:{sim_port}/api/v1"
api_key = "{KEY}"
max_rps = {max_rps}

[watch]
interval = {interval}
state_dir = "{tmp / 'state'}"

[server]
listen = "127.0.0.1:{server_port}"

[ingress]
listen = "127.0.0.1:{ingress_port}"
signing_secret = "{SECRET}"

[[sinks]]
name = "hook"
type = "webhook"
url = "{receiver}/hook"
""")
        watcher = await spawn("-m", "watcher", "--log-level", "warning", "--log-format", "json", "run", "-c",
                              str(cfg))
        await wait_http(session, f"http://127.0.0.1:{ingress_port}/", "the watcher's ingress")
        await asyncio.sleep(2.0)  # its first sweep
        yield Stack(sim_port, sim, receiver_proc, receiver, watcher, ingress_port, session, tmp, server_port)
    finally:
        await session.close()
        await stop(watcher)
        if receiver_proc.stdin is not None:
            receiver_proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver_proc.wait(), 10)
        await stop(sim)


# ------------------------------------------------------------------------------------------------ measuring


@dataclass
class Window:
    seconds: float
    runs: list[str] = field(default_factory=list)
    callback_to_sink_ms: list[float] = field(default_factory=list)
    end_to_sink_ms: list[float] = field(default_factory=list)
    lost: int = 0
    duplicates: int = 0
    cpu_s: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    confirm: list[tuple[float, float]] = field(default_factory=list)  # callback_confirm_seconds buckets (delta)

    def line(self, rate: float) -> str:
        cb, end = self.callback_to_sink_ms, self.end_to_sink_ms
        api = sum(self.requests.values())
        return (f"{len(self.runs)} callback runs at {rate:g}/s over {self.seconds:.0f} s: callback → sink p50 "
                f"{pct(cb, 0.5):.0f} ms, p99 {pct(cb, 0.99):.0f} ms, max {max(cb, default=float('nan')):.0f} ms; "
                f"run end → sink p50 {pct(end, 0.5):.0f} ms, p99 {pct(end, 0.99):.0f} ms; lost {self.lost}, "
                f"duplicates {self.duplicates}; watcher CPU {self.cpu_s:.1f} s "
                f"({self.cpu_s / self.seconds * 100:.1f} % of a core); API requests {api} ({api / self.seconds:.1f}/s: "
                + ", ".join(f"{k} {v}" for k, v in sorted(self.requests.items())) + "); callbacks done: "
                + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()) if v)
                + f"; in the watcher, receipt → confirmed p50 ≤ {bucket_q(self.confirm, 0.5):g} s, "
                  f"p99 ≤ {bucket_q(self.confirm, 0.99):g} s (histogram buckets)")


async def drive(st: Stack, rate: float, seconds: float) -> list[str]:
    """Start ``rate`` runs a second with a callback_url for ``seconds`` (in batches every 50 ms)."""
    runs: list[str] = []
    t0 = time.monotonic()
    batch_every = 0.05
    made = 0
    while (elapsed := time.monotonic() - t0) < seconds:
        due = int(elapsed * rate) + 1
        if due > made:
            body = {"count": due - made, "callback_url": st.callback_url, "pending_ms": [0, 500],
                    "running_ms": [500, 3000]}
            runs.extend((await st.admin_post("/runs", body))["run_ids"])
            made = due
        await asyncio.sleep(batch_every)
    return runs


async def measure(st: Stack, rate: float, seconds: float) -> Window:
    await st.admin_post("/stats/reset", {})
    outcomes0 = await st.outcomes()
    confirm0 = dict(await st.histogram("flora_watcher_callback_confirm_seconds"))
    cpu0 = cpu_seconds(st.watcher.pid)
    runs = await drive(st, rate, seconds)
    cpu1 = cpu_seconds(st.watcher.pid)
    stats = await st.admin_get("/stats")
    window = Window(seconds=seconds, runs=runs, cpu_s=cpu1 - cpu0,
                    requests={k: sum(v.values()) for k, v in stats["by_route"].items()}, outcomes=outcomes0)
    deadline = time.monotonic() + 60
    wanted = set(runs)
    while time.monotonic() < deadline:  # the last runs end up to 4 s after the window; their events follow
        got = await st.arrivals()
        if wanted <= set(got):
            break
        await asyncio.sleep(0.5)
    got = await st.arrivals()
    before = window.outcomes
    window.outcomes = {k: v - before.get(k, 0) for k, v in (await st.outcomes()).items()}
    window.confirm = [(le, n - confirm0.get(le, 0.0))
                      for le, n in await st.histogram("flora_watcher_callback_confirm_seconds")]
    for run_id in runs:
        arrivals = got.get(run_id, [])
        if not arrivals:
            window.lost += 1
            continue
        window.duplicates += len(arrivals) - 1
        deliveries = (await st.admin_get(f"/callbacks?run_id={run_id}"))["deliveries"]
        truth = await st.admin_get(f"/runs/{run_id}")
        first_attempt = min(a["at_ms"] for d in deliveries for a in d["attempts"]) if deliveries else None
        if first_attempt is not None:
            window.callback_to_sink_ms.append(arrivals[0] - first_attempt)
        window.end_to_sink_ms.append(arrivals[0] - truth["completed_at"])
    return window


async def api_cost(tmp: Path, interval: float, seconds: float, max_rps: float, rate: float) -> tuple[float, dict]:
    """API requests a minute of a watcher sweeping every ``interval`` s over a steady workload (``rate`` runs a
    second lasting 20-120 s, in steady state from the start), no callbacks."""
    async with stack(tmp, max_rps=max_rps, interval=interval) as st:
        await st.admin_post("/generator", {"rate": rate, "duration_s": [20, 120], "warm": True})
        await asyncio.sleep(interval + 5)  # past its first sweeps
        await st.admin_post("/stats/reset", {})
        await asyncio.sleep(seconds)
        stats = await st.admin_get("/stats")
    return stats["requests_total"] / seconds * 60, {k: sum(v.values()) for k, v in stats["by_route"].items()}


async def flood(st: Stack, genuine_rate: float, flood_rate: float, seconds: float,
                kind: str = "forged") -> tuple[Window, Window, dict]:
    print(f"genuine callbacks alone at {genuine_rate:g}/s for {seconds:.0f} s …", flush=True)
    quiet = await measure(st, genuine_rate, seconds)
    print("  " + quiet.line(genuine_rate), flush=True)
    print(f"the same with {flood_rate:g} {kind} requests/s …", flush=True)
    forger = await spawn(str(Path(__file__).resolve()), "--forge", str(st.ingress_port), str(flood_rate),
                         str(seconds + 1), kind, stdout=asyncio.subprocess.PIPE)
    await asyncio.sleep(0.5)  # the forger's connections are up
    flooded = await measure(st, genuine_rate, seconds)
    assert forger.stdout is not None
    report = json.loads((await asyncio.wait_for(forger.stdout.read(), 60)).decode().strip().splitlines()[-1])
    await forger.wait()
    print("  " + flooded.line(genuine_rate), flush=True)
    print(f"  forger: {report}", flush=True)
    return quiet, flooded, report


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=100.0, help="callbacks per second in part 1 (default 100)")
    ap.add_argument("--seconds", type=float, default=60.0, help="each measured window (default 60)")
    ap.add_argument("--interval", type=float, default=30.0, help="the watcher's [watch] interval (default 30)")
    ap.add_argument("--max-rps", type=float, default=50.0, help="the watcher's API budget (default 50)")
    ap.add_argument("--genuine-rate", type=float, default=20.0, help="genuine callbacks/s in part 2 (default 20)")
    ap.add_argument("--flood-rate", type=float, default=1000.0, help="forged requests/s in part 2 (default 1000)")
    ap.add_argument("--api-cost", action="store_true",
                    help="also: API requests a minute at interval 5 vs --interval, no callbacks (1 run/s, 20-120 s)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-flood", action="store_true")
    ap.add_argument("--write", action="store_true", help="append the figures to bench/RESULTS.md")
    ap.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--flood-kind", choices=("forged", "unsigned"), default="forged",
                    help="forged (pass the cheap checks: body read + HMAC each; default) or unsigned (refused on "
                         "the header alone)")
    ap.add_argument("--forge", nargs=4, metavar=("PORT", "RATE", "SECONDS", "KIND"), help=argparse.SUPPRESS)
    return ap.parse_args()


async def main(args: argparse.Namespace) -> None:
    meta = _meta.start("bench/bench_callbacks.py", sys.argv[1:])
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="flora-bench-callbacks-") as tmpdir:
        tmp = Path(tmpdir)
        if args.api_cost:
            costs = {}
            for interval in (5.0, args.interval):
                print(f"API cost at interval {interval:g} s for {args.seconds:.0f} s …", flush=True)
                costs[interval] = await api_cost(tmp / f"cost-{interval:g}", interval, args.seconds, args.max_rps, 1.0)
            (five, five_routes), (slow, slow_routes) = costs[5.0], costs[args.interval]
            lines.append(f"- API cost without callbacks (1 run/s, 20-120 s each, ~70 active): interval 5 s "
                         f"{five:.1f} requests/min ({five_routes}), interval {args.interval:g} s {slow:.1f}/min "
                         f"({slow_routes}): {five / max(slow, 0.01):.1f}× fewer")
            print(lines[-1], flush=True)
        if not args.skip_latency:
            async with stack(tmp / "latency", max_rps=args.max_rps, interval=args.interval) as st:
                print(f"{args.rate:g} callbacks/s for {args.seconds:.0f} s (interval {args.interval:g} s) …",
                      flush=True)
                window = await measure(st, args.rate, args.seconds)
                lines.append(f"- latency: {window.line(args.rate)}")
                print(lines[-1], flush=True)
        if not args.skip_flood:
            async with stack(tmp / "flood", max_rps=args.max_rps, interval=args.interval) as st:
                quiet, flooded, report = await flood(st, args.genuine_rate, args.flood_rate, args.seconds,
                                                     args.flood_kind)
                extra = (flooded.cpu_s - quiet.cpu_s) / args.seconds
                forged_rate = report["answered"] / (args.seconds + 1)
                lines.append(f"- without the flood: {quiet.line(args.genuine_rate)}")
                lines.append(f"- with {args.flood_rate:g} {args.flood_kind} requests/s: "
                             f"{flooded.line(args.genuine_rate)}")
                lines.append(f"- {args.flood_kind} requests: {report['sent']} sent, {report['answered']} answered "
                             f"({forged_rate:.0f}/s; by status {report['by_status']}); their cost: "
                             f"{extra * 100:.1f} % of a core more, {extra / max(forged_rate, 1) * 1e6:.0f} µs of "
                             "CPU per request")
                for line in lines[-3:]:
                    print(line, flush=True)
    meta.finish()
    if args.write:
        section = (f"\n## Push + poll: FLORA callbacks → sink, and a flood of forged callbacks (bench_callbacks.py)\n\n"
                   f"{meta.markdown()}\n" + "\n".join(lines) + "\n")
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(section)


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.serve_receiver:
        serve_receiver()
    elif ARGS.forge:
        forge(int(ARGS.forge[0]), "/flora/callbacks", float(ARGS.forge[1]), float(ARGS.forge[2]), connections=8,
              kind=ARGS.forge[3])
    else:
        asyncio.run(main(ARGS))
