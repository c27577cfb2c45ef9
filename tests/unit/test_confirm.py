"""confirm.py's pure part (which callbacks need no request) and the looks' hand-over to the sweep loop."""

from __future__ import annotations

import asyncio

import pytest

from watcher.confirm import Looks, Outcome, resource_of, scope_verdict
from watcher.store_api import RecordedCallback
from watcher.web.status import ingress

BOTH = ("technique-runs", "generations")


def cb(type: str = "run.completed", run_type: str | None = "technique", workspace: str | None = "ws_1"):
    return RecordedCallback("whd_1", "run_1", type, run_type, workspace, 0)


@pytest.mark.parametrize(("callback", "resources", "workspaces", "verdict"), [
    (cb(), BOTH, (), None),
    (cb("run.failed"), BOTH, ("ws_1",), None),
    (cb(workspace=None), BOTH, ("ws_1",), None),  # unknown: the listing decides
    (cb("run.started"), BOTH, (), Outcome.IGNORED),
    (cb("something.else"), BOTH, (), Outcome.IGNORED),
    (cb(workspace="ws_2"), BOTH, ("ws_1",), Outcome.OUT_OF_SCOPE),
    (cb(run_type="generation"), ("technique-runs",), (), Outcome.OUT_OF_SCOPE),
    (cb(run_type=None), ("technique-runs",), (), None),  # no run_type: a technique run, as FLORA's default
    (cb(run_type="generation"), ("generations",), (), None),
])
def test_scope_verdict(callback, resources, workspaces, verdict) -> None:
    assert scope_verdict(callback, resources=resources, workspaces=workspaces) == verdict


def test_resource_of_a_run_type() -> None:
    assert resource_of("generation") == "generations"
    assert resource_of("technique") == resource_of(None) == resource_of("action") == "technique-runs"


async def test_looks_are_answered_by_the_next_look_that_starts_after_them() -> None:
    woken: list[int] = []
    looks = Looks(on_request=lambda: woken.append(1))
    assert not looks
    first = asyncio.create_task(looks.request({"technique-runs": ["run_a"]}))
    second = asyncio.create_task(looks.request({"technique-runs": ["run_b"], "generations": ["run_c"]}))
    await asyncio.sleep(0)
    assert looks and woken == [1, 1] and looks.event.is_set()
    wanted, waiters = looks.take()
    assert wanted == {"technique-runs": {"run_a", "run_b"}, "generations": {"run_c"}}
    assert not looks and not looks.event.is_set()
    late = asyncio.create_task(looks.request({"technique-runs": ["run_d"]}))
    await asyncio.sleep(0)
    Looks.settle(waiters)
    await asyncio.gather(first, second)
    assert not late.done()  # asked after the look started: the next one answers it
    _, waiters = looks.take()
    Looks.settle(waiters, RuntimeError("the API is away"))
    with pytest.raises(RuntimeError):
        await late


def test_the_page_shows_only_numbers_and_the_configured_address() -> None:
    assert ingress(None) is None
    shown = ingress({"listen": "127.0.0.1:8788", "path": "/flora/callbacks", "accepted": 3, "duplicate": True,
                     "rejected": {"stale": 2, "odd": "x"}, "confirmed": {"confirmed": 3}, "last_accepted_ms": 5,
                     "secret": "whsec_no"})
    assert shown == {"listen": "127.0.0.1:8788", "path": "/flora/callbacks", "accepted": 3, "duplicate": 0,
                     "unrecorded": 0, "rejected": {"stale": 2}, "confirmed": {"confirmed": 3}, "confirming": 0,
                     "last_accepted_ms": 5, "last_rejected_ms": None}


async def test_group_commit_writes_what_comes_together_in_one_batch() -> None:
    from watcher.confirm import GroupCommit

    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def write(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            await gate.wait()  # the first write is slow: the next ones pile up behind it
        if 13 in items:
            raise RuntimeError("the store is away")
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(write)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(group.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 10 and [await t for t in rest] == [20, 30, 40]
    assert batches == [[1], [2, 3, 4]]
    failing = [asyncio.create_task(group.submit(i)) for i in (12, 13)]
    for task in failing:
        with pytest.raises(RuntimeError):
            await task
    assert await group.submit(5) == 50  # the next batch is written again


def test_the_page_shows_the_address_the_listener_got() -> None:
    """listen = "127.0.0.1:0" (any free port): the page names the port it got, not ':0'."""
    assert ingress({"listen": "127.0.0.1:0", "host": "127.0.0.1", "port": 40123})["listen"] == "127.0.0.1:40123"
    assert ingress({"listen": "[::1]:0", "host": "::1", "port": 40123})["listen"] == "[::1]:40123"
    assert ingress({"listen": "127.0.0.1:8788", "host": None, "port": None})["listen"] == "127.0.0.1:8788"
