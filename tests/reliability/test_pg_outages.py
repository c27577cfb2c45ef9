"""Chaos for the database (issue 24): PostgreSQL restarted (`pg_ctl restart -m fast`, `-m immediate`), stopped for
40 s, and the role's password changed under two running instances (one sweeps, both deliver).

Each asserts: every instance stays alive through it (item 3: they used to exit 1 within 14-25 s, and a start
with the database down gave up after ~11 s); `/readyz` tells the truth — 503 with the reason while the database is
away, 200 once it is back, the standby too (item 5); delivery resumes by itself within seconds of the database's
return (item 2: a fast restart killed the delivery worker while sweeps and /readyz stayed green, so nothing was
sent again); admin commands fail in one line with the database's reason while it is away (item 4); nothing is
lost, and every webhook duplicate is a send in flight when the database went away or an instance was killed.

Every test has a cluster of its own (``pg_own_cluster``): they restart or reconfigure it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from tests.postgres.cluster import Cluster
from tests.postgres.multi import Fleet, fleet
from tests.reliability.harness import CliResult
from watcher.store import Store

pytestmark = pytest.mark.slow

# "Delivery resumed within seconds of the database's return": a part that finds the store away retries after at
# most 5 s (watcher.outage.STORE_RETRY_MAX_S), so it catches up in ~1-4 s on an idle machine (the figure is
# printed). The bound is a liveness bound: at load 20-40 on 2 cores the catch-up alone can take 20 s; delivery
# that never resumes (item 2), or waits out a backoff of minutes, still fails it.
RESUME_WITHIN_S = 60.0
# The stop is longer than every window the issue measured: instances exited 14-25 s into an outage, a start with
# the database down gave up after ~11 s, and the pool's connect timeout is 10 s.
OUTAGE_S = 40.0


class Deaths:
    """Watches the instances in the background: any exit while it watches is a failure (they must ride it out)."""

    def __init__(self, f: Fleet) -> None:
        self.f = f
        self.exits: dict[str, str] = {}  # instance → how it ended, with its last log lines
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            for inst in self.f.instances.values():
                proc = inst.proc.proc
                if proc is not None and proc.returncode is not None and inst.name not in self.exits:
                    tail = inst.proc.stderr_path.read_text(errors="replace").splitlines()[-3:]
                    self.exits[inst.name] = f"exited {proc.returncode}: {tail}"
            await asyncio.sleep(0.1)

    def __enter__(self) -> Deaths:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def check(self) -> None:
        assert not self.exits, f"instances ended during the outage (they must ride it out): {self.exits}"


@asynccontextmanager
async def running_fleet(tmp_path: Path, url: str, *, seed: int,
                        names: tuple[str, ...] = ("a", "b")) -> AsyncIterator[Fleet]:
    """Instances ``a`` and ``b`` (lease 2 s, interval 0.2 s, /readyz on a free port) started and ready, the first
    runs delivered; further names are configured but left for the test to start."""
    async with fleet(tmp_path, url, names=names, lease=2.0, interval=0.2, seed=seed, listen="127.0.0.1:0") as f:
        await f.instances["a"].start()
        await f.wait_sweeper(timeout=30)
        await f.instances["b"].start()
        await f.roles_ready()
        f.create(4, random.Random(seed))
        await f.settle(timeout=60)
        yield f


def names_the_store(reason: str) -> bool:
    return any(word in reason.lower() for word in ("database", "store", "postgres"))


async def resumed(f: Fleet, back: float) -> float:
    """Seconds from the database's return (``back``) until every created run ended and its transition reached
    the receiver — those that ended while it was away and those after; fails past RESUME_WITHIN_S."""
    deadline = back + RESUME_WITHIN_S
    while {t["run_id"] for t in f.sim.transitions()} < set(f.created) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await f.delivered_within(f.ended(), max(0.0, deadline - time.monotonic()))
    return time.monotonic() - back


async def finish(f: Fleet, rng: random.Random) -> None:
    """More runs after the database is back; everything delivered once, duplicates only from a cut send; each
    instance stops cleanly."""
    f.create(6, rng)
    await f.settle(timeout=60)
    verdict = f.verdict()
    assert not verdict.problems, f"{verdict.problems} {verdict.summary()}"
    assert verdict.delivered["hook"] == verdict.expected == len(f.created)
    codes = {name: await inst.proc.terminate() for name, inst in f.instances.items() if inst.proc.alive()}
    assert set(codes.values()) == {0}, codes


def database_reason(result: CliResult, needle: str) -> str | None:
    """None when an admin command failed as it must with the database away (item 4): a non-zero exit, one line on
    stderr with the database's own reason (``needle``), no traceback; otherwise what is wrong."""
    if (why := result.one_line_failure) is not None:
        return why
    if needle not in result.err:
        return f"`{' '.join(result.args)}` does not give the database's reason ({needle!r}): {result.err.strip()!r}"
    return None


STORE_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("status",), ("status", "--json"), ("events",), ("deliveries",), ("deliveries", "--failed"),
    ("replay", "--failed"), ("replay", "evt_000000000000000000000000"),
)


