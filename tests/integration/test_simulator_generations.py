"""The simulator's generations (``GET /generations``, ``POST /generate``, ``GET /runs/{id}``) and its stuck
runs, over real loopback HTTP, driven by a manual clock (no real waiting)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes import FakeClock
from watcher.simulator import RunningSimulator, Simulator, run_simulator
from watcher.simulator import scenario as sc

KEY = "sk_test_sim"
AUTH = {"Authorization": f"Bearer {KEY}"}
T0 = 1_764_400_000_000
GENERATE = {"project_id": "prj_a1", "workspace_id": "ws_a1", "prompt": "a fox at dusk", "type": "image"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0, epoch_ms=T0)


@pytest.fixture
async def running(clock: FakeClock) -> AsyncIterator[RunningSimulator]:
    async with run_simulator(api_key=KEY, seed=7, clock=clock, pending_ms=1_000, running_ms=4_000) as r:
        yield r


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with http.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_generations_are_listed_apart_from_technique_runs(running, http) -> None:
    sim = running.sim
    tech = sim.create_run("cctv-cam")
    gens = [sim.create_generation("kling-v2.1", project_id="prj_sim1alpha") for _ in range(3)]
    status, body = await get_json(http, f"{running.base_url}/generations?limit=2")
    assert status == 200 and set(body) == {"generations", "meta"}
    assert [g["run_id"] for g in body["generations"]] == gens[::-1][:2]  # newest first
    item = body["generations"][0]
    assert item["generation_id"] == item["run_id"]
    assert item["model"] == {"model_id": "kling-v2.1"} and "technique" not in item
    assert item["project_id"] == "prj_sim1alpha" and item["workspace_id"] == sc.WORKSPACE_ID
    assert item["poll_url"] == f"{running.base_url}/runs/{item['run_id']}"
    status, rest = await get_json(http, f"{running.base_url}/generations?limit=2&cursor={body['meta']['next_cursor']}")
    assert [g["run_id"] for g in rest["generations"]] == [gens[0]] and rest["meta"]["next_cursor"] is None
    _, techs = await get_json(http, f"{running.base_url}/technique-runs?limit=100")
    assert [r["run_id"] for r in techs["technique_runs"]] == [tech]
    for query in ("status=pending", "project_id=prj_sim1alpha", f"workspace_id={sc.WORKSPACE_ID}"):
        _, filtered = await get_json(http, f"{running.base_url}/generations?{query}")
        assert {g["run_id"] for g in filtered["generations"]} == set(gens), query
    _, none = await get_json(http, f"{running.base_url}/generations?project_id=prj_other")
    assert none["generations"] == []
    status, bad = await get_json(http, f"{running.base_url}/generations?limit=101")
    assert status == 400 and bad["error"]["code"] == "input_validation_error"


async def test_post_generate_returns_a_ticket_and_the_run_moves_on_the_clock(running, http, clock) -> None:
    async with http.post(f"{running.base_url}/generate", json=GENERATE) as resp:
        assert resp.status == 201
        ticket = await resp.json()
    assert ticket["type"] == "generation" and ticket["run_id"].startswith("run_")
    assert ticket["model"] == {"model_id": sc.MODEL_FOR_TYPE["image"].technique_id}
    assert ticket["technique"] is None and ticket["action"] is None and ticket["charged_cost"] > 0
    assert ticket["estimated_seconds"] == 5 and ticket["project_id"] == "prj_a1"
    poll = ticket["poll_url"]
    assert poll == f"{running.base_url}/runs/{ticket['run_id']}"
    seen = []
    for step in (0, 1_000, 2_000, 3_000):
        clock.advance(step / 1000)
        _, run = await get_json(http, poll)
        seen.append((run["status"], run["progress"]))
    assert [s for s, _ in seen] == ["pending", "running", "running", running.sim.run_truth(ticket["run_id"])["outcome"]]
    assert seen[1][1] < seen[2][1]
    # A generation is not a technique run: the nested technique route does not know it.
    status, _ = await get_json(http, f"{running.base_url}/techniques/cctv-cam/runs/{ticket['run_id']}")
    assert status == 404


@pytest.mark.parametrize(("body", "field"), [
    ({**GENERATE, "type": "t2i"}, "type"),
    ({**GENERATE, "project_id": "abc"}, "project_id"),
    ({k: v for k, v in GENERATE.items() if k != "prompt"}, "prompt"),
    ({**GENERATE, "inputs": []}, "inputs"),
])
async def test_bad_generate_bodies_are_400_with_fields(running, http, body, field) -> None:
    async with http.post(f"{running.base_url}/generate", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "input_validation_error" and field in {f["field"] for f in error["fields"]}


async def test_unknown_model_is_404(running, http) -> None:
    async with http.post(f"{running.base_url}/generate", json={**GENERATE, "model": "nope"}) as resp:
        assert resp.status == 404


@pytest.mark.parametrize(("status", "code"), [(404, "not_found"), (403, "forbidden")])
async def test_an_api_without_generations_answers_the_configured_error(running, http, status, code) -> None:
    running.sim.set_faults(generations_status=status)
    got, body = await get_json(http, f"{running.base_url}/generations")
    assert (got, body["error"]["code"]) == (status, code)
    got, _ = await get_json(http, f"{running.base_url}/technique-runs")
    assert got == 200
    assert running.sim.stats()["by_route"]["GET /api/v1/generations"] == {str(status): 1}


async def test_a_stuck_run_keeps_its_progress_for_stall_ms(running, http, clock) -> None:
    sim = running.sim
    run_id = sim.create_run("cctv-cam", pending_ms=0, running_ms=4_000, stall_ms=60_000, outcome="completed")
    progress = []
    for step in (1_000, 1_000, 1_000, 30_000, 29_000, 1_000, 1_000, 1_000):
        clock.advance(step / 1000)
        _, run = await get_json(http, f"{running.base_url}/runs/{run_id}")
        progress.append((run["status"], run["progress"]))
    assert progress[:2] == [("running", 25.0), ("running", 50.0)]
    assert {p for _, p in progress[2:5]} == {50.0}  # stuck halfway for 60 s
    assert progress[5][1] > 50.0 and progress[-1] == ("completed", 100.0)


async def test_a_run_can_stay_pending_for_as_long_as_asked(running, http, clock) -> None:
    run_id = running.sim.create_generation(pending_ms=3_600_000)
    clock.advance(3_599)
    _, run = await get_json(http, f"{running.base_url}/runs/{run_id}")
    assert (run["status"], run["progress"]) == ("pending", 0.0)


async def test_admin_creates_generations_and_stuck_runs(running, http) -> None:
    async with http.post(f"{running.admin_url}/runs", json={"kind": "generation", "model": "gpt-4.1-mini",
                                                           "count": 2, "stall_ms": 5_000}) as resp:
        assert resp.status == 201
        ids = (await resp.json())["run_ids"]
    truth = running.sim.run_truth(ids[0])
    assert truth["kind"] == "generation" and truth["model"] == {"model_id": "gpt-4.1-mini"}
    assert truth["technique"] is None and truth["stall_ms"] == 5_000
    async with http.post(f"{running.admin_url}/runs", json={"kind": "action"}) as resp:
        assert resp.status == 400


def test_the_generator_makes_a_share_of_generations() -> None:
    clock = FakeClock(0.0, epoch_ms=T0)
    sim = Simulator(clock=clock)
    sim.start_generator(10, generation_share=0.3, duration_ms=(10_000, 10_000))
    clock.advance(100)
    sim.now_ms()
    counts = sim.stats()["runs_by_kind"]
    gens, techs = sum(counts["generation"].values()), sum(counts["technique"].values())
    assert gens + techs == 1001 and 200 < gens < 400
    # Technique-only load is unchanged by the new knob: the same seed gives the same runs.
    a, b = Simulator(seed=3, clock=FakeClock(0.0, epoch_ms=T0)), Simulator(seed=3, clock=FakeClock(0.0, epoch_ms=T0))
    a.start_generator(5)
    b.start_generator(5, generation_share=0.0)
    assert a.now_ms() == b.now_ms() and sorted(a.scenario.runs) == sorted(b.scenario.runs)
