"""A real `flora-watcher run` subprocess, killed with SIGKILL at random moments and restarted: no event is lost,
and nothing the file sink already holds is written again."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from watcher.simulator import run_simulator
from watcher.store import Store, store_path

KEY = "sk_test_crash_key_0123456789"


def write_config(tmp: Path, base_url: str) -> Path:
    cfg = tmp / "flora-watcher.toml"
    cfg.write_text(f"""
[api]
base_url = "{base_url}"
api_key = "{KEY}"
max_rps = 200

[watch]
interval = 0.2
state_dir = "{tmp / 'state'}"
poll_max_interval = 1

[[sinks]]
name = "journal"
type = "file"
path = "{tmp / 'events.jsonl'}"
""")
    return cfg


async def start(cfg: Path, log) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher", "--log-format", "json", "run", "-c", str(cfg),
        stdout=log, stderr=log, env=env,
    )


async def first_sweep_done(log_path: Path, proc: asyncio.subprocess.Process, timeout: float = 60) -> None:
    """Wait for the watcher's first ``sweep.finished`` log line (a liveness bound only: a busy machine may take
    its time to start a Python process); fail at once if the process exits instead."""
    deadline = time.monotonic() + timeout
    while b'"sweep.finished"' not in log_path.read_bytes():
        assert proc.returncode is None, f"the watcher exited with {proc.returncode} before its first sweep"
        assert time.monotonic() < deadline, f"the watcher did not finish a first sweep within {timeout}s"
        await asyncio.sleep(0.05)


def events_in(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from a kill mid-write is tolerated by the sink
    return out


async def test_sigkill_and_restart_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    rng = random.Random(11)
    async with run_simulator(api_key=KEY, seed=5) as sim:
        cfg = write_config(tmp_path, sim.base_url)
        events_file = tmp_path / "events.jsonl"
        with open(tmp_path / "watcher.log", "ab") as log:
            proc = await start(cfg, log)
            await first_sweep_done(tmp_path / "watcher.log", proc)  # from now on every run is new
            created: list[str] = []
            for _round in range(4):
                created += sim.sim.create_runs(rng.randint(5, 15), pending_ms=(10, 200), running_ms=(50, 1200))
                await asyncio.sleep(rng.uniform(0.2, 1.2))  # a kill at a random moment: the scenario, not a wait
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                created += sim.sim.create_runs(rng.randint(1, 5), pending_ms=(10, 100), running_ms=(50, 300))
                await asyncio.sleep(rng.uniform(0.0, 0.6))  # runs finish while the watcher is down
                proc = await start(cfg, log)
            # let everything finish and be reported (a liveness bound: the checks below say what was missing)
            deadline = time.monotonic() + 60
            expected = set()
            while time.monotonic() < deadline:
                truth = {t["run_id"]: t for t in sim.sim.transitions()}
                expected = {(rid, f"run.{truth[rid]['status']}") for rid in created if rid in truth}
                got = [(e["data"]["run_id"], e["type"]) for e in events_in(events_file)]
                if len(expected) == len(created) and set(got) >= expected:
                    break
                await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
    events = events_in(events_file)
    got = [(e["data"]["run_id"], e["type"]) for e in events]
    assert len(expected) == len(created)
    missing = expected - set(got)
    assert not missing, f"lost transitions: {sorted(missing)[:5]}"
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "the file sink holds an event twice"
    assert set(got) == expected  # and nothing that did not happen
    store = Store.open(store_path(tmp_path / "state"))
    try:
        assert store.integrity_check() == "ok"
        assert sum(store.pending_counts().values()) == 0
    finally:
        store.close()
