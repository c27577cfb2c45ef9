"""The baseline flora-watcher is measured against: a plain per-run poller.

Each interval it lists the active runs (status=pending and status=running, every page), then GETs the
``poll_url`` of every run it knows to be unfinished, and appends one JSON line per terminal transition to a
file. This is what a team writes first (FLORA's docs: "poll every 2-5 s"). Used only by bench_engine.py.

    python bench/baseline_poller.py BASE_URL API_KEY OUT_FILE [--interval 5] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

import aiohttp


async def list_active(session: aiohttp.ClientSession, base: str) -> dict[str, dict]:
    runs: dict[str, dict] = {}
    for status in ("pending", "running"):
        cursor = None
        while True:
            params = {"status": status, "limit": "100"}
            if cursor:
                params["cursor"] = cursor
            async with session.get(f"{base}/technique-runs", params=params) as resp:
                if resp.status != 200:
                    break
                body = await resp.json()
            for item in body.get("technique_runs", []):
                runs[item["run_id"]] = item
            cursor = (body.get("meta") or {}).get("next_cursor")
            if not cursor:
                break
    return runs


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("api_key")
    ap.add_argument("out")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    known: dict[str, dict] = {}
    done: set[str] = set()
    sem = asyncio.Semaphore(args.concurrency)
    headers = {"Authorization": f"Bearer {args.api_key}"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        with open(args.out, "a", encoding="utf-8") as out:

            async def poll(run_id: str, url: str) -> None:
                async with sem:
                    try:
                        async with session.get(url) as resp:
                            if resp.status != 200:
                                return
                            body = await resp.json()
                    except (aiohttp.ClientError, TimeoutError):
                        return
                if body.get("status") in ("completed", "failed") and run_id not in done:
                    done.add(run_id)
                    known.pop(run_id, None)
                    out.write(json.dumps({"run_id": run_id, "status": body["status"],
                                          "completed_at": body.get("completed_at"),
                                          "seen_ms": time.time_ns() // 1_000_000}) + "\n")
                    out.flush()

            while not stop.is_set():
                started = loop.time()
                try:
                    active = await list_active(session, args.base_url)
                except (aiohttp.ClientError, TimeoutError):
                    active = {}
                for rid, item in active.items():
                    if rid not in done:
                        known[rid] = item
                await asyncio.gather(*(poll(rid, item.get("poll_url") or f"{args.base_url}/runs/{rid}")
                                       for rid, item in list(known.items())))
                delay = started + args.interval - loop.time()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    except TimeoutError:
                        pass


if __name__ == "__main__":
    asyncio.run(main())
