"""pytest fixtures for a real PostgreSQL: one throwaway cluster per session, a fresh database per test; a cluster of
its own for a test that restarts or stops it (``pg_own_cluster``).

Without PostgreSQL's server binaries or psycopg the PostgreSQL tests are skipped with the reason, unless
``FLORA_REQUIRE_POSTGRES=1`` (CI sets it), which makes a missing server an error instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.postgres.cluster import Cluster, find_bin, start_cluster


def _missing() -> str | None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    if find_bin() is None:
        return "PostgreSQL's server (initdb, pg_ctl) is not installed (apt-get install postgresql)"
    return None


def _require() -> None:
    reason = _missing()
    if reason:
        if os.environ.get("FLORA_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL tests required: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    _require()
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A fresh, empty database on the session's cluster."""
    return pg_cluster.create_database()


@pytest.fixture
def pg_own_cluster() -> Iterator[Cluster]:
    """A cluster of the test's own, for tests that restart, stop or reconfigure it (the session's is shared);
    crash-safe commits, so ``restart("immediate")`` loses nothing a client was told is committed."""
    _require()
    cluster = start_cluster(crash_safe=True)
    try:
        yield cluster
    finally:
        cluster.stop()
