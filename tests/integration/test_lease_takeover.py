"""How soon a standby takes the sweeper lease after the sweeper dies (kill -9: no release), on the injected clock.

Two lease keepers (``SweeperRole.run``) share a store whose lease follows the PostgreSQL store's rule (free,
expired or ours; the token goes up when the holder changes: tests/postgres/test_store_pg.py holds the SQL to it).
Time moves only when both keepers wait on the clock, so "within lease + one tick" is asserted exactly, where the
real-process failover test (tests/postgres/test_failover.py) can only wait for the takeover to happen.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from tests.fakes import FakeClock, advance_until
from watcher.lease import SweeperRole

LEASE_S, INTERVAL_S = 3.0, 10.0
PERIOD = LEASE_S / 3  # a keeper's tick: three renewals per lease (tick_seconds; tests/unit/test_lease.py)


@dataclass
class Lease:
    holder: str
    token: int
    expires_ms: int


@dataclass(frozen=True)
class Fence:
    scope: str
    token: int
    lease_ms: int


class LeaseTable:
    """The leases table, on the test's clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.leases: dict[str, Lease] = {}


class FakeStore:
    """One instance's view of the shared table (what ``SweeperRole`` calls on a PgStore)."""

    def __init__(self, table: LeaseTable, me: str) -> None:
        self.table, self.me = table, me
        self.fence: Fence | None = None

    async def register_instance(self, *, role: str, version: str | None) -> None:
        return None

    async def heartbeat(self, *, role: str) -> None:
        return None

    async def acquire_lease(self, scope: str, lease_ms: int) -> Fence | None:
        now = self.table.clock.now_ms()
        lease = self.table.leases.get(scope)
        if lease is not None and lease.holder != self.me and lease.expires_ms >= now:
            self.fence = None
            return None
        token = 1 if lease is None else lease.token + (lease.holder != self.me)
        self.table.leases[scope] = Lease(self.me, token, now + lease_ms)
        self.fence = Fence(scope, token, lease_ms)
        return self.fence


async def test_a_standby_takes_the_lease_of_a_killed_sweeper_within_the_lease_and_one_tick() -> None:
    clock = FakeClock(0.0, manual=True)
    table = LeaseTable(clock)
    a, b = (SweeperRole(FakeStore(table, name), scope="s", lease_s=LEASE_S, interval_s=INTERVAL_S, clock=clock)
            for name in ("a", "b"))
    await a.start()
    clock.advance(0.3)  # b starts a little later: its ticks fall between a's
    await b.start()
    assert (a.is_sweeper, b.is_sweeper) == (True, False)
    keepers = {role: asyncio.create_task(role.run()) for role in (a, b)}
    try:
        # a renews while it lives: b never gets the lease
        await advance_until(clock, lambda: clock.t >= 10.0, "ten seconds of renewals", step=0.1, limit=11)
        assert (a.is_sweeper, b.is_sweeper) == (True, False)
        # kill -9 of a: its keeper stops, nothing released
        keepers[a].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keepers[a]
        expires = table.leases["s"].expires_ms - clock.epoch_ms  # a's last renewal + the lease, in clock ms
        await advance_until(clock, lambda: b.is_sweeper, "b takes over", step=0.05, limit=LEASE_S + PERIOD + 1)
        taken = clock.now_ms() - clock.epoch_ms
        assert expires < taken <= expires + PERIOD * 1000 + 50, (expires, taken)  # 50 ms: the test's time step
        assert table.leases["s"].holder == "b" and b.token == 2  # a higher fencing token than a's
    finally:
        for task in keepers.values():
            task.cancel()
        await asyncio.gather(*keepers.values(), return_exceptions=True)
