"""What one answer of /api/v1/status costs on a big state store (the status page asks every 1.5 s).

Fills a SQLite store with EVENTS events (a fifth of them failures in the last hour), one delivery per event and
sink (most delivered, some pending, some dead) and TRACKED active runs, then times ``StatusPage.document()``
(store reads + building the document) and the JSON encoding, past the 0.5 s answer cache, ROUNDS times.

    python bench/bench_status.py [--events 100000] [--tracked 3000] [--rounds 30] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import _meta

from watcher.model import Output, Run, Technique, TrackedRun
from watcher.server import StatusPage
from watcher.store import AsyncStore, Store
from watcher.transitions import build_event
from watcher.web import status as status_data

SINKS = ("ops", "journal", "chat")


class Clock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def fill(path: Path, events: int, tracked: int, now: int) -> None:
    with Store.open(path) as store:
        batch = []
        for i in range(events):
            failed = i % 5 == 0
            at = now - (events - i) * (3_500_000 // events)  # all within the last hour: the worst case
            run = Run(f"run_{i:08d}", "failed" if failed else "completed", progress=100, created_at=at - 9_000,
                      started_at=at - 8_000, completed_at=at, project_id="prj_a", technique=Technique("t", "CCTV"),
                      error_code=f"CODE_{i % 7}" if failed else None, error_message="failed" if failed else None,
                      outputs=() if failed else (Output("o1", "imageUrl", f"https://cdn.example/{i}.png"),))
            event = build_event("run.failed" if failed else "run.completed", run, "running", now_ms=at, late=False)
            batch.append((event, list(SINKS)))
            if len(batch) == 1_000:
                store.commit_sweep(upserts=(), deletes=(), events=batch, meta={}, now_ms=now)
                batch = []
        if batch:
            store.commit_sweep(upserts=(), deletes=(), events=batch, meta={}, now_ms=now)
        store._conn.execute("UPDATE deliveries SET state = 'delivered', delivered_ms = ? WHERE id % 10 != 0", (now,))
        store._conn.execute("UPDATE deliveries SET state = 'dead', dead_ms = ? WHERE id % 20 = 0", (now,))
        runs = [TrackedRun(Run(f"run_active_{i}", "running", progress=i % 100, created_at=now - i * 1000),
                           first_seen_ms=now, last_change_ms=now) for i in range(tracked)]
        store.commit_sweep(upserts=runs, deletes=(), events=(), meta={}, now_ms=now)


async def measure(path: Path, rounds: int) -> dict[str, list[float] | int]:
    """Per round: one answer right after a sweep that stored a failure (the failure counts are read again) and
    one after a delivery (they are not); and the JSON encoding."""
    clock = Clock()
    async with await AsyncStore.open(path) as store:
        tracked = await store.load_tracked()
        page = StatusPage(store, sink_types=lambda: {s: "webhook" for s in SINKS}, clock=clock, cache_s=0)
        page._runs = [t.run for t in tracked.values() if not t.terminal]  # as after a sweep report
        out: dict[str, list[float] | int] = {"after_failure": [], "after_delivery": [], "encode": []}
        for _ in range(rounds):
            page._failures = None
            for key in ("after_failure", "after_delivery"):
                t0 = time.perf_counter()
                document = await page.document()
                out[key].append((time.perf_counter() - t0) * 1000)  # type: ignore[union-attr]
            t1 = time.perf_counter()
            body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
            out["encode"].append((time.perf_counter() - t1) * 1000)  # type: ignore[union-attr]
            out["size"] = len(body)
        return out


def _p(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--tracked", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--write", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args()
    meta = _meta.start("bench/bench_status.py", sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.sqlite3"
        fill(path, args.events, args.tracked, Clock().now_ms())
        m = asyncio.run(measure(path, args.rounds))
    meta.finish()
    fail, deliv, enc = m["after_failure"], m["after_delivery"], m["encode"]
    assert isinstance(fail, list) and isinstance(deliv, list) and isinstance(enc, list)
    lines = [
        f"- setup: {args.events} events ({args.events // 5} failures, all in the last hour), "
        f"{args.events * len(SINKS)} deliveries, {args.tracked} active runs; SQLite; {args.rounds} rounds",
        f"- one answer after a sweep that stored a failure (failure counts re-read): p50 **{_p(fail, 0.5):.1f} ms**, "
        f"p95 {_p(fail, 0.95):.1f} ms",
        f"- one answer otherwise (after a delivery, a quiet sweep, or 0.5 s): p50 **{_p(deliv, 0.5):.1f} ms**, "
        f"p95 {_p(deliv, 0.95):.1f} ms; JSON encoding p50 {_p(enc, 0.5):.1f} ms; answer {m['size'] / 1024:.0f} KiB "
        f"({status_data.ACTIVE_MAX} of the active runs listed)",
    ]
    print("\n".join(lines))
    if args.write:
        results = Path(__file__).with_name("RESULTS.md")
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with results.open("a") as f:
            f.write(f"\n## Status page: the cost of one /api/v1/status answer\n\n### {stamp}\n\n"
                    f"{meta.markdown()}\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
