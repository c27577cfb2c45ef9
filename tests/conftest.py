"""Shared fixtures. Factories close what they create."""

from __future__ import annotations

import pytest

from watcher.simulator import run_simulator

pytest_plugins = ["tests.postgres.fixtures"]  # pg_cluster, pg_url: a throwaway PostgreSQL


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
