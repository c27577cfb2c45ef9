"""Shared fixtures. Factories close what they create."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from watcher.simulator import run_simulator

pytest_plugins = ["tests.postgres.fixtures"]  # pg_cluster, pg_url: a throwaway PostgreSQL

# Property tests are judged by what they find, never by how fast a (busy, shared) machine ran an example: no
# per-example deadline and no "too slow" health check. The example counts stay each test's own.
settings.register_profile("flora", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("flora")


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_store(request: pytest.FixtureRequest, tmp_path):
    """An empty state store as the engine awaits it, on each back end: SQLite (``AsyncStore`` on a file in
    tmp_path) and PostgreSQL (``PgStore`` on a fresh database of the session's throwaway cluster)."""
    if request.param == "sqlite":
        from watcher.store import AsyncStore, Store

        store = AsyncStore(Store.open(tmp_path / "state.sqlite3"))
    else:
        from watcher.store_pg import PgStore

        store = await PgStore.open(request.getfixturevalue("pg_url"))
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def sim_clock():
    """The simulator's clock: None is real time. A module that drives time itself overrides this fixture (a
    ``tests.fakes.FakeClock``)."""
    return None


@pytest.fixture
async def sim(request: pytest.FixtureRequest, sim_clock):
    """The FLORA simulator on loopback, with the test module's ``KEY`` and ``SIM_SEED`` (default 1)."""
    key = getattr(request.module, "KEY", "sk_test_sim")
    seed = getattr(request.module, "SIM_SEED", 1)
    async with run_simulator(api_key=key, seed=seed, clock=sim_clock) as running:
        yield running
