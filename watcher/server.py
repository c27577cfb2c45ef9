"""The optional HTTP endpoint for operations (``[server] listen``): ``/metrics``, ``/healthz``, ``/readyz``, the
status page ``/`` and its JSON ``/api/v1/status``.

Shell module (aiohttp.web). ``/metrics`` is the Prometheus exposition of ``Metrics.registry`` (text format, or
OpenMetrics when the scraper asks for it). ``/healthz`` answers 200 while the process serves requests at all.
``/readyz`` answers 200 while a sweep succeeded recently (``HealthSource.ready_after`` seconds, by default
three sweep intervals) and 503 with a one-line reason otherwise. There is no authentication: listen on
loopback (the default) or put the endpoint behind something that has it.

The status page is read-only: one HTML page, one CSS file and one script (``watcher/web/``), all served from
here; the script polls ``/api/v1/status`` and builds the DOM with ``textContent`` only. Every response carries
a strict Content-Security-Policy (no inline script, images from ``https:`` for thumbnails), ``nosniff`` and
``Referrer-Policy: no-referrer``. While bound to loopback, the page and its JSON answer only requests whose
``Host`` is a loopback name, so a web page elsewhere cannot read them through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from watcher import __version__
from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import parse_listen
from watcher.errors import StoreError, WatcherError
from watcher.logs import redact
from watcher.metrics import Metrics
from watcher.model import Run
from watcher.observer import Observer, Report, State
from watcher.readiness import SWEEPER, Facts, Readiness, decide
from watcher.store_api import StateStore
from watcher.web import status as page_data

log = structlog.get_logger("watcher.server")


def _value(source: Any) -> Any:
    return source() if callable(source) else source


@dataclass
class HealthSource:
    """What ``/readyz`` looks at (the decision itself is ``watcher.readiness.decide``). The daemon owns one: its
    ``HealthObserver`` updates the sweep fields after every sweep and ``stopping`` at shutdown; the fields that
    change on their own (the role, the state store, the supervised tasks down, the lease heartbeat) are
    functions the daemon hands in.

    ``last_sweep_ok_ms``: wall-clock ms of the last successful sweep (None: none yet), or a function returning
    it. ``last_error``: a short, secret-free reason of the last failed sweep. ``ready_after``: seconds a
    successful sweep counts for (default: 3 x ``interval``). ``stopping``: set at shutdown so load balancers
    drain first. ``role``: ``sweeper`` (the default: a SQLite store's only instance), ``standby`` or
    ``starting``. ``store_error``: why the state store does not answer (None: it does). ``tasks_down``:
    supervised task name -> why it is down. ``last_heartbeat_ok_ms`` and ``heartbeat_window``: a standby's last
    successful lease tick and how old it may be (the lease).
    """

    interval: float
    clock: Clock = SYSTEM_CLOCK
    last_sweep_ok_ms: int | Callable[[], int | None] | None = None
    last_error: str | None = None
    ready_after: float | None = None
    stopping: bool = False
    role: str | Callable[[], str] = SWEEPER
    store_error: str | Callable[[], str | None] | None = None
    tasks_down: Mapping[str, str] | Callable[[], Mapping[str, str]] = field(default_factory=dict)
    last_heartbeat_ok_ms: int | Callable[[], int | None] | None = None
    heartbeat_window: float = 15.0

    def sweep_ok(self, now_ms: int) -> None:
        self.last_sweep_ok_ms = now_ms
        self.last_error = None

    def sweep_failed(self, reason: str) -> None:
        self.last_error = reason

    def status(self) -> Readiness:
        return decide(Facts(
            now_ms=self.clock.now_ms(), role=_value(self.role), stopping=self.stopping,
            store_error=_value(self.store_error), tasks_down=_value(self.tasks_down),
            last_sweep_ok_ms=_value(self.last_sweep_ok_ms), last_sweep_error=self.last_error,
            sweep_window_s=self.ready_after if self.ready_after is not None else 3 * self.interval,
            last_heartbeat_ok_ms=_value(self.last_heartbeat_ok_ms), heartbeat_window_s=self.heartbeat_window,
        ))

    def readiness(self) -> tuple[bool, str]:
        """(ready, the ``/readyz`` line)."""
        status = self.status()
        return status.ready, status.line()


class Server:
    """A running endpoint. ``host``/``port`` are what it is bound to (the real port when 0 was asked).

    It accepts connections from the moment ``start_server`` returns; ``serve()`` is the daemon's supervised
    task ``http-server``: it waits on the listening socket and ends (a crash, restarted by the supervisor)
    if the socket is closed under it; a restart binds the same address again."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, listener: asyncio.Server) -> None:
        self._runner = runner
        self._listener = listener
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def serving(self) -> bool:
        return self._listener.is_serving()

    async def serve(self) -> None:
        """Accept connections until cancelled (binding the address again first if the socket was closed)."""
        if not self._listener.is_serving():
            self._listener = await _listen(self._runner, self.host, self.port)
            log.info("server.listening", url=self.url, again=True)
        await self._listener.serve_forever()

    async def close(self) -> None:
        self._listener.close()
        await self._runner.cleanup()  # ends the open connections too
        await self._listener.wait_closed()


async def _listen(runner: web.AppRunner, host: str, port: int) -> asyncio.Server:
    assert runner.server is not None
    return await asyncio.get_running_loop().create_server(runner.server, host, port, reuse_address=True)


# ------------------------------------------------------------------------------------------ status page

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATUS_CACHE_S = 0.5  # one store read serves every open page for this long
FAILURES_CACHE_S = 30.0  # the failure counts (a scan of the last hour's failures) are re-read at least this often
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


class StatusPage(Observer):
    """Builds the ``/api/v1/status`` document, at most every ``STATUS_CACHE_S`` seconds however many pages poll.

    An observer of the daemon (``watcher.observer``): each sweep report hands it the active runs (kept as a
    list of ``Run`` values, never the daemon's own mapping) and clears the cache, so the next poll shows what
    the sweep found; deliveries do not clear it (there can be thousands a second), so their counters are at
    most ``cache_s`` old. Until this instance has swept (at startup, or on a standby instance
    while another one holds the sweeper lease) the active runs come from the store's tracked runs instead.
    Events, failure counts and sink counters always come from the store; ``sink_types`` gives the configured
    sinks' names and types (never a URL).
    """

    def __init__(self, store: StateStore | None, *, sink_types: Callable[[], Mapping[str, str]],
                 clock: Clock = SYSTEM_CLOCK, health: HealthSource | None = None,
                 cache_s: float = STATUS_CACHE_S) -> None:
        self.store = store  # list_events, ...; None until the daemon's state store is open
        self.sink_types = sink_types
        self.clock = clock
        self.health = health
        self.cache_s = cache_s
        self._runs: list[Run] | None = None  # None: read the tracked runs from the store
        self._cached: tuple[float, bytes] | None = None
        self._failures: tuple[float, dict[str | None, int]] | None = None  # re-read after a sweep with failures
        self._lock = asyncio.Lock()
        self.ingress: Callable[[], Mapping[str, Any]] | None = None  # [ingress]'s counters (push.Push.status)

    # ------------------------------------------------------------------------------- the observer

    def on_sweep(self, report: Report) -> None:
        if report.sweep is not None:
            self._runs = [t.run for t in report.runs.values() if not t.terminal]
            if report.sweep.events:  # a new failure (or a retried commit): count again
                self._failures = None
        else:  # a standby: another instance stores the events
            self._failures = None
        self.invalidate()

    def on_state(self, state: State, report: Report) -> None:
        self.invalidate()  # a reload may change the sinks

    def invalidate(self) -> None:
        self._cached = None

    # ------------------------------------------------------------------------------- the document

    async def _active_runs(self, store: StateStore) -> list[Run]:
        if self._runs is not None:
            return self._runs
        tracked = await store.load_tracked()
        return [t.run for t in tracked.values() if not t.terminal]

    async def document(self) -> dict[str, Any]:
        store = self.store
        if store is None:
            raise StoreError("the state store is not open yet")
        now = self.clock.now_ms()
        runs = await self._active_runs(store)
        stored = await store.list_events(limit=page_data.RECENT_EVENTS)
        failures = await self._failure_counts(store, now)
        counts = await store.delivery_counts()
        states = await store.sink_states()
        sinks = page_data.sinks(dict(self.sink_types()), counts, states, redact)
        return page_data.build(
            now_ms=now, version=__version__, runs=runs, events=[event for _, event in reversed(stored)],
            failures=failures, sinks_=sinks, ready=self.health.status() if self.health is not None else None,
            ingress_=self.ingress() if self.ingress is not None else None,
        )

    async def _failure_counts(self, store: StateStore, now_ms: int) -> dict[str | None, int]:
        cached = self._failures
        if cached is None or self.clock.monotonic() - cached[0] >= FAILURES_CACHE_S:
            counts = await store.failure_counts(since_ms=now_ms - page_data.FAILURE_WINDOW_MS)
            cached = self._failures = (self.clock.monotonic(), counts)
        return cached[1]

    async def body(self) -> bytes:
        """The document as JSON bytes, from the cache while it is fresh."""
        async with self._lock:
            cached = self._cached
            if cached is not None and self.clock.monotonic() - cached[0] < self.cache_s:
                return cached[1]
            body = json.dumps(await self.document(), ensure_ascii=False, separators=(",", ":")).encode()
            self._cached = (self.clock.monotonic(), body)
            return body


def _asset(name: str) -> str:
    return resources.files("watcher.web").joinpath(name).read_text(encoding="utf-8")


def _host_of(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_loopback_host(host_header: str | None) -> bool:
    """Whether a ``Host`` header names this machine's loopback (a name, an IPv4 or IPv6 address)."""
    if not host_header:
        return False
    host = _host_of(host_header)
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bound_to_loopback(bound_host: str | None) -> bool:
    try:
        return bound_host is not None and ipaddress.ip_address(bound_host).is_loopback
    except ValueError:
        return bound_host in LOOPBACK_NAMES


def make_app(metrics: Metrics, health: HealthSource, status: StatusPage | None = None, *,
             bound_host: str | None = None) -> web.Application:
    async def metrics_handler(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(metrics.registry), headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        ready, reason = health.readiness()
        return web.Response(text=reason + "\n", status=200 if ready else 503)

    async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)

    app = web.Application()
    app.on_response_prepare.append(security_headers)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if status is not None:
        _add_status_routes(app, status, check_host=_bound_to_loopback(bound_host))
    return app


def _add_status_routes(app: web.Application, status: StatusPage, *, check_host: bool) -> None:
    page = Template(_asset("index.html")).substitute(version=__version__).encode()  # no API text in it
    css = _asset("status.css").encode()
    js = _asset("status.js").encode()

    def refuse_foreign_host(request: web.Request) -> web.Response | None:
        if check_host and not is_loopback_host(request.headers.get("Host")):
            return web.Response(status=421, text="this page answers on a loopback address only\n")
        return None

    async def index(request: web.Request) -> web.Response:
        refused = refuse_foreign_host(request)
        if refused is not None:
            return refused
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def status_json(request: web.Request) -> web.Response:
        refused = refuse_foreign_host(request)
        if refused is not None:
            return refused
        try:
            body = await status.body()
        except StoreError as exc:
            log.debug("server.status_unavailable", error=str(exc))  # the store.* lines tell an outage
            ready = page_data.readiness(status.health.status() if status.health is not None else None)
            return web.json_response({"error": "the state store cannot be read right now", "ready": ready},
                                     status=503, headers={"Cache-Control": "no-store"})
        return web.Response(body=body, content_type="application/json", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    def asset(body: bytes, content_type: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=content_type, charset="utf-8",
                                headers={"Cache-Control": "no-cache"})
        return handler

    async def no_favicon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app.router.add_get("/", index)
    app.router.add_get("/api/v1/status", status_json)
    app.router.add_get("/static/status.css", asset(css, "text/css"))
    app.router.add_get("/static/status.js", asset(js, "text/javascript"))
    app.router.add_get("/favicon.ico", no_favicon)


async def start_server(listen: str, metrics: Metrics, health: HealthSource,
                       status: StatusPage | None = None) -> Server:
    """Serve ``/metrics``, ``/healthz``, ``/readyz`` (and, given ``status``, the status page and its JSON) on
    ``listen`` until ``await server.close()``.

    Raises ConfigError for a malformed ``listen`` and WatcherError when the address cannot be bound.
    """
    host, port = parse_listen(listen)
    runner = web.AppRunner(make_app(metrics, health, status, bound_host=host), access_log=None,
                           handle_signals=False)
    await runner.setup()
    try:
        listener = await _listen(runner, host, port)
    except OSError as exc:
        await runner.cleanup()
        raise WatcherError(f"server.listen: cannot listen on {listen}: {exc.strerror or exc}") from None
    bound_host, bound_port = listener.sockets[0].getsockname()[:2]
    server = Server(runner, bound_host, bound_port, listener)
    log.info("server.listening", url=server.url)
    return server
