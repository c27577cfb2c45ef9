"""Shared fixtures. Factories close what they create."""

from __future__ import annotations

pytest_plugins = ["tests.postgres.fixtures"]  # pg_cluster, pg_url: a throwaway PostgreSQL
