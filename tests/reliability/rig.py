"""A running rig for the fault tests: the simulator (recording every API request), a webhook receiver, a foreign
origin, and the real watcher subprocess configured with canary secrets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability.harness import (
    Canaries,
    CliResult,
    ForeignOrigin,
    Receiver,
    SimServer,
    Verdict,
    WatcherProcess,
    check,
    find_leaks,
    run_cli,
    write_config,
)
from watcher.simulator.app import Simulator


@dataclass
class Rig:
    workdir: Path
    canaries: Canaries
    sim: Simulator
    api: SimServer
    hook: Receiver
    foreign: ForeignOrigin
    proc: WatcherProcess
    config: Path
    created: list[str]
    config_args: dict[str, Any] = field(default_factory=dict)  # what write_config was given

    def rewrite_config(self, **changes: Any) -> Path:
        """Write the config again with ``changes`` to write_config's arguments (then SIGHUP to reload it)."""
        return write_config(self.workdir, **{**self.config_args, **changes})

    @property
    def events_file(self) -> Path:
        return self.workdir / "events.jsonl"

    def create(self, count: int, **kwargs: Any) -> list[str]:
        kwargs.setdefault("pending_ms", (10, 100))
        kwargs.setdefault("running_ms", (100, 600))
        ids = self.sim.create_runs(count, **kwargs)
        self.created += ids
        return ids

    def verdict(self) -> Verdict:
        return check(truth=self.sim.transitions(), created=self.created, events_file=self.events_file,
                     webhook=self.hook, foreign=self.foreign)

    async def settle(self, timeout: float = 60.0, sinks: tuple[str, ...] = ("journal", "hook")) -> Verdict:
        """Wait until every created run ended and every transition reached ``sinks``; the verdict then."""
        deadline = time.monotonic() + timeout
        while True:
            truth = self.sim.transitions()
            verdict = check(truth=truth, created=self.created, events_file=self.events_file, webhook=self.hook)
            done = {t["run_id"] for t in truth} >= set(self.created)
            if done and not any(verdict.lost[s] for s in sinks):
                await asyncio.sleep(0.3)  # let the last outcomes be recorded
                return self.verdict()
            if time.monotonic() > deadline or not self.proc.alive():
                return self.verdict()
            await asyncio.sleep(0.1)

    async def cli(self, *args: str) -> str:
        """Run ``flora-watcher ARGS -c CONFIG``; its output (also kept under logs/ for the leak scan)."""
        result = await self.admin(*args)
        return result.out + result.err

    async def admin(self, *args: str) -> CliResult:
        """Run ``flora-watcher ARGS -c CONFIG`` next to the daemon; exit status and output (kept under logs/)."""
        return await run_cli(self.config, *args, logs=self.proc.logs)

    def leaks(self) -> list[tuple[str, str]]:
        """Canary secrets found in the watcher's stdout/stderr, CLI outputs, events, state store (and WAL)."""
        return find_leaks([self.proc.logs, self.events_file, self.workdir / "state"], self.canaries.needles())


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


@asynccontextmanager
async def rig(
    workdir: Path,
    *,
    seed: int = 1,
    receiver: dict[str, Any] | None = None,
    log_level: str = "info",
    prepare: Callable[[Rig], None] | None = None,
    sim_clock: Callable[[], int] | None = None,
    **config: Any,
) -> AsyncIterator[Rig]:
    """The rig, with the watcher started after ``prepare(rig)`` and its first sweep done. ``sim_clock`` (Unix ms)
    lets a test move the simulated runs' time on when it chooses."""
    canaries = Canaries.fresh()
    sim = Simulator(api_key=canaries.api_key, seed=seed, clock=sim_clock)
    async with ForeignOrigin() as foreign, SimServer(sim, foreign_url=foreign.origin) as api, \
            Receiver(signing_secret=canaries.signing_secret, **(receiver or {})) as hook:
        args = dict(base_url=api.base_url, api_key=canaries.api_key, events_file=workdir / "events.jsonl",
                    webhook_url=f"{hook.origin}/hooks/{canaries.url_token}", signing_secret=canaries.signing_secret,
                    **config)
        cfg = write_config(workdir, **args)
        proc = WatcherProcess(cfg, workdir / "logs", log_level=log_level)
        the_rig = Rig(workdir, canaries, sim, api, hook, foreign, proc, cfg, [], args)
        if prepare is not None:
            prepare(the_rig)
        await proc.start()
        try:
            await proc.wait_for_log('"sweep.finished"')
            yield the_rig
        finally:
            await proc.kill()
