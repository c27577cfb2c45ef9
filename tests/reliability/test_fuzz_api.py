"""Fuzzed API responses (docs/reliability.md §3): hypothesis builds run objects and list pages valid by FLORA's
documented shape (shared/flora-api.md §2-§3) and deliberately broken ones — wrong types, huge strings, deep
nesting, unknown statuses, camelCase, seconds, non-JSON, truncated bodies, error statuses — and a tiny aiohttp
server on loopback serves them to the real client and sweep.

Each example: a valid sweep that starts tracking a canary run, a sweep against the fuzzed responses, a valid
sweep where the canary has completed. The sweep never raises (but AuthError for a 401/403), never emits an event
for a status that is not terminal in what was served, and keeps working: the canary's completion is reported
exactly once.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fakes import FakeClock
from tests.reliability.harness import serve
from watcher.api import FloraClient
from watcher.config import WatchConfig
from watcher.errors import AuthError
from watcher.normalize import RUN_ID_KEYS
from watcher.secret import Secret
from watcher.sinks.registry import sink_config
from watcher.store import AsyncStore, Store
from watcher.sweep import Sweeper

KEY = "sk_test_fuzz_0123456789"
EPOCH_MS = 1_764_400_000_000
CANARY = "run_CANARY"  # no generated id can take it (generated ids are lower case)
TERMINAL = {"completed": "run.completed", "failed": "run.failed"}


# ------------------------------------------------------------------------------------------- the server


class FakeApi:
    """Serves ``lists`` in turn to list requests (the last one again when they run out) and ``poll`` to every
    single-run request. Each response is (status, body bytes, headers)."""

    def __init__(self) -> None:
        self.lists: list[tuple[int, bytes, dict[str, str]]] = []
        self.poll: tuple[int, bytes, dict[str, str]] = (404, b"", {})
        self._served = 0
        self.origin = ""

    def load(self, lists, poll) -> None:
        self.lists, self.poll, self._served = list(lists), poll, 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.rstrip("/").endswith("/technique-runs"):
            status, body, headers = self.lists[min(self._served, len(self.lists) - 1)]
            self._served += 1
        else:
            status, body, headers = self.poll
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApi]:
    api = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner, api.origin = await serve(app)
    try:
        yield api
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------------------------------- strategies

IDS = st.from_regex(r"run_[a-z0-9]{4,12}", fullmatch=True)
KNOWN_STATUSES = st.sampled_from(["pending", "running", "completed", "failed"])
ODD_STATUSES = st.sampled_from(["COMPLETED", " failed ", "Running", "queued", "cancelled", "succeeded", "", "null"])
ANY_STATUS = st.one_of(KNOWN_STATUSES, ODD_STATUSES, st.text(max_size=12))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
TIMES = st.integers(EPOCH_MS + 1_000, EPOCH_MS + 600_000)


@st.composite
def valid_run(draw, status=KNOWN_STATUSES) -> dict[str, Any]:
    """A run object as flora-api.md §2 documents a list item (optional fields drawn in or out)."""
    run_id = draw(IDS)
    created = draw(TIMES)
    run: dict[str, Any] = {
        "run_id": run_id, "technique_run_id": run_id, "status": draw(status),
        "progress": draw(st.floats(0, 100)), "created_at": created,
        "project_id": "prj_fuzz", "workspace_id": "ws_fuzz",
        "technique": {"technique_id": "tech_abcd1234", "name": draw(st.text(max_size=30))},
    }
    if draw(st.booleans()):
        run["started_at"] = created + draw(st.integers(0, 5_000))
    if draw(st.booleans()):
        run["completed_at"] = created + draw(st.integers(0, 60_000))
    if draw(st.booleans()):
        run["charged_cost"] = draw(st.floats(0, 10))
    if draw(st.booleans()):
        run["error_code"] = draw(st.sampled_from(["GPU_PROVIDER_ERROR", "model_timeout", "provider_error"]))
        run["error_message"] = draw(st.text(max_size=80))
    if draw(st.booleans()):
        run["outputs"] = draw(st.lists(st.fixed_dictionaries({
            "output_id": st.text(min_size=1, max_size=8),
            "type": st.sampled_from(["imageUrl", "videoUrl", "audioUrl", "text", "documentUrl"]),
            "url": st.text(min_size=1, max_size=40)}), max_size=3))
    if draw(st.booleans()):
        run["poll_url"] = draw(st.sampled_from([
            f"https://app.flora.ai/api/v1/techniques/t/runs/{run_id}", f"/runs/{run_id}", "not a url", ""]))
    return run


def _camel(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k.split("_")[0] + "".join(p.capitalize() for p in k.split("_")[1:]): _camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


@st.composite
def broken_run(draw) -> dict[str, Any]:
    """A run object with one deliberate defect."""
    run = draw(valid_run(status=ANY_STATUS))
    kind = draw(st.sampled_from(["wrong_type", "huge", "camel", "seconds", "drop", "id_drift", "extra"]))
    if kind == "wrong_type":
        run[draw(st.sampled_from(sorted(run)))] = draw(JSON_VALUES)
    elif kind == "huge":
        field = draw(st.sampled_from(["run_id", "status", "error_message", "error_code", "poll_url"]))
        run[field] = draw(st.sampled_from(["run_", "completed", "x"])) + "x" * draw(st.integers(10_000, 300_000))
    elif kind == "camel":
        run = _camel(run)
    elif kind == "seconds":
        for key in ("created_at", "started_at", "completed_at"):
            if isinstance(run.get(key), int):
                run[key] = run[key] / 1000
    elif kind == "drop":
        run.pop(draw(st.sampled_from(["run_id", "status", "created_at", "technique", "technique_run_id"])), None)
    elif kind == "id_drift":
        run["technique_run_id"] = draw(IDS)
        if draw(st.booleans()):
            run["id"] = run.pop("run_id")
    else:
        run[draw(st.text(max_size=10))] = draw(JSON_VALUES)
    return run


def page_body(runs: list[Any], meta: Any) -> dict[str, Any]:
    return {"technique_runs": runs, "meta": meta}


META = st.one_of(
    st.fixed_dictionaries({"next_cursor": st.one_of(st.none(), st.just(""), st.text(max_size=12)),
                           "total_estimate": st.one_of(st.none(), st.integers(-5, 10**6))}),
    JSON_VALUES,
)

# A response: (status, body, headers, the run objects it carries — what an event may legitimately come from)
Response = tuple[int, bytes, dict[str, str], list[Any]]
JSON_HEADERS = {"Content-Type": "application/json"}


def json_response(obj: Any, runs: list[Any], status: int = 200) -> Response:
    return status, json.dumps(obj).encode(), JSON_HEADERS, runs


@st.composite
def list_response(draw) -> Response:
    kind = draw(st.sampled_from(["valid", "broken_items", "bad_shape", "raw", "error"]))
    if kind == "valid":
        runs = draw(st.lists(valid_run(), max_size=8))
        return json_response(page_body(runs, draw(META)), runs)
    if kind == "broken_items":
        runs = draw(st.lists(st.one_of(valid_run(), broken_run(), JSON_VALUES), max_size=8))
        return json_response(page_body(runs, draw(META)), runs)
    if kind == "bad_shape":
        runs = draw(st.lists(valid_run(), max_size=3))
        obj = draw(st.sampled_from([
            runs, {"technique_runs": {"a": runs}}, {"data": None}, None, "technique_runs", {"techniqueRuns": runs},
            {"technique_runs": runs, "meta": {"next_cursor": ["x"]}},
        ]))
        return json_response(obj, runs)
    if kind == "raw":
        return draw(raw_response())
    return draw(error_response())


@st.composite
def poll_response(draw) -> Response:
    kind = draw(st.sampled_from(["valid", "broken", "no_id", "raw", "error"]))
    if kind == "valid":
        run = draw(valid_run())
        return json_response(run, [run])
    if kind == "broken":
        run = draw(broken_run())
        return json_response(run, [run])
    if kind == "no_id":  # the single-run shape without an id: the asked id is assumed
        run = {"status": draw(ANY_STATUS), "progress": draw(JSON_VALUES)}
        return json_response(run, [{**run, "__asked__": True}])
    if kind == "raw":
        return draw(raw_response())
    return draw(error_response())


@st.composite
def raw_response(draw) -> Response:
    run = draw(valid_run())
    good = json.dumps(page_body([run], {"next_cursor": None})).encode()
    depth = draw(st.integers(1_000, 200_000))
    body = draw(st.sampled_from([
        b"[" * depth + b"]" * depth,  # deeper than any JSON parser's recursion limit
        b'{"technique_runs": [{"run_id": "run_deep", "status": "completed", "outputs": ' + b"[" * depth
        + b"]" * depth + b"}]}",
        good[: len(good) // 2],  # truncated
        b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        b"", b"null", b"NaN", b"1e400", b'"\\ud800"', b"\xff\xfe\x00garbage",
    ]))
    ctype = draw(st.sampled_from(["application/json", "text/html", "text/plain"]))
    return 200, body, {"Content-Type": ctype}, [run] if body.startswith(b'{"technique_runs": [{"run_id') else []


@st.composite
def error_response(draw) -> Response:
    status = draw(st.sampled_from([301, 302, 307, 400, 401, 403, 404, 409, 418, 422, 429, 500, 502, 503, 504]))
    body = draw(st.sampled_from([
        json.dumps({"error": {"code": "internal_error", "message": "oops"}}).encode(),
        json.dumps({"error": {"code": "rate_limited", "message": f"slow down, key {KEY}"}}).encode(),
        json.dumps({"error": "not an object"}).encode(), b"<html>bad gateway</html>", b"",
    ]))
    headers = dict(JSON_HEADERS)
    if status == 429 and draw(st.booleans()):
        headers["Retry-After"] = draw(st.sampled_from(
            ["1", "0", "-5", "99999999", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"]))
    if 300 <= status < 400 and draw(st.booleans()):
        headers["Location"] = draw(st.sampled_from(["https://evil.example/steal", "/api/v1/runs/x", "::"]))
    return status, body, headers, []


# ------------------------------------------------------------------------------------------- the test


def allowed_events(responses: list[Response], asked: set[str]) -> set[tuple[str, str]]:
    """(run_id, event type) an event may carry: a served object whose status is terminal."""
    out = set()
    for _status, _body, _headers, runs in responses:
        for run in runs:
            if not isinstance(run, dict) or not isinstance(run.get("status"), str):
                continue
            kind = TERMINAL.get(run["status"].strip().lower())
            if kind is None:
                continue
            ids = {v for k, v in run.items() if k in RUN_ID_KEYS and isinstance(v, str)}
            out |= {(i, kind) for i in ids | asked}
    return out


def valid_list(runs: list[dict[str, Any]]) -> Response:
    return json_response(page_body(runs, {"next_cursor": None}), runs)


def canary(status: str) -> dict[str, Any]:
    return {"run_id": CANARY, "technique_run_id": CANARY, "status": status, "progress": 50,
            "created_at": EPOCH_MS + 500, "project_id": "prj_fuzz", "workspace_id": "ws_fuzz",
            "technique": {"technique_id": "tech_abcd1234", "name": "Canary"}}


async def run_sweep(sweeper: Sweeper, api: FakeApi, lists: list[Response], poll: Response) -> list:
    api.load([r[:3] for r in lists], poll[:3])
    result = await sweeper.sweep()
    return [e for e in result.events if e.id in result.new_event_ids]


DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_RESPONSE: Response = (200, DEEP, JSON_HEADERS, [])


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(first=st.lists(valid_run(status=st.sampled_from(["pending", "running"])), max_size=5),
       lists=st.lists(list_response(), min_size=1, max_size=3), poll=poll_response())
@example(first=[], lists=[DEEP_RESPONSE], poll=DEEP_RESPONSE)  # RecursionError escaped the client (fixed)
@example(first=[], lists=[valid_list([])], poll=DEEP_RESPONSE)
@example(first=[], lists=[(500, DEEP, JSON_HEADERS, [])], poll=(404, DEEP, JSON_HEADERS, []))  # error bodies too
async def test_the_sweep_survives_any_api_response(fake_api: FakeApi, first, lists, poll) -> None:
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS)  # time moves only when something sleeps: no real waits
    store = AsyncStore(Store.open(":memory:"))
    client = FloraClient(f"{fake_api.origin}/api/v1", Secret(KEY), timeout=5, max_rps=0, max_retries=1,
                         clock=clock, rand=random.Random(0))
    watch = WatchConfig(interval=1.0, state_dir="/nonexistent", poll_max_interval=1.0)
    sweeper = Sweeper(client, store, watch=watch, sinks=[sink_config(name="s", type="stdout")], clock=clock,
                      rand=random.Random(0), process_start_ms=EPOCH_MS)
    try:
        await sweeper.load()
        assert await run_sweep(sweeper, fake_api, [valid_list([canary("running"), *first])],
                               valid_list([])) == []
        assert CANARY in sweeper.tracked
        clock.t += 2.0  # every tracked run is due for a poll
        try:
            events = await run_sweep(sweeper, fake_api, lists, poll)
        except AuthError:
            assert any(r[0] in (401, 403) for r in [*lists, poll]), "AuthError without a 401/403"
            return
        asked = {t.run_id for t in sweeper.tracked.values()} | {CANARY} | {r["run_id"] for r in first}
        allowed = allowed_events([*lists, poll], asked)
        for event in events:
            assert event.type in ("run.completed", "run.failed")
            assert TERMINAL[event.data["status"]] == event.type
            assert (event.data["run_id"], event.type) in allowed, f"event for what was not served: {event.type}"
        clock.t += 2.0
        healed = await run_sweep(sweeper, fake_api, [valid_list([canary("completed")])], valid_list([]))
        canary_events = [e for e in [*events, *healed] if e.data["run_id"] == CANARY]
        assert len(canary_events) == 1, "the sweep must keep working after a bad response"
    finally:
        await client.close()
        await store.aclose()