async def commands_fail_in_one_line(f: Fleet, needle: str, commands: tuple[tuple[str, ...], ...] = STORE_COMMANDS
                                    ) -> None:
    """Admin commands that need the store (default: every one), run together while it is away: each fails in one
    line — also `check-config` (exit 2) and `migrate-state` of a real SQLite state into the database."""
    source = f.workdir / "to-migrate.sqlite3"
    if not source.exists():
        Store.open(source).close()  # an empty but real state: migrate-state gets as far as the database
    extra = (("check-config",), ("migrate-state", "--from", str(source)))  # to [store] url: no password in argv
    results = await asyncio.gather(*(f.admin(*args) for args in commands + extra))
    problems = [why for r in results if (why := database_reason(r, needle)) is not None]
    assert not problems, problems


async def test_postgresql_restarts_fast_and_immediate_are_ridden_out_and_delivery_resumes_within_seconds(
        tmp_path: Path, pg_own_cluster: Cluster) -> None:
    rng = random.Random(2403)
    url = pg_own_cluster.create_database("restart")
    async with running_fleet(tmp_path, url, seed=2403) as f:
        with Deaths(f) as deaths:
            for mode in ("fast", "immediate"):  # fast: "terminating connection due to administrator command"
                f.create(8, rng)  # ending around the restart
                down = time.monotonic()
                await asyncio.to_thread(pg_own_cluster.restart, mode)
                back = time.monotonic()
                f.outages.append((down, back))
                f.create(8, rng)  # runs that start and end after the database is back
                waited = await resumed(f, back)
                await f.roles_ready()
                deaths.check()
                print(f"pg_ctl restart -m {mode}: delivery caught up {waited:.1f}s after the database was back")
        await finish(f, rng)


async def test_a_40s_database_outage_is_ridden_out_ready_says_why_and_admin_commands_fail_in_one_line(
        tmp_path: Path, pg_own_cluster: Cluster) -> None:
    rng = random.Random(2404)
    url = pg_own_cluster.create_database("outage")
    async with running_fleet(tmp_path, url, seed=2404, names=("a", "b", "c")) as f:
        a, b, c = f.instances["a"], f.instances["b"], f.instances["c"]
        with Deaths(f) as deaths:
            f.create(10, rng)  # ending during the outage: detected and delivered after it
            down = time.monotonic()
            await asyncio.to_thread(pg_own_cluster.halt, "fast")
            await commands_fail_in_one_line(f, "No such file or directory")
            for inst in (a, b):
                await f.not_ready(inst, names_the_store)
            c.starts.append(time.monotonic())
            await c.proc.start()  # a start while the database is down waits for it
            while time.monotonic() - down < OUTAGE_S:  # nobody exits, nobody claims to be ready
                deaths.check()
                for inst in (a, b):
                    status, body = await inst.readyz()
                    assert status == 503, f"{inst.name}: /readyz {status} {body.strip()!r} with the database down"
                await asyncio.sleep(0.5)
            await asyncio.to_thread(pg_own_cluster.start)
            back = time.monotonic()
            f.outages.append((down, back))
            waited = await resumed(f, back)
            await c.proc.wait_for_log('"daemon.started"', timeout=RESUME_WITHIN_S)
            await f.roles_ready()
            deaths.check()
        print(f"{OUTAGE_S:g}s stop: delivery caught up {waited:.1f}s after the database was back")
        await finish(f, rng)


async def test_a_wrong_password_is_an_outage_ready_names_it_and_delivery_resumes_once_it_is_right(
        tmp_path: Path, pg_own_cluster: Cluster) -> None:
    rng = random.Random(2405)
    password = "pw-CANARY-2405"
    pg_own_cluster.add_role("app", password)
    url = pg_own_cluster.create_database("password", owner="app", password=password)
    async with running_fleet(tmp_path, url, seed=2405) as f:
        with Deaths(f) as deaths:
            f.create(8, rng)  # ending while the password is wrong
            down = time.monotonic()
            await asyncio.to_thread(pg_own_cluster.set_password, "app", "rotated-elsewhere")
            await asyncio.to_thread(pg_own_cluster.terminate, "app")  # as a DBA does after a rotation
            # the commands the issue names (each kind of opener once; the 40 s stop runs them all)
            await commands_fail_in_one_line(f, "password authentication failed",
                                            (("status",), ("events",), ("deliveries",), ("replay", "--failed")))
            for inst in f.instances.values():
                reason = await f.not_ready(inst, lambda body: "password authentication failed" in body)
                assert password not in reason
            await asyncio.to_thread(pg_own_cluster.set_password, "app", password)
            back = time.monotonic()
            f.outages.append((down, back))
            waited = await resumed(f, back)
            await f.roles_ready()
            deaths.check()
        print(f"wrong password: delivery caught up {waited:.1f}s after it was right again")
        await finish(f, rng)
        for inst in f.instances.values():
            for path in inst.proc.logs.iterdir():
                with suppress(OSError):
                    assert password not in path.read_text(errors="replace"), f"the password is in {path}"
