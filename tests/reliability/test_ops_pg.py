"""Chaos for operations on the PostgreSQL store (issue 24): two real instances on one database (one sweeps, both
deliver), every admin command next to them, SIGHUP with good and bad configs between them, kill -9 of the sweeper
or the standby at seeded random moments after a reload.

Checks: both instances alive and ready after every step — the standby too, saying which role it has (item 5);
admin commands succeed (or refuse in one line, where they must); nothing lost, every webhook duplicate a send cut
by a kill. The cluster is the session's (nothing here restarts it); the outages are test_pg_outages.py.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tests.postgres.multi import Fleet, fleet
from tests.reliability.harness import TEST_SINK_RUN_PREFIX
from tests.reliability.ops import (
    FAILS_START_CHECKS,
    REJECTED,
    RELOADED,
    UNPARSEABLE,
    admin_commands,
    admin_round,
    events_missing,
    file_sink,
    harm,
    pick,
)

pytestmark = pytest.mark.slow



async def reload_all(f: Fleet, changes: dict[str, Any] | None, answer: str, good: dict[str, Any]) -> None:
    for inst in f.instances.values():
        if changes is None:
            inst.proc.config.write_text(UNPARSEABLE)
        else:
            inst.rewrite_config(**{**good, **changes})
        await inst.proc.reload(answer)
        if answer == REJECTED:
            inst.rewrite_config(**good)


async def test_admin_commands_reloads_and_kills_next_to_two_instances_on_postgresql(tmp_path: Path,
                                                                                   pg_url: str) -> None:
    rng = random.Random(2402)
    async with fleet(tmp_path, pg_url, lease=2.0, interval=0.2, listen="127.0.0.1:0") as f:
        a, b = f.instances["a"], f.instances["b"]
        await a.start()
        await f.wait_sweeper(timeout=30)
        await b.start()
        await f.roles_ready()
        procs = [a.proc, b.proc]
        steps = [
            ("the same config", {}, RELOADED),
            ("a config that fails the start checks", {"extra_sinks": FAILS_START_CHECKS}, REJECTED),
            ("a sink added", {"extra_sinks": file_sink("journal2", tmp_path / "events2.jsonl")}, RELOADED),
            ("an unparseable file", None, REJECTED),
            ("the webhook's URL changed", {"hook_dir": "/hooks/v2"}, RELOADED),
            ("a sink removed", {"hook_dir": "/hooks/v2", "extra_sinks": ""}, RELOADED),
        ]
        good: dict[str, Any] = {}
        for number, (what, changes, answer) in enumerate(steps):
            f.create(rng.randint(2, 5), rng)
            await reload_all(f, changes, answer, good)
            if answer == RELOADED:
                good = {**good, **(changes or {})}
            for proc in procs:
                assert not harm(proc, f"a reload with {what}")
            # All commands after the first reload (together, as monitoring and an operator may), one (seeded) after
            # each of the others.
            commands = admin_commands() if number == 0 else pick(rng, 1)
            problems = await admin_round(a.proc.config, procs, commands, logs=a.proc.logs, concurrently=True)
            assert not problems, f"after a reload with {what}: {problems}"
            await f.roles_ready()
        await f.settle(timeout=60)
        delivered = [r.event["id"] for r in f.hook.accepted()
                     if r.event is not None and not str(r.event["data"]["run_id"]).startswith(TEST_SINK_RUN_PREFIX)]
        assert not (missing := await events_missing(a.proc.config, delivered, logs=a.proc.logs)), missing

        # kill -9 at seeded random moments after a reload and an admin command: the sweeper, then the standby, ...
        for round_no in range(2):
            f.create(rng.randint(3, 6), rng)
            await reload_all(f, {}, RELOADED, good)
            assert not await admin_round(a.proc.config, procs, pick(rng, 1, test_sink=None), logs=a.proc.logs)
            await asyncio.sleep(rng.uniform(0.0, 1.0))  # the random moment of the kill (seeded)
            sweeper, _, _ = f.sweeper()
            victim = f.instances[sweeper] if round_no % 2 == 0 and sweeper in f.instances else (
                b if sweeper == "a" else a)
            await victim.kill()
            f.create(rng.randint(0, 3), rng)
            await victim.start()
            await f.wait_sweeper(timeout=30)
            await f.roles_ready()
        f.create(4, rng)
        await f.settle(timeout=60)
        verdict = f.verdict()
        codes = [await inst.proc.terminate() for inst in f.instances.values()]

    assert codes == [0, 0]
    assert not verdict.problems, f"{verdict.problems} {verdict.summary()}"
    assert verdict.delivered["hook"] == verdict.expected == len(f.created)
    assert verdict.synthetic["hook"] >= 1
