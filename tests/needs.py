"""What a test needs from the machine beyond Python (a browser, node and npm packages, a PostgreSQL server):
without it the test is skipped on a developer's machine, and fails when ``CI`` is set (``.ci/run`` sets it), so
a tool CI failed to install never turns a check into a silent skip there.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def unavailable(message: str) -> NoReturn:
    """Skip with ``message``; under CI, fail with it instead."""
    if in_ci():
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(message)
