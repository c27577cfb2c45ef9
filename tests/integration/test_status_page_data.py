"""The status page's data source (server.StatusPage) as a daemon observer, over a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fakes import FakeClock
from tests.integration.test_store import make_event, make_tracked
from watcher.observer import Report
from watcher.server import StatusPage
from watcher.store import AsyncStore
from watcher.sweep import SweepResult


def report(clock: FakeClock, runs: dict, *, swept: bool) -> Report:
    return Report(now_ms=clock.now_ms(), monotonic=clock.monotonic(), runs=runs, sinks=("ops",), interval=5.0,
                  sweep=SweepResult() if swept else None)


async def test_runs_from_the_store_until_this_instance_sweeps_then_from_its_reports(tmp_path: Path) -> None:
    clock = FakeClock()
    async with await AsyncStore.open(tmp_path / "state.sqlite3") as store:
        await store.commit_sweep(upserts=[make_tracked("run_stored"), make_tracked("run_done", "completed")],
                                 deletes=[], events=[(make_event("run_done", "run.completed"), ["ops"])], meta={},
                                 now_ms=clock.now_ms())
        page = StatusPage(store, sink_types=lambda: {"ops": "webhook"}, clock=clock, cache_s=10)

        async def document() -> dict:
            return json.loads(await page.body())

        first = await document()
        assert [r["run_id"] for r in first["active_runs"]] == ["run_stored"]  # a standby, or before a sweep
        assert [e["run_id"] for e in first["recent_events"]] == ["run_done"]
        assert first["sinks"][0]["name"] == "ops" and first["sinks"][0]["pending"] == 1

        page.on_sweep(report(clock, {"run_stored": make_tracked("run_stored")}, swept=False))  # standby's turn
        memory = {"run_mem": make_tracked("run_mem"), "run_end": make_tracked("run_end", "failed")}
        assert [r["run_id"] for r in (await document())["active_runs"]] == ["run_stored"]
        page.on_sweep(report(clock, memory, swept=True))
        memory.clear()  # the daemon's own mapping moves on; the page kept what it needed
        assert [r["run_id"] for r in (await document())["active_runs"]] == ["run_mem"]

        await store.commit_sweep(upserts=[], deletes=[], events=[(make_event("run_new"), ["ops"])], meta={},
                                 now_ms=clock.now_ms())
        assert len((await document())["recent_events"]) == 1  # cached (cache_s=10)
        page.on_delivery("ops", "delivered")
        assert len((await document())["recent_events"]) == 1  # deliveries do not clear the cache
        clock.advance(10)
        assert [e["run_id"] for e in (await document())["recent_events"]] == ["run_new", "run_done"]
        await store.commit_sweep(upserts=[], deletes=[], events=[(make_event("run_next"), ["ops"])], meta={},
                                 now_ms=clock.now_ms())
        page.on_sweep(report(clock, memory, swept=True))  # a sweep does
        assert (await document())["recent_events"][0]["run_id"] == "run_next"
