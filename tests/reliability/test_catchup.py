"""Bounded catch-up (issue 15): runs that finished while the watcher was stopped are read and committed batch by
batch; a watcher killed in the middle of the catch-up resumes where its last batch ended."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.reliability.harness import SimServer, WatcherProcess, write_config
from watcher import cli
from watcher.simulator.app import Simulator
from watcher.sweep import CATCHUP_BATCH_PAGES, PAGE_SIZE

pytestmark = pytest.mark.slow

KEY = "sk_test_catchup_key_0123456789"
LIST = "GET /api/v1/technique-runs"


def lines(path: Path) -> list[dict]:
    """The complete lines of the events file (the watcher may be appending the last one as we read)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def meta(state: Path) -> dict[str, str]:
    with sqlite3.connect(state / "state.sqlite3") as conn:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_watcher_killed_during_the_catch_up_resumes_where_it_was(tmp_path: Path, capsys) -> None:
    sim = Simulator(api_key=KEY, seed=5)
    api = await SimServer(sim).start()
    events_file = tmp_path / "events.jsonl"
    state = tmp_path / "state"
    # One sweep an hour: each start's first sweep is its only one while the test runs (on a busy machine delivering
    # the catch-up can take longer than any shorter interval, and a second sweep cut short by the stop reads pages
    # no log line counts), so the requests counted are the catch-up's own.
    config = write_config(tmp_path, base_url=api.base_url, api_key=KEY, events_file=events_file, interval=3600,
                          max_rps=1000)
    # Debug: a sweep that finds nothing new logs sweep.finished only at debug, and the page bound below counts
    # every sweep (on a busy machine the catch-up outlasts the 30 s interval, and a second sweep reads a few pages).
    proc = WatcherProcess(config, tmp_path / "logs", log_level="debug")
    try:
        # The first start ever reports nothing from before it.
        now = sim.now_ms()
        sim.create_runs(50, pending_ms=(0, 10), running_ms=(10, 50), created_at=(now - 1_200_000, now - 700_000))
        await proc.start()
        await proc.wait_for_log('"sweep.finished"')
        await proc.terminate()
        assert lines(events_file) == []

        # A ten-minute downtime (the watcher's state is moved back ten minutes), in which 4,500 runs were created
        # and finished: 45 pages, so two batches of 20 pages and a rest.
        down = sim.now_ms() - 600_000
        with sqlite3.connect(state / "state.sqlite3") as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key IN ('first_start_ms', 'high_watermark_ms:*|*|*')",
                         (str(down),))
        count = 4_500
        created = set(sim.create_runs(count, pending_ms=(0, 10), running_ms=(10, 200),
                                      created_at=(down + 1_000, sim.now_ms() - 1_000)))
        await until(lambda: len({t["run_id"] for t in sim.transitions()} & created) == count, 30, "runs to end")
        expected = {(t["run_id"], t["status"]) for t in sim.transitions() if t["run_id"] in created}

        # Killed right after the catch-up's first batch is committed, before any of it is sent.
        sim.reset_stats()
        await proc.start(crash_points=["catchup_batch"])
        assert await proc.wait(60) is not None, "the crash point did not fire"
        first_pages = sum(sim.stats()["by_route"].get(LIST, {}).values())
        progress = json.loads(meta(state)["catchup:*|*|*"])
        assert [part["read"] for part in progress] == [CATCHUP_BATCH_PAGES * PAGE_SIZE]
        assert lines(events_file) == []
        capsys.readouterr()
        assert cli.main(["status", "-c", str(config)]) == 0
        assert "catch-up:     2000 runs read, about 2500 to go; 2000 deliveries queued" in capsys.readouterr().out

        # Restarted: the rest of the catch-up. Nothing lost, nothing sent twice, and what the first run
        # committed is not read again.
        sim.reset_stats()
        log_at = proc.log_size()
        await proc.start()
        await until(lambda: len(lines(events_file)) >= count, 90, "every late event in the file")
        await proc.terminate()
        got = lines(events_file)
        ids = [e["id"] for e in got]
        assert len(ids) == len(set(ids)) == count, "duplicates in the file"
        assert {(e["data"]["run_id"], e["type"].removeprefix("run.")) for e in got} == expected
        assert all(e["data"]["late"] for e in got)
        assert meta(state)["catchup:*|*|*"] == ""
        second_pages = sum(sim.stats()["by_route"].get(LIST, {}).values())
        with open(proc.stderr_path, "rb") as f:
            f.seek(log_at)
            sweeps = f.read().count(b'"sweep.finished"')
        rest = (count - CATCHUP_BATCH_PAGES * PAGE_SIZE) // PAGE_SIZE  # 25 pages the first run did not commit
        # The second run reads that rest, the newest runs down to where the first run started (within the 30 s
        # margin: a few pages) and the active set once (2 empty pages); a later sweep reads a few pages more.
        assert first_pages >= CATCHUP_BATCH_PAGES
        assert rest <= second_pages <= rest + 8 + 5 * (sweeps - 1), (second_pages, sweeps)
        assert second_pages < count // PAGE_SIZE  # reading everything again would take 45 pages at least
    finally:
        await proc.kill()
        await api.close()
