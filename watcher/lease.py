"""Several instances on one PostgreSQL store: which one sweeps. Shell (thin) around a pure scope and timing.

Every instance runs a lease keeper (``SweeperRole.run``, the daemon's supervised task ``lease``): every
``min(lease / 3, interval)`` seconds of the injected clock it refreshes the instance's heartbeat row and takes
or renews the sweeper lease of its watch scope (the API origin plus the filters). The instance whose lease is
valid sweeps; the others only deliver. The store's commit checks the lease's fencing token in the sweep's own
transaction, so a sweeper that stalled past its lease and lost it commits nothing (``LeaseLost``) — it goes back
to standby and reloads the state when it sweeps again. After a kill -9 of the sweeper its lease runs out and
another instance takes it: within lease + one tick.

A database that is away is an outage, not an error: the keeper stops sweeping (the lease may be taken
meanwhile), tells ``StoreHealth`` (quiet logs, ``/readyz``), and tries again at its next tick. ``last_ok_ms``
is the last successful tick: a standby is ready while it is recent (``watcher.readiness``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.errors import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from watcher.outage import StoreHealth

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
                 clock: Clock = SYSTEM_CLOCK, health: StoreHealth | None = None) -> None:
        self.store = store
        self.scope = scope
        self.lease_s = lease_s
        self.lease_ms = int(lease_s * 1000)
        self.period = tick_seconds(lease_s, interval_s)
        self.version = version
        self.clock = clock
        self.health = health
        self.token: int | None = None  # the fencing token while we hold the lease
        self.last_ok_ms: int | None = None  # the last tick that reached the store (clock.now_ms())
        self._registered = False
        self._swept_token: int | None = None  # the token of the state the sweeper last loaded/swept with
        self.takeovers = 0

    @property
    def is_sweeper(self) -> bool:
        return self.token is not None

    @property
    def sweeping(self) -> bool:
        """The lease is ours and the sweeper has loaded the state under it (``ready_to_sweep`` ran since)."""
        return self.token is not None and self._swept_token == self.token

    @property
    def role(self) -> str:
        return SWEEPER if self.is_sweeper else STANDBY

    async def start(self) -> None:
        """Register this instance and take a first turn now, so the first sweep knows whether it is ours. A store
        away now is no error: ``run()`` tries again at every tick."""
        await self.turn()

    async def run(self) -> None:
        """The lease keeper: one turn every ``period`` seconds of the clock, until cancelled."""
        while True:
            await self.clock.sleep(self.period)
            await self.turn()

    async def turn(self) -> None:
        """One tick that rides out a store outage. Any other error also ends the sweeping (nothing says the lease
        is still ours) and is raised, for the supervisor."""
        try:
            if not self._registered:
                await self.store.register_instance(role=STANDBY, version=self.version)
                self._registered = True
            await self.tick()
        except StoreUnavailable as exc:
            self._unknown(exc)
            if self.health is not None:
                self.health.failed("lease", exc)
            return
        except Exception as exc:
            self._unknown(exc)
            raise
        self.last_ok_ms = self.clock.now_ms()
        if self.health is not None:
            self.health.succeeded("lease")

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

    def _unknown(self, exc: BaseException) -> None:
        """The tick failed: whether the lease is still ours is unknown, so stop sweeping until it is renewed."""
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
        """Clean stop (the keeper task is stopped already): give up the lease and our claims so another instance
        takes over now."""
        with contextlib.suppress(StoreError):
            await self.store.unregister_instance()
        self.token = None
