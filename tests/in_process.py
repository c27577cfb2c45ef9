"""The real daemon in the test's own event loop, on an injected clock: started, swept, asked, stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp

from tests.fakes import FakeClock, Recorder
from watcher.config import Config
from watcher.daemon import Daemon, Options


@contextlib.asynccontextmanager
async def running(cfg: Config, clock: FakeClock, *, sweeps: int = 1,
                  env: dict[str, str] | None = None) -> AsyncIterator[tuple[Daemon, Recorder]]:
    """The daemon running ``cfg`` once it has finished ``sweeps`` sweeps; stopped (exit 0) on leaving."""
    recorder = Recorder()
    daemon = Daemon(cfg, Options(install_signal_handlers=False), clock=clock, observers=[recorder], env=env or {})
    task = asyncio.create_task(daemon.run())
    try:
        if sweeps:
            await recorder.sweeps(sweeps)
        yield daemon, recorder
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 20) == 0


async def readyz(daemon: Daemon) -> tuple[int, str]:
    """The daemon's own ``/readyz`` answer: status and body."""
    assert daemon.server is not None
    async with aiohttp.ClientSession() as http, http.get(daemon.server.url + "/readyz") as resp:
        return resp.status, await resp.text()
