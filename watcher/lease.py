"""Several instances on one PostgreSQL store: which one sweeps. Shell (thin) around a pure scope and timing.

Every instance runs a ``SweeperRole``: a background task that, every ``min(lease / 3, interval)`` seconds,
refreshes the instance's heartbeat row and takes or renews the sweeper lease of its watch scope (the API origin
plus the filters). The instance whose lease is valid sweeps; the others only deliver. The store's commit checks
the lease's fencing token in the sweep's own transaction, so a sweeper that stalled past its lease and lost it
commits nothing (``LeaseLost``) — it goes back to standby and reloads the state when it sweeps again.
After a kill -9 of the sweeper its lease runs out and another instance takes it: within lease + one tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import structlog

from watcher.errors import StoreError

log = structlog.get_logger("watcher.lease")

SWEEPER, STANDBY = "sweeper", "standby"


class LeaseLost(StoreError):
    """The sweeper's lease moved to another instance (or expired and was taken): its sweep committed nothing."""


def scope_of(base_url: str, workspace_id: Any = None, project_id: Any = None, technique_id: Any = None,
             resources: Any = None) -> str:
    """Pure: the watch scope instances elect one sweeper for — API origin + path + filters + the listings watched
    (``[watch] resources``), in a stable form: instances that watch different resources sweep independently."""
    split = urlsplit(base_url)
    origin = f"{split.scheme}://{(split.hostname or '').lower()}{f':{split.port}' if split.port else ''}"

    def norm(value: Any) -> str:
        if value is None:
            return "*"
        items = [value] if isinstance(value, str) else list(value)
        return ",".join(sorted(items))

    scope = f"{origin}{split.path.rstrip('/')}|ws={norm(workspace_id)}|prj={norm(project_id)}|tech={norm(technique_id)}"
    return scope if resources is None else f"{scope}|res={norm(resources)}"


def tick_seconds(lease_s: float, interval_s: float) -> float:
    """Pure: how often an instance renews (or tries to take) the lease and beats its heart."""
    return max(0.05, min(lease_s / 3.0, interval_s))


class SweeperRole:
    """This instance's part in the election. ``is_sweeper`` is true while the lease is ours."""

    def __init__(self, store: Any, *, scope: str, lease_s: float, interval_s: float, version: str | None = None,
                 clock: Any = None) -> None:
        self.store = store
        self.scope = scope
        self.lease_ms = int(lease_s * 1000)
        self.period = tick_seconds(lease_s, interval_s)
        self.version = version
        self.clock = clock
        self.token: int | None = None  # the fencing token while we hold the lease
        self._swept_token: int | None = None  # the token of the state the sweeper last loaded/swept with
        self._task: asyncio.Task[None] | None = None
        self.takeovers = 0

    @property
    def is_sweeper(self) -> bool:
        return self.token is not None

    @property
    def role(self) -> str:
        return SWEEPER if self.is_sweeper else STANDBY

    async def start(self) -> None:
        await self.store.register_instance(role=STANDBY, version=self.version)
        await self.tick()
        self._task = asyncio.create_task(self._run(), name="sweeper-lease")

    async def tick(self) -> None:
        """Take or renew the lease, then beat the heart with the resulting role."""
        before = self.token
        fence = await self.store.acquire_lease(self.scope, self.lease_ms)
        self.token = None if fence is None else fence.token
        if self.token != before:
            if self.token is not None:
                log.info("sweeper.lease_acquired", scope=self.scope, token=self.token)
            else:
                log.warning("sweeper.lease_lost", scope=self.scope, token=before)
        await self.store.heartbeat(role=self.role)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.tick()
            except Exception as exc:  # the database is briefly away (or a bug): stop sweeping until renewed
                if self.token is not None:
                    log.warning("sweeper.lease_unknown", error=f"{type(exc).__name__}: {exc}",
                                note="not sweeping until the lease is renewed")
                self.token = None
                self.store.fence = None

    async def ready_to_sweep(self, sweeper: Any) -> bool:
        """True when this instance should sweep now. On a takeover, the sweeper first reloads the shared state
        (tracked runs, watermarks) and starts over with a resync, as at a start."""
        if self.token is None:
            return False
        if self._swept_token != self.token:
            await sweeper.load()
            sweeper.sweeps = 0
            sweeper.last_resync_ms = None
            self._swept_token = self.token
            self.takeovers += 1
        return True

    def lost(self) -> None:
        """The commit found the lease gone: standby until the lease is ours again (with a fresh state load)."""
        self.token = None
        self._swept_token = None

    async def stop(self) -> None:
        """Clean stop: no more renewals; give up the lease and our claims so another instance takes over now."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(StoreError):
            await self.store.unregister_instance()
        self.token = None
