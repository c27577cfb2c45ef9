"""The simulator over real loopback HTTP, as a client of the FLORA API would see it."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes import FakeClock
from watcher.simulator import RunningSimulator, run_simulator
from watcher.simulator import scenario as sc

KEY = "sk_test_sim"
AUTH = {"Authorization": f"Bearer {KEY}"}
CREATE_BODY = {"inputs": [{"id": "prompt", "type": "text", "value": "a fox"}], "mode": "async"}
LIST_ITEM_KEYS = {"run_id", "technique_run_id", "status", "progress", "created_at", "project_id",
                  "workspace_id", "technique", "outputs", "poll_url"}


@pytest.fixture
async def running() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(api_key=KEY, seed=3, pending_ms=50, running_ms=150) as r:
        yield r


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str, **kw) -> tuple[int, dict]:
    async with http.get(url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


def set_faults(running: RunningSimulator, **knobs) -> None:
    running.sim.set_faults(**knobs)


# ------------------------------------------------------------------------------------------------ auth


@pytest.mark.parametrize(("headers", "code"), [
    ({}, "unauthorized"),
    ({"Authorization": "Bearer sk_live_wrong"}, "invalid_api_key"),
    ({"Authorization": f"Basic {KEY}"}, "invalid_api_key"),
])
async def test_auth_errors_use_floras_envelope_and_carry_a_request_id(running, headers, code) -> None:
    async with aiohttp.ClientSession() as anon, anon.get(f"{running.base_url}/technique-runs",
                                                         headers=headers) as resp:
        body = await resp.json()
        assert resp.status == 401
        assert resp.headers["request-id"].startswith("req_")
    assert body["error"]["code"] == code and body["error"]["message"]


async def test_every_response_has_a_distinct_request_id(running, http) -> None:
    ids = set()
    for path in ("/technique-runs", "/runs/run_missing", "/nowhere"):
        async with http.get(running.base_url + path) as resp:
            ids.add(resp.headers["request-id"])
    assert len(ids) == 3 and all(i.startswith("req_") for i in ids)


# ------------------------------------------------------------------------------------------------ listing


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=ten", "status=done", "cursor=%%%"])
async def test_invalid_list_queries_are_400_with_fields(running, http, query) -> None:
    status, body = await get_json(http, f"{running.base_url}/technique-runs?{query}")
    assert status == 400
    assert body["error"]["code"] == "input_validation_error" and body["error"]["fields"]


async def test_listing_defaults_to_20_newest_first(running, http) -> None:
    now = running.sim.now_ms()
    running.sim.create_runs(30, created_at=(now - 60_000, now))
    status, body = await get_json(http, f"{running.base_url}/technique-runs")
    items = body["technique_runs"]
    assert status == 200 and len(items) == 20
    assert [i["created_at"] for i in items] == sorted((i["created_at"] for i in items), reverse=True)
    assert all(LIST_ITEM_KEYS <= item.keys() for item in items)
    assert body["meta"]["total_estimate"] == 30 and body["meta"]["next_cursor"]


async def collect(http: aiohttp.ClientSession, url: str, **params) -> list[dict]:
    items, cursor = [], None
    while True:
        query = {"limit": "100", **params, **({"cursor": cursor} if cursor else {})}
        status, body = await get_json(http, url, params=query)
        assert status == 200
        items.extend(body["technique_runs"])
        cursor = body["meta"]["next_cursor"]
        if not cursor:
            return items


async def test_pagination_through_260_runs_with_filters(http) -> None:
    now = 1_764_400_000_000
    async with run_simulator(api_key=KEY, clock=lambda: now) as running:  # frozen: statuses hold still
        sim = running.sim
        ids = {
            project: set(sim.create_runs(n, project_id=project, created_at=(now - 600_000, now),
                                         pending_ms=(0, 400_000), running_ms=(0, 400_000)))
            for project, n in zip(sc.PROJECTS, (130, 80, 50), strict=True)
        }
        url = f"{running.base_url}/technique-runs"
        everything = await collect(http, url)
        assert len(everything) == 260 and {i["run_id"] for i in everything} == set().union(*ids.values())
        created = [i["created_at"] for i in everything]
        assert created == sorted(created, reverse=True)
        only_b = await collect(http, url, project_id=sc.PROJECTS[1])
        assert {i["run_id"] for i in only_b} == ids[sc.PROJECTS[1]]
        by_status = {status: await collect(http, url, status=status) for status in sc.STATUSES}
        assert all(by_status.values()) and sum(map(len, by_status.values())) == 260
        for status, listed in by_status.items():
            assert {i["run_id"] for i in listed} == {i["run_id"] for i in everything if i["status"] == status}
        pending_a = await collect(http, url, status="pending", project_id=sc.PROJECTS[0])
        assert {i["run_id"] for i in pending_a} == {
            i["run_id"] for i in by_status["pending"] if i["project_id"] == sc.PROJECTS[0]}
        cctv = await collect(http, url, technique_id=sc.TECHNIQUES_BY_KEY["cctv-cam"].technique_id,
                             workspace_id=sc.WORKSPACE_ID)
        assert cctv and all(i["technique"]["name"] == "CCTV Cam" for i in cctv)


# ------------------------------------------------------------------------------------------------ single runs


async def test_single_run_gets_by_slug_tech_id_and_runs_route(running, http) -> None:
    run_id = running.sim.create_run("voiceover", pending_ms=0, running_ms=0)
    tech_id = sc.TECHNIQUES_BY_KEY["voiceover"].technique_id
    for path in (f"/techniques/voiceover/runs/{run_id}", f"/techniques/{tech_id}/runs/{run_id}",
                 f"/runs/{run_id}"):
        status, body = await get_json(http, running.base_url + path)
        assert status == 200
        assert body["run_id"] == run_id and body["status"] == "completed" and body["progress"] == 100
        assert not {"technique", "technique_run_id", "project_id", "workspace_id"} & body.keys()
        assert body["outputs"][0]["type"] == "audioUrl"
        assert body["poll_url"] == f"{running.base_url}/techniques/voiceover/runs/{run_id}"
    for path in (f"/techniques/cctv-cam/runs/{run_id}", "/runs/run_nope", "/techniques/x/runs/run_nope"):
        status, body = await get_json(http, running.base_url + path)
        assert (status, body["error"]["code"]) == (404, "not_found")


async def test_poll_url_follows_the_host_or_a_configured_base(http) -> None:
    async with run_simulator(api_key=KEY, public_base_url="https://app.flora.ai/api/v1/") as r:
        run_id = r.sim.create_run()
        override = r.sim.create_run(poll_url="http://127.0.0.2:9/elsewhere")
        _, body = await get_json(http, f"{r.base_url}/runs/{run_id}")
        assert body["poll_url"] == f"https://app.flora.ai/api/v1/techniques/cctv-cam/runs/{run_id}"
        _, body = await get_json(http, f"{r.base_url}/runs/{override}")
        assert body["poll_url"] == "http://127.0.0.2:9/elsewhere"


# ------------------------------------------------------------------------------------------------ creating


async def test_post_creates_a_run_that_finishes(running, http) -> None:
    async with http.post(f"{running.base_url}/techniques/cctv-cam/runs", json=CREATE_BODY) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["status"] == "pending" and created["progress"] == 0 and created["charged_cost"] > 0
    deadline = time.monotonic() + 30  # a liveness bound: the run takes 0.2 s
    while True:
        _, body = await get_json(http, created["poll_url"])
        if body["status"] in ("completed", "failed"):
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert body["completed_at"] >= body["started_at"] >= body["created_at"]
    assert created["run_id"] in {t["run_id"] for t in running.sim.transitions()}


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/techniques/nope/runs", CREATE_BODY, 404, "not_found"),
    ("/techniques/cctv-cam/runs", b"{not json", 400, "invalid_json"),
    ("/techniques/cctv-cam/runs", {**CREATE_BODY, "priority": 1}, 400, "input_validation_error"),
    ("/techniques/cctv-cam/runs", {"mode": "async"}, 400, "input_validation_error"),
    ("/techniques/cctv-cam/runs", {**CREATE_BODY, "callback_url": "https://10.0.0.1/hook"}, 400,
     "input_validation_error"),
])
async def test_bad_creates_are_refused(running, http, path, body, status, code) -> None:
    kw = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with http.post(running.base_url + path, **kw) as resp:
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == code


async def test_idempotency_key_replays_or_conflicts(running, http) -> None:
    url = f"{running.base_url}/techniques/cctv-cam/runs"
    body = {**CREATE_BODY, "idempotency_key": "k1"}
    async with http.post(url, json=body) as first, http.post(url, json=body) as second:
        assert (first.status, second.status) == (201, 201)
        assert (await first.json())["run_id"] == (await second.json())["run_id"]
        assert second.headers["idempotent-replayed"] == "true"
    async with http.post(url, json={**body, "mode": "stream"}) as third:
        assert third.status == 422 and (await third.json())["error"]["code"] == "idempotency_conflict"


# ------------------------------------------------------------------------------------------------ faults


async def test_rate_limits_with_each_retry_after_style(http) -> None:
    clock = FakeClock()  # an HTTP-date is checked against the simulator's own clock
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as running:
        url = f"{running.base_url}/technique-runs"
        set_faults(running, rate_limit_share=1.0, retry_after=2)
        async with http.get(url) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "2"
            assert (await resp.json())["error"]["code"] == "rate_limited"
        set_faults(running, retry_after=None)
        async with http.get(url) as resp:
            assert resp.status == 429
            assert "Retry-After" not in resp.headers and "retry-after-ms" not in resp.headers
        set_faults(running, retry_after=30, retry_after_mode="http-date")
        async with http.get(url) as resp:
            when = email.utils.parsedate_to_datetime(resp.headers["Retry-After"]).timestamp()
            assert when * 1000 == clock.now_ms() + 30_000
        set_faults(running, retry_after=0.25, retry_after_mode="ms")
        async with http.get(url) as resp:
            assert resp.headers["retry-after-ms"] == "250"


async def test_error_bursts_mix_json_5xx_and_an_html_502(running, http) -> None:
    set_faults(running, error_burst=(4, 3))
    seen = []
    for _ in range(8):
        async with http.get(f"{running.base_url}/technique-runs") as resp:
            seen.append((resp.status, resp.content_type, await resp.text()))
    failed = [status >= 500 for status, _, _ in seen]
    assert failed == [False, True, True, True] * 2
    assert {s for s, _, _ in seen} == {200, 500, 502, 503}
    for status, ctype, text in seen:
        if status == 502:
            assert ctype == "text/html" and "Bad Gateway" in text
        elif status >= 500:
            assert json.loads(text)["error"]["code"] in ("internal_error", "service_unavailable")


async def test_malformed_bodies_are_200s_a_client_cannot_use(running, http) -> None:
    running.sim.create_runs(3)
    set_faults(running, malformed_share=1.0)
    kinds = set()
    for _ in range(15):
        async with http.get(f"{running.base_url}/technique-runs") as resp:
            assert resp.status == 200
            text = await resp.text()
        try:
            body = json.loads(text)
        except ValueError:
            kinds.add("html" if text.startswith("<") else "truncated")
            continue
        assert "technique_runs" not in body
        kinds.add("wrong_shape")
    assert kinds == {"html", "truncated", "wrong_shape"}


async def test_camel_case_and_seconds_timestamps(running, http) -> None:
    run_id = running.sim.create_run(pending_ms=0, running_ms=0)
    set_faults(running, camel_case=True, seconds_timestamps=True)
    _, body = await get_json(http, f"{running.base_url}/technique-runs")
    item = body["technique_runs"][0]
    assert item["runId"] == run_id and item["pollUrl"].endswith(run_id)
    assert item["outputs"][0]["outputId"] == "output_1" and "chargedCost" in item
    assert item["createdAt"] < 1e11 and "meta" in body
    _, single = await get_json(http, f"{running.base_url}/runs/{run_id}")
    assert single["runId"] == run_id and "run_id" not in single


async def test_latency_and_stalls_delay_answers(running, http) -> None:
    set_faults(running, latency_ms=80)
    start = time.monotonic()
    async with http.get(f"{running.base_url}/technique-runs") as resp:
        assert resp.status == 200
    assert time.monotonic() - start >= 0.08
    set_faults(running, latency_ms=0, stall_share=1.0, stall_ms=300)
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(f"{running.base_url}/technique-runs", timeout=aiohttp.ClientTimeout(total=0.1)):
            pass
    assert running.sim.stats()["faults"]["stall"] == 1


async def test_resets_drop_the_connection(running, http) -> None:
    set_faults(running, reset_share=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{running.base_url}/technique-runs"):
            pass
    assert "reset" in running.sim.stats()["by_status"]


async def test_charged_cost_is_briefly_absent_after_a_run_ends(running, http) -> None:
    set_faults(running, charged_cost_delay_ms=60_000)
    run_id = running.sim.create_run(pending_ms=0, running_ms=0, outcome="completed")
    _, body = await get_json(http, f"{running.base_url}/runs/{run_id}")
    assert body["status"] == "completed" and "charged_cost" not in body


async def test_admin_routes_are_never_faulted_nor_counted(running, http) -> None:
    set_faults(running, rate_limit_share=1.0, error_burst=(1, 1))
    for path in ("/stats", "/faults", "/generator", "/transitions"):
        async with http.get(running.admin_url + path) as resp:
            assert resp.status == 200
    assert running.sim.stats()["requests_total"] == 0


# ------------------------------------------------------------------------------------------------ admin API


async def test_request_counters_move_and_reset(running, http) -> None:
    await get_json(http, f"{running.base_url}/technique-runs")
    await get_json(http, f"{running.base_url}/runs/run_nope")
    _, stats = await get_json(http, f"{running.admin_url}/stats")
    assert stats["by_route"]["GET /api/v1/technique-runs"] == {"200": 1}
    assert stats["by_route"]["GET /api/v1/runs/{run_id}"] == {"404": 1}
    assert stats["requests_total"] == 2
    async with http.post(f"{running.admin_url}/stats/reset") as resp:
        assert (await resp.json())["requests_total"] == 0


async def test_admin_bulk_create_truth_and_transitions(running, http) -> None:
    async with http.post(f"{running.admin_url}/runs", json={
        "count": 5, "technique": "caption-writer", "project_id": "prj_bulk", "created_at_offset_ms": -60_000,
        "pending_ms": [0, 100], "running_ms": [100, 200], "fail_ratio": 1.0,
        "poll_url": "http://127.0.0.2:1/api/v1/runs/x",
    }) as resp:
        assert resp.status == 201
        created = await resp.json()
    _, truth = await get_json(http, f"{running.admin_url}/runs/{created['run_ids'][0]}")
    assert truth["status"] == "failed" and truth["technique"]["slug"] == "caption-writer"
    assert truth["poll_url"] == "http://127.0.0.2:1/api/v1/runs/x" and truth["project_id"] == "prj_bulk"
    _, body = await get_json(http, f"{running.admin_url}/transitions", params={"since_ms": "0"})
    assert {t["run_id"] for t in body["transitions"]} == set(created["run_ids"])
    assert all(t["status"] == "failed" and t["error_code"] for t in body["transitions"])
    async with http.post(f"{running.admin_url}/runs", json={"count": 1, "colour": "red"}) as resp:
        assert resp.status == 400


async def test_admin_faults_and_generator(http) -> None:
    clock = FakeClock()  # the simulator's time moves only when the test says
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as running:
        async with http.post(f"{running.admin_url}/faults", json={"latency": 1}) as resp:
            assert resp.status == 400 and "latency" in (await resp.json())["error"]["message"]
        async with http.post(f"{running.admin_url}/faults", json={"camel_case": True}) as resp:
            assert (await resp.json())["camel_case"] is True
        async with http.post(f"{running.admin_url}/generator",
                             json={"rate": 50, "duration_ms": [50, 100], "pending_ms": [0, 20]}) as resp:
            assert (await resp.json())["running"] is True
        clock.advance(0.3)
        async with http.post(f"{running.admin_url}/generator", json={"stop": True}) as resp:
            assert (await resp.json())["running"] is False
        made = len(running.sim.scenario.runs)
        assert made == 16  # 50 a second for 0.3 s: one at 0 ms, then every 20 ms up to 300 ms
        assert len(running.sim.transitions()) < made  # the last ones are still going (50-120 ms each)
        clock.advance(0.12)
        assert len(running.sim.transitions()) == made == len(running.sim.scenario.runs)


# ------------------------------------------------------------------------------------------------ the command


async def test_simulate_command_serves_a_listing_and_exits_0_on_sigterm(tmp_path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher", "simulate", "--port", "0", "--runs", "3", "--seed", "7",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        base_url = line.split()[-1]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
        async with aiohttp.ClientSession() as client, client.get(
                f"{base_url}/technique-runs", headers={"Authorization": "Bearer sk_test_simulator"}) as resp:
            assert resp.status == 200
            assert len((await resp.json())["technique_runs"]) == 3
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_simulate_command_refuses_a_non_loopback_host() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher", "simulate", "--host", "0.0.0.0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2 and b"--allow-remote" in err
