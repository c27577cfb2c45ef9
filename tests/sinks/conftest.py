"""Fixtures for sink tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.sinks.helpers import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
