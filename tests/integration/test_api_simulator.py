"""FloraClient against the built-in simulator over real loopback HTTP."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.fakes import FakeClock
from watcher.api import FloraClient
from watcher.errors import ApiError, AuthError
from watcher.secret import Secret

KEY = "sk_test_simulator_key"
START_MS = 1_764_400_000_000


@pytest.fixture
def sim_clock() -> FakeClock:
    """Runs progress only when the test moves time."""
    return FakeClock(0.0, epoch_ms=START_MS)


@pytest.fixture
async def client(sim) -> AsyncIterator[FloraClient]:
    async with FloraClient(sim.base_url, Secret(KEY), max_rps=0, rand=random.Random(3)) as c:
        yield c


async def test_listing_250_plus_runs_across_pages_with_filters(sim, client: FloraClient) -> None:
    alpha = set(sim.sim.create_runs(140, technique="cctv-cam", project_id="prj_alpha"))
    alpha |= set(sim.sim.create_runs(125, technique="voiceover", project_id="prj_alpha"))
    sim.sim.create_runs(60, technique="cctv-cam", project_id="prj_beta")

    pages = [p async for p in client.pages(project_id="prj_alpha")]
    ids = [r.run_id for p in pages for r in p.runs]
    assert len(pages) == 3 and len(ids) == 265 and set(ids) == alpha
    assert pages[0].total_estimate == 265
    assert all(r.project_id == "prj_alpha" and r.created_at is not None for p in pages for r in p.runs)

    by_technique = [r async for r in client.list_runs(project_id="prj_alpha", technique_id="voiceover")]
    assert len(by_technique) == 125 and {r.technique_name for r in by_technique} == {"Voiceover"}
    everything = [r.run_id async for r in client.list_runs()]
    assert len(everything) == len(set(everything)) == 325
    assert client.stats.outcomes["ok"] == len(pages) + 2 + 4


async def test_a_run_followed_to_the_end_through_its_poll_url(sim, sim_clock: FakeClock, client: FloraClient) -> None:
    run_id = sim.sim.create_run(technique="product-shot", pending_ms=1_000, running_ms=4_000, outcome="completed")
    (listed,) = [r async for r in client.list_runs()]
    assert listed.run_id == run_id and listed.status == "pending"
    assert listed.poll_url == f"{sim.base_url}/techniques/product-shot/runs/{run_id}"

    seen = []
    run = listed
    while not run.terminal:
        run = await client.get_run(run_id, poll_url=listed.poll_url, technique_id=listed.technique_id)
        if not seen or seen[-1] != run.status:
            seen.append(run.status)
        sim_clock.advance(0.7)
    assert seen == ["pending", "running", "completed"]
    assert run.completed_at is not None and run.completed_at >= run.created_at
    assert len(run.outputs) == 2 and all(o.url for o in run.outputs)
    routes = sim.sim.stats()["by_route"]
    assert routes["GET /api/v1/techniques/{technique}/runs/{run_id}"]["200"] >= 3
    assert "GET /api/v1/runs/{run_id}" not in routes


async def test_camel_case_and_second_timestamps_parse_like_the_documented_shape(sim, client: FloraClient) -> None:
    sim.sim.create_runs(30, technique="cctv-cam", outcome="failed")
    plain = [r async for r in client.list_runs()]
    sim.sim.set_faults(camel_case=True, seconds_timestamps=True)
    drifted = [r async for r in client.list_runs()]

    def floor_to_s(ms: int | None) -> int | None:
        return ms // 1000 * 1000 if ms is not None else None

    assert [r.run_id for r in drifted] == [r.run_id for r in plain]
    assert [floor_to_s(r.created_at) for r in drifted] == [floor_to_s(r.created_at) for r in plain]
    assert [(r.status, r.error_code, r.technique_id) for r in drifted] == [
        (r.status, r.error_code, r.technique_id) for r in plain
    ]


async def test_listing_survives_429s_and_5xx_bursts(sim, client: FloraClient) -> None:
    created = set(sim.sim.create_runs(250, technique="caption-writer"))
    sim.sim.set_faults(rate_limit_share=0.25, retry_after=0.01, error_burst=(3, 1))
    # 5xx and 429s: the client retries each request at most twice, so a listing may still fail; the
    # daemon's next sweep tries again. Try a few times like it would.
    for _ in range(5):
        try:
            listed = {r.run_id async for r in client.list_runs()}
            break
        except ApiError:  # a failed sweep; the next one retries
            await asyncio.sleep(0)
    else:
        pytest.fail("five sweeps in a row failed")
    assert listed == created
    assert client.stats.retries > 0
    assert client.stats.outcomes["rate_limited"] > 0 and client.stats.outcomes["server_error"] > 0


async def test_a_wrong_key_is_an_auth_error(sim) -> None:
    async with FloraClient(sim.base_url, Secret("sk_live_wrong"), max_rps=0) as bad:
        with pytest.raises(AuthError) as info:
            [r async for r in bad.list_runs()]
    assert info.value.code == "invalid_api_key" and info.value.request_id.startswith("req_")


async def test_a_foreign_poll_url_never_receives_the_key_and_the_run_is_still_fetched(sim, client: FloraClient) -> None:
    canary_requests: list[dict[str, str]] = []

    async def canary(request: web.Request) -> web.Response:
        canary_requests.append(dict(request.headers))
        return web.json_response({"run_id": "run_evil", "status": "completed"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", canary)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    canary_origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        foreign = f"{canary_origin}/api/v1/techniques/cctv-cam/runs/steal"
        run_id = sim.sim.create_run(technique="cctv-cam", poll_url=foreign, outcome="completed")
        other_host = sim.sim.create_run(technique="cctv-cam", poll_url=sim.base_url.replace("127.0.0.1", "localhost"))
        listed = {r.run_id: r async for r in client.list_runs()}
        assert listed[run_id].poll_url == foreign

        fetched = await client.get_run(run_id, poll_url=foreign, technique_id=listed[run_id].technique_id)
        assert fetched.run_id == run_id
        await client.get_run(other_host, poll_url=listed[other_host].poll_url)
        assert canary_requests == []  # not even without the key: the URL is never requested

        async with FloraClient(canary_origin, Secret(KEY), max_rps=0) as direct:  # the canary does work
            await direct.get_run("run_x")
        assert len(canary_requests) == 1 and "Authorization" in canary_requests[0]  # its own origin only
    finally:
        await runner.cleanup()
    routes = sim.sim.stats()["by_route"]
    assert routes["GET /api/v1/techniques/{technique}/runs/{run_id}"]["200"] == 1
    assert routes["GET /api/v1/runs/{run_id}"]["200"] == 1


async def test_start_run_creates_a_run_the_listing_then_shows(sim, client: FloraClient) -> None:
    created = await client.start_run(
        "cctv-cam", [{"id": "prompt", "type": "text", "value": "a lighthouse"}], idempotency_key="k-1"
    )
    assert created.status == "pending" and created.run_id.startswith("run_")
    again = await client.start_run(
        "cctv-cam", [{"id": "prompt", "type": "text", "value": "a lighthouse"}], idempotency_key="k-1"
    )
    assert again.run_id == created.run_id  # the body-field idempotency key replays the original
    assert [r.run_id async for r in client.list_runs()] == [created.run_id]
