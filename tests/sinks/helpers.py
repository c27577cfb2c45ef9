"""Helpers for sink tests: a real HTTP receiver on 127.0.0.1, events, a fake clock."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from watcher.model import Event, event_id


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    """An aiohttp server on 127.0.0.1:<free port>. Records every request; answers from a queue of
    ``Answer``s (then ``default``)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answers: list[Answer] = []
        self.default = Answer()
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, status: int = 200, body: bytes | str = b"ok", headers: dict[str, str] | None = None,
               delay: float = 0.0) -> None:
        raw = body.encode() if isinstance(body, str) else body
        self.answers.append(Answer(status, raw, headers or {}, delay))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Received(request.method, request.path, dict(request.query),
                                      dict(request.headers), body))
        answer = self.answers.pop(0) if self.answers else self.default
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_event(event_type: str = "run.failed", **overrides: Any) -> Event:
    """The CONTRACT §4 example event, with ``data`` fields overridden."""
    run_id = overrides.pop("run_id", "run_abc123")
    failed = event_type == "run.failed"
    data: dict[str, Any] = {
        "run_id": run_id, "run_type": "technique",
        "workspace_id": "ws_abc123", "project_id": "prj_abc123",
        "technique": {"technique_id": "tech_abcd1234", "name": "CCTV Cam"},
        "status": {"run.completed": "completed", "run.failed": "failed"}.get(event_type, "running"),
        "previous_status": "running",
        "error_code": "GPU_PROVIDER_ERROR" if failed else None,
        "error_message": "The provider failed to complete the generation." if failed else None,
        "progress": 100, "charged_cost": 0.05,
        "created_at": 1764399990000, "started_at": 1764399991000, "completed_at": 1764400000000,
        "outputs": [{"output_id": "output_1", "type": "imageUrl", "url": "https://media.flora.ai/output.png"}],
        "poll_url": f"https://app.flora.ai/api/v1/techniques/cctv-cam/runs/{run_id}",
        "late": False,
    }
    data.update(overrides)
    return Event(id=event_id(run_id, event_type), type=event_type, created_at=1764400000123, data=data)


HOSTILE_TECHNIQUE = "*bold* _it_ ~s~ `code` [x](https://evil.example) <!channel> @everyone @here <users/all> # h"
HOSTILE_MESSAGE = ("<!channel> @everyone <@123> <users/all> **boom** " * 20 + "x" * 10_000)[:10_000]


def hostile_event(event_type: str = "run.failed") -> Event:
    return make_event(event_type, technique={"technique_id": "tech_x", "name": HOSTILE_TECHNIQUE},
                      error_message=HOSTILE_MESSAGE, error_code="GPU_*ERROR*")


class ThreadedReceiver:
    """A ``Receiver`` running on its own event loop in a thread, for code that calls ``asyncio.run``
    itself (the CLI)."""

    def __init__(self) -> None:
        import threading

        self.receiver = Receiver()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self._loop).result(10)
        return self.receiver

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
