"""The status page in a real browser: Debian's chromium driven by playwright (no browser download).

One stack per session: the FLORA simulator on a manual clock and an HTTPS thumbnail server (self-signed, on
loopback) run on an asyncio loop in a background thread; ``flora-watcher run`` is a real subprocess watching
the simulator, with ``[server] listen`` on loopback; one chromium serves every test. Tests drive the
simulator's clock instead of waiting for runs to progress in wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.needs import unavailable
from watcher.simulator import Simulator, run_simulator
from watcher.simulator import scenario as sc

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
KEY = "sk_test_browser_0123456789"
INGRESS_SECRET = "whsec_browser_CANARY_0123456789"
INTERVAL = 0.2  # [watch] interval of the watcher under test


def _browser_available() -> None:
    if Path(CHROMIUM).exists():
        return
    unavailable(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does this)")


def tiny_png(seed: str = "", size: int = 48) -> bytes:
    """A small PNG with a diagonal two-colour gradient picked from ``seed``, made here (no image library)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    h = zlib.crc32(seed.encode())
    a = ((h >> 16) & 0xFF, (h >> 8) & 0xFF, h & 0xFF)
    b = (255 - a[1], a[2] // 2 + 64, 255 - a[0])
    rows = b""
    for y in range(size):
        row = bytearray(b"\x00")
        for x in range(size):
            t = (x + y) / (2 * size - 2)
            row += bytes(round(a[i] + (b[i] - a[i]) * t) for i in range(3))
        rows += bytes(row)
    header = size.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


class ManualClock:
    """The simulator's clock: real time plus an offset that tests move forward (``Stack.advance``), so a run
    ends when a test says so, and a run created now is newer than the watcher's first start."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


class Stack:
    """The simulator and the thumbnail server on a background loop, and the watcher subprocess."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = ManualClock()
        self.sim = Simulator(api_key=KEY, seed=11, clock=self.clock, fail_ratio=0.0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="browser-stack", daemon=True)
        self.thumb_hits: list[str] = []
        self._exit = contextlib.AsyncExitStack()
        self.proc: subprocess.Popen[bytes] | None = None
        self.page_url = ""

    # --------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.thread.start()
        self.call(self._start_servers(self._self_signed()))
        self.proc = self._spawn_watcher()
        self.page_url = self._wait_listening()
        self.wait_for(lambda: self.meta("last_sweep_ok_ms"), "the watcher's first successful sweep")

    async def _start_servers(self, tls: ssl.SSLContext) -> None:
        running = await self._exit.enter_async_context(run_simulator(sim=self.sim))
        self.api_base = running.base_url
        self.thumb_origin = await self._start_thumbs(tls)

    def _self_signed(self) -> ssl.SSLContext:
        """A TLS context with a fresh self-signed certificate for 127.0.0.1 (openssl)."""
        cert, key = self.tmp / "thumb.crt", self.tmp / "thumb.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        return tls

    async def _start_thumbs(self, tls: ssl.SSLContext) -> str:
        async def thumb(request: web.Request) -> web.Response:
            self.thumb_hits.append(request.path)
            return web.Response(body=tiny_png(request.path), content_type="image/png")

        app = web.Application()
        app.router.add_get("/{name:.*}", thumb)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._exit.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        return f"https://127.0.0.1:{runner.addresses[0][1]}"

    def _spawn_watcher(self) -> subprocess.Popen[bytes]:
        state = self.tmp / "state"
        config = self.tmp / "flora-watcher.toml"
        config.write_text(f"""
[api]
base_url = "{self.api_base}"
api_key = "{KEY}"
timeout = 2

[watch]
interval = {INTERVAL}
state_dir = "{state}"

[server]
listen = "127.0.0.1:0"

[ingress]
listen = "127.0.0.1:0"
signing_secret = "{INGRESS_SECRET}"

[[sinks]]
name = "journal"
type = "file"
path = "{self.tmp / 'events.jsonl'}"

[[sinks]]
name = "ops-webhook"
type = "webhook"
url = "http://127.0.0.1:9/hooks/secret-path-0123"
events = ["run.failed"]
""")
        self.log_path = self.tmp / "watcher.log"
        self.state_db = state / "state.sqlite3"
        exe = Path(sys.executable).with_name("flora-watcher")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLORA_")}
        with open(self.log_path, "wb") as log:
            return subprocess.Popen([str(exe), "--log-format", "json", "run", "-c", str(config)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def ingress_url(self) -> str:
        """The watcher's ingress (its ``ingress.listening`` log line)."""
        port = self.wait_for(lambda: next((e["port"] for e in self.logs() if e.get("event") == "ingress.listening"),
                                          None), "the watcher's ingress.listening log line")
        return f"http://127.0.0.1:{port}/flora/callbacks"

    def _wait_listening(self) -> str:
        def url() -> str | None:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            return next((e["url"] for e in self.logs() if e.get("event") == "server.listening"), None)

        return self.wait_for(url, "the watcher's server.listening log line") + "/"

    def meta(self, key: str) -> str | None:
        import sqlite3

        if not self.state_db.exists():
            return None
        conn = sqlite3.connect(f"file:{self.state_db}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        finally:
            conn.close()
        return row[0] if row else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.thread.is_alive():
            self.call(self._exit.aclose())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()  # its self-pipe is a socket pair: left open, its ResourceWarning failed a later test

    # --------------------------------------------------------------------------------- driving

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(30)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()
        return self.call(run())

    @staticmethod
    def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
        """Poll ``predicate`` until it holds; ``timeout`` is a liveness bound only (a busy machine)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def advance(self, ms: int) -> None:
        """Move the simulator's clock (runs progress, finish or fail at once)."""
        def move() -> None:
            self.clock.offset_ms += ms
            self.sim.now_ms()
        self.on_loop(move)

    def add_run(self, *, technique: str = "cctv-cam", name: str | None = None, outcome: str = "completed",
                pending_ms: int = 0, running_ms: int = 1_000, error_code: str | None = None,
                error_message: str | None = None, project_id: str = "prj_sim1alpha",
                created_at: int | None = None, outputs: tuple[tuple[str, str, str], ...] | None = None) -> str:
        """A run in the simulator whose outputs (if any) live on the loopback thumbnail server, and whose
        technique name and error message may be set to anything (hostile text included)."""
        def add() -> str:
            info = sc.TECHNIQUES_BY_KEY[technique]
            if name is not None:
                info = dataclasses.replace(info, name=name)
            now = self.sim.now_ms()
            run = sc.build_run(
                self.sim._rng, seq=self.sim.scenario.next_seq, now_ms=now, technique=info, project_id=project_id,
                workspace_id=sc.WORKSPACE_ID, created_at=created_at, pending_ms=pending_ms, running_ms=running_ms,
                outcome=outcome, fail_ratio=0.0, error_code=error_code, poll_url=None,
            )
            if error_message is not None:
                run = dataclasses.replace(run, error_message=error_message)
            if outcome == "completed":
                own = outputs
                if own is None:
                    ext = {"imageUrl": "png", "videoUrl": "mp4", "audioUrl": "mp3"}.get(info.output_type)
                    own = tuple(
                        (oid, kind, f"{self.thumb_origin}/{run.run_id}/{oid}.{ext}" if ext else url)
                        for oid, kind, url in run.outputs
                    )
                run = dataclasses.replace(run, outputs=own)
            self.sim.scenario.add(run)
            self.sim.scenario.advance(now, self.sim._rng)
            return run.run_id
        return self.on_loop(add)

    def wait_swept(self) -> None:
        """Wait until the watcher finished a sweep that started after now (it saw the simulator's present)."""
        before = int(self.meta("last_sweep_ms") or 0)
        self.wait_for(lambda: int(self.meta("last_sweep_ms") or 0) > before + 1, "a new sweep")


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _browser_available()
    s = Stack(tmp_path_factory.mktemp("browser-stack"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One chromium for all of tests/browser. Package-scoped, not session-scoped: playwright's sync API keeps an
    event loop running on this thread while it is open, which the asyncio tests elsewhere cannot share."""
    _browser_available()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_page(browser: Any, stack: Stack) -> Iterator[Callable[..., Any]]:
    """``open_page(color_scheme="light", viewport=...)`` → (page, requests seen). Every request the page makes
    is recorded; any outside loopback and the thumbnail origin is refused (and fails the test)."""
    contexts = []

    def open_(color_scheme: str = "light", viewport: dict[str, int] | None = None) -> tuple[Any, list[str]]:
        context = browser.new_context(
            ignore_https_errors=True,  # the thumbnail server's certificate is self-signed
            color_scheme=color_scheme,
            viewport=viewport or {"width": 1200, "height": 900},
            service_workers="block",
        )
        contexts.append(context)
        seen: list[str] = []

        def route(r: Any) -> None:
            seen.append(r.request.url)
            allowed = r.request.url.startswith((stack.page_url, stack.thumb_origin + "/"))
            if allowed:
                r.continue_()
            else:
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.goto(stack.page_url)
        return page, seen

    yield open_
    for context in contexts:
        context.close()

