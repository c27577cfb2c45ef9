"""FloraClient against aioresponses: every rule of the client (flora-api.md §2-§4, §8; CONTRACT §6)."""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioresponses import CallbackResult, aioresponses
from structlog.testing import capture_logs
from yarl import URL

from tests.fakes import FakeClock
from watcher import __version__
from watcher.api import FloraClient
from watcher.errors import (
    ApiUnavailableError,
    AuthError,
    BadResponseError,
    ClientRequestError,
    ForeignOriginError,
    NotFoundError,
    RateLimitedError,
    ServerError,
)
from watcher.secret import Secret

BASE = "https://app.flora.test/api/v1"
KEY = "sk_live_test_key_0123456789"
LIST = f"{BASE}/technique-runs"
EPOCH_MS = 1_764_400_000_000


class MockResponse(aiohttp.ClientResponse):
    """aiohttp 3.14 requires ``stream_writer``; aioresponses 0.7.x does not pass it (aioresponses#289)."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        if "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters:
            kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


def respond(status: int = 200, **kwargs: Any) -> CallbackResult:
    return CallbackResult(status=status, response_class=MockResponse, **kwargs)


@dataclass
class Call:
    method: str
    url: URL
    headers: dict[str, str]
    json: Any
    at: float  # clock.monotonic() when the request was sent


Response = CallbackResult | BaseException | Callable[[Call], Any]


class FakeApi:
    """Routes requests by (method, URL without query) to queued responses; the last one repeats.

    Unrouted URLs answer FLORA's 404 envelope. A response may be a ``CallbackResult``, an exception to
    raise (transport errors) or a function of the ``Call`` (sync or async) returning one.
    """

    def __init__(self, mocked: aioresponses, clock: Any) -> None:
        self.clock = clock
        self.calls: list[Call] = []
        self.routes: dict[tuple[str, str], list[Response]] = {}
        for method in ("GET", "POST"):
            mocked.add(
                re.compile(r"^https?://.*"),
                method=method,
                callback=partial(self._dispatch, method),
                repeat=True,
            )

    def route(self, method: str, url: str, *responses: Response) -> None:
        self.routes[(method, url)] = list(responses)

    def get(self, url: str, *responses: Response) -> None:
        self.route("GET", url, *responses)

    async def _dispatch(self, method: str, url: URL, **kwargs: Any) -> CallbackResult:
        headers = {k.lower(): v for k, v in (kwargs.get("headers") or {}).items()}
        call = Call(method, url, headers, kwargs.get("json"), self.clock.monotonic())
        self.calls.append(call)
        queue = self.routes.get((method, str(url.with_query(None))))
        if not queue:
            return err(404, "not_found", "Not found")
        response = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(response, BaseException):
            raise response
        if callable(response) and not isinstance(response, CallbackResult):
            result = response(call)
            return await result if inspect.isawaitable(result) else result
        return response

    def urls(self) -> list[str]:
        return [str(c.url.with_query(None)) for c in self.calls]


def ok(payload: Any, status: int = 200, **headers: str) -> CallbackResult:
    return respond(status, payload=payload, headers=headers or None)


def err(
    status: int,
    code: str | None = None,
    message: str | None = None,
    *,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> CallbackResult:
    if body is None:
        body = json.dumps({"error": {"code": code, "message": message}}) if code else ""
    return respond(status, body=body, headers=headers)


def run(run_id: str, status: str = "running", **extra: Any) -> dict[str, Any]:
    return {"run_id": run_id, "status": status, "progress": 10, "created_at": EPOCH_MS, **extra}


def page(runs: list[dict], cursor: Any = None, *, omit_meta: bool = False) -> CallbackResult:
    body: dict[str, Any] = {"technique_runs": runs}
    if not omit_meta:
        body["meta"] = {"next_cursor": cursor, "total_estimate": 99}
    return ok(body)


def by_cursor(pages: dict[str | None, CallbackResult]) -> Callable[[Call], CallbackResult]:
    return lambda call: pages[call.url.query.get("cursor")]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0, epoch_ms=EPOCH_MS)


@pytest.fixture
def api(clock: FakeClock):
    with aioresponses() as mocked:
        yield FakeApi(mocked, clock)


@pytest.fixture
async def make_client(clock: FakeClock):
    made: list[FloraClient] = []

    def factory(**kw: Any) -> FloraClient:
        kw.setdefault("clock", clock)
        kw.setdefault("rand", random.Random(7))
        client = FloraClient(kw.pop("base_url", BASE), kw.pop("api_key", Secret(KEY)), **kw)
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.close()


@pytest.fixture
def client(make_client: Callable[..., FloraClient]) -> FloraClient:
    return make_client()


async def all_runs(client: FloraClient, **filters: Any) -> list[str]:
    return [r.run_id async for r in client.list_runs(**filters)]


# ------------------------------------------------------------------------------------------ listing


async def test_listing_sends_limit_filters_key_and_user_agent(api: FakeApi, client: FloraClient) -> None:
    api.get(LIST, page([run("run_1")]))
    assert await all_runs(client, project_id="prj_a", status="running", technique_id="tech_1") == ["run_1"]
    (call,) = api.calls
    assert dict(call.url.query) == {
        "limit": "100",
        "project_id": "prj_a",
        "status": "running",
        "technique_id": "tech_1",
    }
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.headers["user-agent"] == f"flora-watcher/{__version__}"


@pytest.mark.parametrize("last_cursor", ["absent", None, ""])
async def test_pagination_ends_on_absent_null_or_empty_cursor(
    api: FakeApi, client: FloraClient, last_cursor: str | None
) -> None:
    last = (
        page([run("run_3")], omit_meta=True) if last_cursor == "absent" else page([run("run_3")], last_cursor)
    )
    api.get(LIST, by_cursor({None: page([run("run_1"), run("run_2")], "c1"), "c1": last}))
    assert await all_runs(client) == ["run_1", "run_2", "run_3"]
    assert [c.url.query.get("cursor") for c in api.calls] == [None, "c1"]


async def test_runs_repeated_across_shifted_pages_are_yielded_once(api: FakeApi, client: FloraClient) -> None:
    api.get(
        LIST,
        by_cursor(
            {
                None: page([run("run_5"), run("run_4")], "c1"),
                "c1": page(
                    [run("run_4"), run("run_3"), run("run_3")], "c2"
                ),  # shifted by a new run; a dup inside
                "c2": page([run("run_3"), run("run_2")], None),
            }
        ),
    )
    pages = [p async for p in client.pages()]
    assert [[r.run_id for r in p.runs] for p in pages] == [["run_5", "run_4"], ["run_3"], ["run_2"]]


async def test_a_cursor_that_repeats_stops_the_listing(api: FakeApi, client: FloraClient) -> None:
    api.get(LIST, by_cursor({None: page([run("run_1")], "c1"), "c1": page([run("run_2")], "c1")}))
    with capture_logs() as logs:
        assert await all_runs(client) == ["run_1", "run_2"]
    assert len(api.calls) == 2
    assert [e["reason"] for e in logs if e["event"] == "api.cursor_loop"] == ["repeated_cursor"]


async def test_max_pages_bounds_an_endless_listing(api: FakeApi, client: FloraClient) -> None:
    counter = iter(range(1000))
    api.get(LIST, lambda call: page([run(f"run_{next(counter)}")], f"c{len(api.calls)}"))
    with capture_logs() as logs:
        pages = [p async for p in client.pages(max_pages=5)]
    assert len(pages) == 5 and len(api.calls) == 5
    assert [e["reason"] for e in logs if e["event"] == "api.cursor_loop"] == ["max_pages"]


async def test_camel_case_pages_and_second_timestamps_are_normalised(
    api: FakeApi, client: FloraClient
) -> None:
    api.get(
        LIST,
        ok(
            {
                "techniqueRuns": [
                    {
                        "runId": "run_s",
                        "status": "COMPLETED",
                        "createdAt": 1764400000,
                        "completedAt": "1764400005",
                        "pollUrl": f"{BASE}/runs/run_s",
                        "errorCode": None,
                        "outputs": [{"outputId": "o1", "type": "text", "url": "hello"}],
                    },
                    {"run_id": "run_ms", "status": "running", "created_at": 1764400000123},
                ],
                "meta": {"nextCursor": None},
            }
        ),
    )
    runs = [r async for r in client.list_runs()]
    assert [(r.run_id, r.status, r.created_at) for r in runs] == [
        ("run_s", "completed", 1764400000000),
        ("run_ms", "running", 1764400000123),
    ]
    assert runs[0].completed_at == 1764400005000 and runs[0].outputs[0].output_id == "o1"
    assert runs[0].poll_url == f"{BASE}/runs/run_s"


async def test_unknown_statuses_are_kept_and_logged_once(api: FakeApi, client: FloraClient) -> None:
    api.get(LIST, page([run("run_1", "queued"), run("run_2", "QUEUED"), run("run_3")]))
    with capture_logs() as logs:
        runs = [r async for r in client.list_runs()]
    assert [r.status for r in runs] == ["queued", "queued", "running"]
    assert not runs[0].terminal
    assert [(e["status"]) for e in logs if e["event"] == "api.unknown_status"] == ["queued"]


async def test_unparseable_items_are_skipped_and_logged(api: FakeApi, client: FloraClient) -> None:
    api.get(LIST, page([run("run_1"), {"status": "running"}, "junk"]))
    with capture_logs() as logs:
        pages = [p async for p in client.pages()]
    assert [r.run_id for r in pages[0].runs] == ["run_1"] and pages[0].skipped == 2
    assert [e["skipped"] for e in logs if e["event"] == "api.page_items_skipped"] == [2]


@pytest.mark.parametrize("body", ["not json", "[]", '{"meta": {}}', ""])
async def test_a_2xx_list_of_the_wrong_shape_is_a_bad_response(
    api: FakeApi, client: FloraClient, body: str
) -> None:
    api.get(LIST, respond(200, body=body))
    with pytest.raises(BadResponseError) as info:
        await all_runs(client)
    assert info.value.status == 200
    assert client.stats.outcomes["bad_response"] == 1 and len(api.calls) == 1  # not retried


# ------------------------------------------------------------------------------------------ get_run


async def test_get_run_follows_poll_url_on_the_api_origin_with_the_key(
    api: FakeApi, client: FloraClient
) -> None:
    poll = f"{BASE}/techniques/cctv-cam/runs/run_1"
    api.get(poll, ok(run("run_1", "completed", completed_at=1764400009)))
    got = await client.get_run("run_1", poll_url=poll, technique_id="ignored")
    assert (got.status, got.completed_at) == ("completed", 1764400009000)
    assert api.urls() == [poll] and api.calls[0].headers["authorization"] == f"Bearer {KEY}"


async def test_relative_poll_urls_resolve_against_base_url(api: FakeApi, client: FloraClient) -> None:
    api.get(f"{BASE}/techniques/t/runs/run_1", ok(run("run_1")))
    api.get(f"{BASE}/runs/run_2", ok(run("run_2")))
    assert (await client.get_run("run_1", poll_url="techniques/t/runs/run_1")).run_id == "run_1"
    assert (await client.get_run("run_2", poll_url="/api/v1/runs/run_2")).run_id == "run_2"


@pytest.mark.parametrize(
    "foreign",
    [
        "https://evil.example/api/v1/runs/run_1",
        "http://app.flora.test/api/v1/runs/run_1",  # other scheme
        "https://app.flora.test:8443/api/v1/runs/run_1",  # other port
        "//evil.example/runs/run_1",  # scheme-relative
        "ftp://app.flora.test/x",
    ],
)
async def test_a_foreign_poll_url_is_never_requested(api: FakeApi, client: FloraClient, foreign: str) -> None:
    api.get(
        foreign.replace("//evil", "https://evil") if foreign.startswith("//") else foreign, ok(run("run_1"))
    )
    api.get(f"{BASE}/techniques/tech_1/runs/run_1", ok(run("run_1", "completed")))
    with capture_logs() as logs:
        got = await client.get_run("run_1", poll_url=foreign, technique_id="tech_1")
    assert got.status == "completed"
    assert api.urls() == [f"{BASE}/techniques/tech_1/runs/run_1"]
    assert [e["event"] for e in logs if e["event"] == "api.foreign_poll_url"] == ["api.foreign_poll_url"]


async def test_the_same_origin_with_default_port_spelled_out_counts_as_the_api(
    api: FakeApi, client: FloraClient
) -> None:
    api.get(f"{BASE}/runs/run_1", ok(run("run_1")))
    await client.get_run("run_1", poll_url="https://APP.flora.test:443/api/v1/runs/run_1")
    assert api.calls[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("refusal", [err(404, "not_found", "gone"), err(400, "invalid_json", "bad id")])
async def test_poll_url_refused_falls_back_to_the_technique_then_the_runs_path(
    api: FakeApi, client: FloraClient, refusal: CallbackResult
) -> None:
    poll = f"{BASE}/odd/poll/run_1"
    api.get(poll, refusal)
    api.get(f"{BASE}/runs/run_1", ok(run("run_1", "failed", error_code="GPU_PROVIDER_ERROR")))
    got = await client.get_run("run_1", poll_url=poll, technique_id="cctv-cam")
    assert got.error_code == "GPU_PROVIDER_ERROR"
    assert api.urls() == [poll, f"{BASE}/techniques/cctv-cam/runs/run_1", f"{BASE}/runs/run_1"]


async def test_get_run_without_poll_url_or_technique_uses_runs_path(
    api: FakeApi, client: FloraClient
) -> None:
    api.get(f"{BASE}/runs/run_1", ok({"status": "pending"}))  # the id is taken from the request
    got = await client.get_run("run_1")
    assert (got.run_id, got.status) == ("run_1", "pending")


async def test_not_found_everywhere_raises_not_found(api: FakeApi, client: FloraClient) -> None:
    with pytest.raises(NotFoundError) as info:
        await client.get_run("run_x", poll_url=f"{BASE}/techniques/t/runs/run_x", technique_id="t")
    assert info.value.status == 404 and info.value.code == "not_found"
    assert len(api.calls) == 2  # poll_url == technique path, asked once; then /runs/run_x


async def test_ids_from_the_api_cannot_escape_the_path(api: FakeApi, client: FloraClient) -> None:
    with pytest.raises(NotFoundError):
        await client.get_run("../../admin?x=1", technique_id="a/b")
    assert all(
        str(c.url.with_query(None)).startswith(f"{BASE}/")
        and "admin" in c.url.raw_path
        and "/admin" not in c.url.raw_path
        for c in api.calls
    )


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("status", "code", "exc_type"),
    [
        (400, "input_validation_error", ClientRequestError),
        (401, "invalid_api_key", AuthError),
        (402, "insufficient_credits", ClientRequestError),
        (403, "forbidden", AuthError),
        (404, "not_found", NotFoundError),
        (408, "timeout", ServerError),
        (409, "conflict", ServerError),
        (422, "idempotency_conflict", ClientRequestError),
        (429, "rate_limited", RateLimitedError),
        (500, "unknown_error", ServerError),
        (503, "service_unavailable", ServerError),
    ],
)
async def test_error_envelope_maps_to_typed_errors(
    make_client: Callable[..., FloraClient], api: FakeApi, status: int, code: str, exc_type: type
) -> None:
    client = make_client(max_retries=0)
    api.get(LIST, err(status, code, "Something went wrong.", headers={"request-id": "req_abc123"}))
    with pytest.raises(exc_type) as info:
        await all_runs(client)
    error = info.value
    assert (error.status, error.code, error.request_id) == (status, code, "req_abc123")
    assert "Something went wrong." in str(error) and "req_abc123" in str(error)


@pytest.mark.parametrize(
    ("body", "snippet"),
    [("<html><h1>502 Bad Gateway</h1></html>", "502 Bad Gateway"), ("", None), ("{broken", "{broken")],
)
async def test_non_json_and_empty_error_bodies(
    make_client: Callable[..., FloraClient], api: FakeApi, body: str, snippet: str | None
) -> None:
    client = make_client(max_retries=0)
    api.get(f"{BASE}/runs/run_1", err(502, body=body))
    with pytest.raises(ServerError) as info:
        await client.get_run("run_1")
    assert info.value.code is None and info.value.status == 502
    assert str(info.value) == "get_run: HTTP 502" + (f": {snippet}" if snippet else "")


async def test_auth_errors_are_never_retried(api: FakeApi, client: FloraClient) -> None:
    for status in (401, 403):
        api.calls.clear()
        api.get(f"{BASE}/runs/run_1", err(status, "invalid_api_key", "no"))
        with pytest.raises(AuthError):
            await client.get_run("run_1")
        assert len(api.calls) == 1
    assert client.stats.retries == 0 and client.stats.outcomes["auth"] == 2


async def test_at_most_two_retries_then_the_error(
    api: FakeApi, client: FloraClient, clock: FakeClock
) -> None:
    api.get(f"{BASE}/runs/run_1", err(500, "internal_error", "boom"))
    with capture_logs() as logs:
        with pytest.raises(ServerError):
            await client.get_run("run_1")
    assert len(api.calls) == 3 and client.stats.retries == 2
    assert len(clock.sleeps) == 2 and clock.sleeps[0] <= 0.5 and clock.sleeps[1] <= 1.0  # full jitter
    assert [e["attempt"] for e in logs if e["event"] == "api.retry_scheduled"] == [1, 2]
    assert [e["outcome"] for e in logs if e["event"] == "api.request_failed"] == ["server_error"]


async def test_transient_failures_then_success(api: FakeApi, client: FloraClient) -> None:
    api.get(
        f"{BASE}/runs/run_1",
        aiohttp.ClientConnectionError("reset"),
        TimeoutError(),
        ok(run("run_1", "completed")),
    )
    assert (await client.get_run("run_1")).status == "completed"
    assert client.stats.outcomes | {} == {
        "ok": 1,
        "network": 2,
        "rate_limited": 0,
        "server_error": 0,
        "auth": 0,
        "not_found": 0,
        "client_error": 0,
        "bad_response": 0,
    }
    assert client.stats.requests == 3 and client.stats.retries == 2


@pytest.mark.parametrize("exc", [aiohttp.ClientConnectionError("Connection refused"), TimeoutError()])
async def test_transport_errors_become_api_unavailable(
    make_client: Callable[..., FloraClient], api: FakeApi, exc: BaseException
) -> None:
    client = make_client(max_retries=0)
    api.get(f"{BASE}/runs/run_1", exc)
    with pytest.raises(ApiUnavailableError) as info:
        await client.get_run("run_1")
    assert info.value.status is None and info.value.__cause__ is None
    assert "http" not in str(info.value)


async def test_a_real_timeout_uses_the_configured_timeout(make_client: Callable[..., FloraClient]) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.Event().wait()  # never answers: only the client's own timeout ends the request
        return web.json_response(run("run_1"))

    app = web.Application()
    app.router.add_get("/api/v1/runs/{run_id}", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        client = make_client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=0.1, max_retries=0)
        with pytest.raises(ApiUnavailableError, match=r"no answer within 0.1s"):
            await asyncio.wait_for(client.get_run("run_1"), 60)  # 60 s: a liveness bound only
        await client.close()
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------------------------------ Retry-After


def http_date(epoch_s: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(epoch_s, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected_wait"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": http_date(EPOCH_MS / 1000 + 9)}, 9.0),
        ({"retry-after-ms": "1500", "Retry-After": "30"}, 1.5),  # retry-after-ms wins
    ],
)
async def test_retry_after_is_honoured_on_5xx(
    api: FakeApi, client: FloraClient, clock: FakeClock, headers: dict[str, str], expected_wait: float
) -> None:
    api.get(f"{BASE}/runs/run_1", err(503, "service_unavailable", "later", headers=headers), ok(run("run_1")))
    await client.get_run("run_1")
    assert clock.sleeps == [pytest.approx(expected_wait)]
    assert api.calls[1].at - api.calls[0].at == pytest.approx(expected_wait)


@pytest.mark.parametrize(
    ("headers", "expected_pause"),
    [
        ({"Retry-After": "4"}, 4.0),
        ({"Retry-After": http_date(EPOCH_MS / 1000 + 6)}, 6.0),
        ({"retry-after-ms": "2500"}, 2.5),
    ],
)
async def test_retry_after_is_honoured_on_429(
    api: FakeApi, client: FloraClient, headers: dict[str, str], expected_pause: float
) -> None:
    api.get(f"{BASE}/runs/run_1", err(429, "rate_limited", "slow down", headers=headers), ok(run("run_1")))
    await client.get_run("run_1")
    assert api.calls[1].at - api.calls[0].at == pytest.approx(expected_pause)
    assert client.stats.rate_limit_wait_seconds == pytest.approx(expected_pause)


async def test_429_without_retry_after_backs_off_from_about_5s(api: FakeApi, client: FloraClient) -> None:
    api.get(
        f"{BASE}/runs/run_1", err(429, "rate_limited", "x"), err(429, "rate_limited", "x"), ok(run("run_1"))
    )
    with capture_logs() as logs:
        await client.get_run("run_1")
    first, second = (api.calls[i + 1].at - api.calls[i].at for i in range(2))
    assert 3.75 <= first <= 5.0 and 7.5 <= second <= 10.0
    assert [e["strikes"] for e in logs if e["event"] == "api.rate_limited"] == [1, 2]
    assert client.limiter.strikes == 0  # reset by the success


async def test_retry_after_beyond_the_cap_is_not_retried(
    make_client: Callable[..., FloraClient], api: FakeApi
) -> None:
    client = make_client(retry_after_cap=10)
    api.get(f"{BASE}/runs/run_1", err(429, "rate_limited", "x", headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimitedError) as info:
        await client.get_run("run_1")
    assert info.value.retry_after == 3600 and len(api.calls) == 1
    assert client.limiter.pause_remaining() == pytest.approx(10)  # the shared pause is capped


async def test_a_429_pauses_a_concurrent_second_request_too(api: FakeApi, client: FloraClient) -> None:
    limited = asyncio.Event()

    def first(call: Call) -> CallbackResult:
        limited.set()
        return err(429, "rate_limited", "x", headers={"Retry-After": "3"})

    api.get(f"{BASE}/runs/run_a", first, ok(run("run_a")))
    api.get(f"{BASE}/runs/run_b", ok(run("run_b")))

    async def second() -> None:
        await limited.wait()
        await client.get_run("run_b")

    await asyncio.gather(client.get_run("run_a"), second())
    sent = {str(c.url.path).rsplit("/", 1)[1]: c.at for c in api.calls[1:]}
    assert api.calls[0].at == 0 and sent["run_b"] >= 3.0 and sent["run_a"] >= 3.0


async def test_the_token_bucket_spaces_sequential_requests(
    make_client: Callable[..., FloraClient], api: FakeApi
) -> None:
    client = make_client(max_rps=2)
    api.get(f"{BASE}/runs/run_1", ok(run("run_1")))
    for _ in range(6):
        await client.get_run("run_1")
    assert [c.at for c in api.calls] == pytest.approx([0, 0, 0.5, 1.0, 1.5, 2.0])
    assert client.stats.throttle_wait_seconds > 0


async def test_the_token_bucket_holds_concurrent_requests_within_max_rps(
    make_client: Callable[..., FloraClient], api: FakeApi
) -> None:
    from watcher.clock import SystemClock

    client = make_client(max_rps=20, clock=SystemClock())
    api.get(f"{BASE}/runs/run_1", ok(run("run_1")))
    started = time.monotonic()
    await asyncio.gather(*(client.get_run("run_1") for _ in range(30)))
    elapsed = time.monotonic() - started
    assert len(api.calls) == 30
    assert elapsed >= (30 - 20) / 20 * 0.9  # burst of 20, then 20 per second


async def test_retries_share_the_token_bucket(
    make_client: Callable[..., FloraClient], api: FakeApi, clock: FakeClock
) -> None:
    client = make_client(max_rps=1, rand=random.Random(0))
    api.get(f"{BASE}/runs/run_1", err(500, "internal_error", "x"), ok(run("run_1")))
    await client.get_run("run_1")
    assert api.calls[1].at - api.calls[0].at >= 1.0  # the retry waited for a token, not only its backoff


# ------------------------------------------------------------------------------------------ redirects


async def test_a_redirect_to_another_origin_is_not_followed(api: FakeApi, client: FloraClient) -> None:
    api.get(f"{BASE}/runs/run_1", respond(302, headers={"Location": "https://evil.example/x"}))
    with pytest.raises(ForeignOriginError) as info:
        await client.get_run("run_1", technique_id=None)
    assert "evil.example" in str(info.value) and info.value.status == 302
    assert api.urls() == [f"{BASE}/runs/run_1"]


async def test_a_same_origin_redirect_is_not_followed_either(api: FakeApi, client: FloraClient) -> None:
    api.get(f"{BASE}/runs/run_1", respond(307, headers={"Location": "/api/v2/runs/run_1"}))
    api.get("https://app.flora.test/api/v2/runs/run_1", ok(run("run_1")))
    with pytest.raises(BadResponseError, match="redirect not followed"):
        await client.get_run("run_1")
    assert len(api.calls) == 1


async def test_a_poll_url_redirecting_away_falls_back_to_api_paths(api: FakeApi, client: FloraClient) -> None:
    poll = f"{BASE}/techniques/t/runs/run_1"
    api.get(poll, respond(301, headers={"Location": "https://cdn.example/run_1"}))
    api.get(f"{BASE}/runs/run_1", ok(run("run_1")))
    assert (await client.get_run("run_1", poll_url=poll)).run_id == "run_1"
    assert api.urls() == [poll, f"{BASE}/runs/run_1"]


@pytest.mark.parametrize("location", ["/api/v1/elsewhere/run_1", None])
async def test_a_poll_url_redirecting_within_the_api_or_nowhere_falls_back_too(
    api: FakeApi, client: FloraClient, location: str | None
) -> None:
    poll = f"{BASE}/techniques/t/runs/run_1"
    api.get(poll, respond(302, headers={"Location": location} if location else {}))
    api.get(f"{BASE}/techniques/tech_1/runs/run_1", ok(run("run_1")))
    assert (await client.get_run("run_1", poll_url=poll, technique_id="tech_1")).run_id == "run_1"
    assert api.urls() == [poll, f"{BASE}/techniques/tech_1/runs/run_1"]


# ------------------------------------------------------------------------------------------ start_run


async def test_start_run_posts_inputs_and_returns_the_run(api: FakeApi, client: FloraClient) -> None:
    api.route(
        "POST",
        f"{BASE}/techniques/cctv-cam/runs",
        ok({"run_id": "run_new", "poll_url": f"{BASE}/techniques/cctv-cam/runs/run_new"}, status=201),
    )
    inputs = [{"id": "prompt", "type": "text", "value": "a cat"}]
    created = await client.start_run("cctv-cam", inputs, mode="async")
    assert (created.run_id, created.status) == ("run_new", "pending")
    assert api.calls[0].json == {"inputs": inputs, "mode": "async"}


async def test_start_run_retries_a_429_but_not_a_5xx_without_idempotency_key(
    api: FakeApi, client: FloraClient
) -> None:
    url = f"{BASE}/techniques/t/runs"
    api.route(
        "POST", url, err(429, "rate_limited", "x", headers={"Retry-After": "1"}), ok(run("run_1", "pending"))
    )
    await client.start_run("t", [])
    assert len(api.calls) == 2
    api.calls.clear()
    api.route("POST", url, err(500, "internal_error", "x"), ok(run("run_2", "pending")))
    with pytest.raises(ServerError):
        await client.start_run("t", [])
    assert len(api.calls) == 1
    api.calls.clear()
    api.route("POST", url, err(500, "internal_error", "x"), ok(run("run_3", "pending")))
    assert (await client.start_run("t", [], idempotency_key="k1")).run_id == "run_3"
    assert len(api.calls) == 2


# ------------------------------------------------------------------------------------------ stats, hooks


async def test_stats_and_request_hook_see_every_attempt(
    make_client: Callable[..., FloraClient], api: FakeApi, clock: FakeClock
) -> None:
    seen: list[tuple[str, str]] = []
    client = make_client(on_request=lambda route, outcome, seconds: seen.append((route, outcome)))
    api.get(LIST, err(503, "service_unavailable", "x"), page([run("run_1")]))
    api.get(f"{BASE}/runs/run_1", err(404, "not_found", "x"))
    await all_runs(client)
    with pytest.raises(NotFoundError):
        await client.get_run("run_1")
    assert seen == [("list", "server_error"), ("list", "ok"), ("get_run", "not_found")]
    snap = client.stats.snapshot()
    assert snap["requests"] == 3 and snap["retries"] == 1
    assert snap["outcomes"]["ok"] == 1 and snap["outcomes"]["not_found"] == 1
    assert snap["last_success_ms"] is not None and snap["last_failure_ms"] >= snap["last_success_ms"]
    assert "not_found" in snap["last_error"]


async def test_a_failing_hook_does_not_break_requests(
    make_client: Callable[..., FloraClient], api: FakeApi
) -> None:
    def broken(route: str, outcome: str, seconds: float) -> None:
        raise RuntimeError("metrics down")

    client = make_client(on_request=broken)
    api.get(f"{BASE}/runs/run_1", ok(run("run_1")))
    with capture_logs() as logs:
        assert (await client.get_run("run_1")).run_id == "run_1"
    assert any(e["event"] == "api.request_hook_failed" for e in logs)


async def test_no_key_means_no_authorization_header(
    make_client: Callable[..., FloraClient], api: FakeApi
) -> None:
    client = make_client(api_key=None)
    api.get(f"{BASE}/runs/run_1", ok(run("run_1")))
    await client.get_run("run_1")
    assert "authorization" not in api.calls[0].headers


async def test_context_manager_opens_and_closes_the_session(api: FakeApi, clock: FakeClock) -> None:
    api.get(f"{BASE}/runs/run_1", ok(run("run_1")))
    async with FloraClient(BASE, Secret(KEY), clock=clock) as client:
        await client.get_run("run_1")
        session = client._session
    assert session is not None and session.closed
    assert "sk_live" not in repr(client)


def test_base_url_must_be_absolute_http() -> None:
    with pytest.raises(ValueError):
        FloraClient("app.flora.ai/api/v1", None)
