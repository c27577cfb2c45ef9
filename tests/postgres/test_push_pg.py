"""Push + poll with two real `flora-watcher run` processes on one PostgreSQL database: FLORA's callbacks go to the
standby's ingress, which only records them; the sweeper confirms them (its commits fenced by the lease) and each
run is reported once — also when the sweeper is killed with callbacks recorded and not yet confirmed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tests.postgres.multi import fleet
from watcher.simulator.callbacks import DEFAULT_SIGNING_SECRET

pytestmark = pytest.mark.slow

INGRESS = f'\n[ingress]\nlisten = "127.0.0.1:0"\nsigning_secret = "{DEFAULT_SIGNING_SECRET}"\n'
INTERVAL = 15.0  # long enough that a sweep does not explain a callback run's event, even on a busy machine
LIVENESS = 60.0  # a bound for a hung test only


def ingress_url(inst) -> str:
    for line in inst.proc.stderr_path.read_text().splitlines()[::-1]:
        obj = json.loads(line) if line.startswith("{") else {}
        if obj.get("event") == "ingress.listening":
            return f"http://127.0.0.1:{obj['port']}/flora/callbacks"
    raise AssertionError(f"instance {inst.name} logged no ingress.listening")


def log_events(inst, name: str) -> list[dict]:
    return [e for e in inst.proc.log_events() if e.get("event") == name]


async def test_the_standby_records_the_sweeper_confirms_and_a_killed_sweeper_loses_nothing(
        tmp_path: Path, pg_url: str) -> None:
    async with fleet(tmp_path, pg_url, lease=2.0, interval=INTERVAL) as f:
        for inst in f.instances.values():
            inst.config_args["extra_sinks"] = INGRESS
            inst.rewrite_config()
        a, b = f.instances["a"], f.instances["b"]
        await a.start()
        await a.proc.wait_for_log('"sweeper.lease_acquired"')
        await a.proc.wait_for_log('"sweep.finished"')
        await b.start()
        standby = ingress_url(b)

        # 1. Callbacks to the standby: recorded there, confirmed by the sweeper, well before the next sweep.
        started = time.monotonic()
        pushed = [f.sim.create_run(pending_ms=(0, 100), running_ms=(100, 600), callback_url=standby)
                  for _ in range(6)]
        f.created += pushed
        deadline = time.monotonic() + LIVENESS
        while not {r for r, _ in f.delivered()} >= set(pushed):
            assert time.monotonic() < deadline, "the callback runs' events"
            await asyncio.sleep(0.05)
        # well before the next sweep: about a second on an idle machine; two intervals leave room for a loaded one
        assert time.monotonic() - started < INTERVAL * 2
        confirmed_by = {inst.name: {e["run_id"] for e in log_events(inst, "callback.done")}
                        for inst in f.instances.values()}
        assert confirmed_by["b"] == set() and confirmed_by["a"] <= set(pushed)  # only the sweeper confirms

        # 2. The sweeper dies with callbacks recorded, not yet confirmed: the standby takes over and confirms them.
        await a.kill()
        more = [f.sim.create_run(pending_ms=0, running_ms=(100, 300), callback_url=standby) for _ in range(4)]
        f.created += more
        # how soon is the lease's timing, tested on its own (test_failover.py): here only that it happens
        await f.wait_sweeper(other_than="a", timeout=LIVENESS)
        await f.settle(timeout=60)
        verdict = f.verdict()
        assert verdict.problems == [], verdict.summary()
        assert verdict.delivered["hook"] == verdict.expected == len(f.created)
        for inst in f.instances.values():
            if inst.proc.alive():
                assert await inst.proc.terminate() == 0
