"""The optional HTTP endpoint for operations: ``/metrics``, ``/healthz``, ``/readyz`` (``[server] listen``).

Shell module (aiohttp.web). ``/metrics`` is the Prometheus exposition of ``Metrics.registry`` (text format, or
OpenMetrics when the scraper asks for it). ``/healthz`` answers 200 while the process serves requests at all.
``/readyz`` answers 200 while a sweep succeeded recently (``HealthSource.ready_after`` seconds, by default
three sweep intervals) and 503 with a one-line reason otherwise. There is no authentication: listen on
loopback (the default) or put the endpoint behind something that has it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.errors import ConfigError, WatcherError
from watcher.metrics import Metrics

log = structlog.get_logger("watcher.server")


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` → (host, port). IPv6 hosts go in brackets (``"[::1]:9464"``); port 0 picks a free port.

    Raises ConfigError (key ``server.listen``) with a one-line reason.
    """
    text = listen.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError("server.listen", f"expected [IPv6]:port, got {listen!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError("server.listen", f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError("server.listen", f"expected host:port, got {listen!r}")
        if ":" in host:
            raise ConfigError("server.listen", f"IPv6 needs brackets, e.g. [::1]:9464 (got {listen!r})")
    if not host:
        raise ConfigError("server.listen", f"a host is required, e.g. 127.0.0.1:9464 (got {listen!r})")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError("server.listen", f"port must be 0-65535, got {port_text!r}")
    return host, int(port_text)


def readiness(
    now_ms: int, last_ok_ms: int | None, ready_after_s: float, *, stopping: bool = False,
    last_error: str | None = None,
) -> tuple[bool, str]:
    """Pure: (ready, one-line reason) from the time of the last successful sweep."""
    if stopping:
        return False, "shutting down"
    if last_ok_ms is None:
        reason = "no successful sweep yet"
        return False, f"{reason}: {last_error}" if last_error else reason
    age_s = max(0, now_ms - last_ok_ms) / 1000
    if age_s > ready_after_s:
        reason = f"last successful sweep {age_s:.0f}s ago (limit {ready_after_s:g}s)"
        return False, f"{reason}: {last_error}" if last_error else reason
    return True, f"ok: last successful sweep {age_s:.1f}s ago"


@dataclass
class HealthSource:
    """What ``/readyz`` looks at. The daemon owns one and updates it after every sweep.

    ``last_sweep_ok_ms``: wall-clock ms of the last successful sweep (None: none yet), or a function
    returning it (so the daemon can hand in ``lambda: self.last_sweep_ok_ms``). ``last_error``: a
    short, secret-free reason of the last failed sweep, shown in the 503 body. ``ready_after``: seconds a
    successful sweep counts for (default: 3 x ``interval``). ``stopping``: set at shutdown so load balancers
    drain first.
    """

    interval: float
    clock: Clock = SYSTEM_CLOCK
    last_sweep_ok_ms: int | Callable[[], int | None] | None = None
    last_error: str | None = None
    ready_after: float | None = None
    stopping: bool = False

    def sweep_ok(self, now_ms: int) -> None:
        self.last_sweep_ok_ms = now_ms
        self.last_error = None

    def sweep_failed(self, reason: str) -> None:
        self.last_error = reason

    def readiness(self) -> tuple[bool, str]:
        window = self.ready_after if self.ready_after is not None else 3 * self.interval
        last_ok = self.last_sweep_ok_ms() if callable(self.last_sweep_ok_ms) else self.last_sweep_ok_ms
        return readiness(self.clock.now_ms(), last_ok, window, stopping=self.stopping, last_error=self.last_error)


class Server:
    """A running endpoint. ``host``/``port`` are what it is bound to (the real port when 0 was asked)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()


def make_app(metrics: Metrics, health: HealthSource) -> web.Application:
    async def metrics_handler(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(metrics.registry), headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        ready, reason = health.readiness()
        return web.Response(text=reason + "\n", status=200 if ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_server(listen: str, metrics: Metrics, health: HealthSource) -> Server:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``listen`` until ``await server.close()``.

    Raises ConfigError for a malformed ``listen`` and WatcherError when the address cannot be bound.
    """
    host, port = parse_listen(listen)
    runner = web.AppRunner(make_app(metrics, health), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise WatcherError(f"server.listen: cannot listen on {listen}: {exc.strerror or exc}") from None
    bound_host, bound_port = runner.addresses[0][:2]
    server = Server(runner, bound_host, bound_port)
    log.info("server.listening", url=server.url)
    return server
