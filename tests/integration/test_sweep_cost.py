"""What a steady sweep does per listed run, counted (not timed): a guard for the watcher's CPU that does not depend
on the machine's speed or load.

The simulator (seeded, on the test's FakeClock) runs the engine benchmark's workload at ~1,000 active runs in
steady state: runs of 20-120 s, 15 % fail. The real ``Sweeper`` (API client on loopback, parse memo, SQLite store)
sweeps it every 5 s of simulated time. After a few sweeps, one sweep is counted: a listed run whose item is
unchanged, or moved its progress alone (most of them), must cost neither a full parse of its item, nor a
``transitions.detect``, nor a row written; only what changed does. And every page of the documented shape is
decoded to typed Structs (``wire``), none through ``json.loads`` and the tolerant parser.
"""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from tests.fakes import FakeClock
from watcher import api, normalize, sweep
from watcher.api import FloraClient
from watcher.config import WatchConfig
from watcher.model import Run, TrackedRun
from watcher.plan import stall_clock_lag_ms
from watcher.secret import Secret
from watcher.sinks.registry import sink_config
from watcher.store import AsyncStore, Store
from watcher.sweep import Sweeper

KEY = "sk_test_sweep_cost_0123456789"
SIM_SEED = 7
EPOCH_MS = 1_764_399_000_000
INTERVAL = 5.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0, epoch_ms=EPOCH_MS)


@pytest.fixture
def sim_clock(clock: FakeClock) -> FakeClock:
    return clock


def beyond_progress(run: Run, before: TrackedRun | None) -> bool:
    """The listed ``run`` is new, or differs from what was remembered in more than its progress."""
    return before is None or msgspec.structs.replace(run, progress=before.run.progress) != before.run


async def test_a_steady_sweep_parses_detects_and_writes_only_what_changed(sim, clock, tmp_path: Path, monkeypatch):
    sim.sim.start_generator(1000 / 70, duration_ms=(20_000, 120_000), pending_ms=(0, 2_000), fail_ratio=0.15,
                            warm=True)
    store = AsyncStore(Store.open(tmp_path / "state.db"))
    client = FloraClient(sim.base_url, Secret(KEY), timeout=30, max_rps=1e6, clock=clock)
    watch = WatchConfig(interval=INTERVAL, state_dir=tmp_path)
    sweeper = Sweeper(client, store, watch=watch, sinks=[sink_config(name="f", type="file", path=tmp_path / "e")],
                      clock=clock, rand=random.Random(1))
    counts = {"parse_run": 0, "wire_run": 0, "parse_list_page": 0, "detect": 0, "upserts": 0}
    listed: list[Run] = []

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    # a full parse of an item: wire_run (a typed item) or parse_run (one the typed shape does not hold)
    monkeypatch.setattr(normalize, "parse_run", counting("parse_run", normalize.parse_run))
    monkeypatch.setattr(normalize, "wire_run", counting("wire_run", normalize.wire_run))
    monkeypatch.setattr(api, "parse_list_page", counting("parse_list_page", api.parse_list_page))
    monkeypatch.setattr(sweep, "detect", counting("detect", sweep.detect))
    take_page, commit = Sweeper._take_page, store.commit_sweep

    def recording_take_page(self, runs, *args, **kwargs):
        listed.extend(runs)
        return take_page(self, runs, *args, **kwargs)

    async def counting_commit(*, upserts, **kwargs):
        upserts = list(upserts)
        counts["upserts"] += len(upserts)
        return await commit(upserts=upserts, **kwargs)

    monkeypatch.setattr(Sweeper, "_take_page", recording_take_page)
    monkeypatch.setattr(store, "commit_sweep", counting_commit)
    try:
        await sweeper.load()
        for _ in range(4):  # the first sweep tracks everything; then the steady state
            assert (await sweeper.sweep()).ok
            clock.advance(INTERVAL)
        before = dict(sweeper.tracked)
        lag = stall_clock_lag_ms(int(watch.stalled_after * 1000))
        clocks_due = {r for r, since in sweeper.unsaved.items() if since <= clock.now_ms() - lag}
        for key in counts:
            counts[key] = 0
        listed.clear()
        result = await sweeper.sweep()
    finally:
        await client.close()
        await store.aclose()

    assert result.ok and result.polls == 0
    changed = [run for run in listed if beyond_progress(run, before.get(run.run_id))]
    unfinished = [run for run in listed if not (run.run_id in before and before[run.run_id].terminal)]
    # The workload is what the benchmark's is: ~1,800 runs listed a sweep, most unchanged or moving only.
    assert len(listed) > 1_500 and len(changed) < len(listed) // 4
    # Every page in the documented shape: decoded to typed Structs, none through json.loads and parse_list_page.
    assert counts["parse_list_page"] == 0 and counts["parse_run"] == 0
    # Full parses: only the items that are new or changed beyond their progress.
    assert counts["wire_run"] == len(changed)
    # Transition rules: only for the runs that changed beyond their progress (none is stalled or polled here).
    assert counts["detect"] == len([run for run in unfinished if beyond_progress(run, before.get(run.run_id))])
    assert counts["detect"] < len(unfinished) // 4
    # Rows written: a run new or with a new status, and the stall clocks whose lazy write is due; not the
    # ~1,000 running runs whose progress (and so stall clock) moved.
    new_status = {run.run_id for run in unfinished
                  if run.run_id not in before or run.status != before[run.run_id].status}
    assert counts["upserts"] == len((new_status | clocks_due) & set(sweeper.tracked))
    assert counts["upserts"] < len(unfinished) // 4
