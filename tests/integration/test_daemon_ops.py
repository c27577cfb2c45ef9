"""Operating a real `flora-watcher run` (``python -m watcher``, a subprocess) against the simulator on loopback:
what systemd, a metrics scraper and an operator sending signals see (CONTRACT §2, §6).

The test plays systemd's part of sd_notify with an abstract AF_UNIX datagram socket (``NOTIFY_SOCKET=@name``,
``WATCHDOG_USEC`` small, ``WATCHDOG_PID`` unset), reads the daemon's JSON log lines from a file, and writes the
config the daemon loads. Intervals are 0.2 s. The stalled-API scenario waits out the daemon's wedge period
(``2 x api.timeout + 5`` s here) in real time, since the API timeouts it needs are real; the wedged-loop scenario
runs in-process on a manual clock. Nothing asserts how fast a busy machine ran: only what the daemon decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from watcher import __version__
from watcher.liveview import live_runs
from watcher.model import Run, TrackedRun, event_id
from watcher.store import Store, store_path

KEY = "sk_test_ops_key_0123456789"
SIM_SEED = 21
WATCHDOG_USEC = 400_000  # the daemon pings every 0.2 s
PING_EVERY = WATCHDOG_USEC / 2 / 1e6
INTERVAL = 0.2  # [watch] interval
API_TIMEOUT = 0.3  # [api] timeout in the watchdog scenarios
WEDGED_AFTER = max(2 * PING_EVERY, 3 * INTERVAL, 2 * API_TIMEOUT + 5)  # as the daemon computes it
STOP_TIMEOUT = 30.0  # systemd/flora-watcher.service's TimeoutStopSec: the exit the contract asks for
LIVENESS = 60.0  # only a bound for a hung test: a healthy run meets every condition long before, and nothing asserted
# depends on how long it took (this machine may be busy with other work)
HTTP_TIMEOUT = 30.0  # one request to the daemon's server: a liveness bound as well


# ----------------------------------------------------------------------------------------------- helpers


class NotifySocket:
    """systemd's end of sd_notify: an abstract-namespace datagram socket recording every message in order."""

    def __init__(self) -> None:
        self.name = f"flora-watcher-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    @property
    def address(self) -> str:
        return "@" + self.name

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def index(self, key: str, value: str | None = None) -> list[int]:
        """Positions of the messages carrying ``key`` (with ``value``)."""
        return [i for i, (_, f) in enumerate(self.messages) if key in f and (value is None or f[key] == value)]

    def times(self, key: str) -> list[float]:
        return [self.messages[i][0] for i in self.index(key)]

    def values(self, key: str) -> list[str]:
        return [self.messages[i][1][key] for i in self.index(key)]

    async def wait_for(self, key: str, value: str | None = None, *, count: int = 1, timeout: float = LIVENESS) -> None:
        await until(lambda: len(self.index(key, value)) >= count, timeout, f"{count} x {key}={value} via sd_notify")

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(every)


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def config_text(base_url: str, tmp: Path, *, sinks: list[Mapping[str, Any]], listen: str | None = None,
                api_timeout: float = 5.0, shutdown_grace: float = 2.0, watch_extra: str = "") -> str:
    lines = [
        "[api]", f"base_url = {toml_value(base_url)}", f"api_key = {toml_value(KEY)}", f"timeout = {api_timeout}",
        "max_rps = 200",
        "[watch]", f"interval = {INTERVAL}", f"state_dir = {toml_value(str(tmp / 'state'))}", "poll_max_interval = 1",
        watch_extra,
        "[delivery]", f"shutdown_grace = {shutdown_grace}",
    ]
    if listen:
        lines += ["[server]", f"listen = {toml_value(listen)}"]
    for sink in sinks:
        lines += ["[[sinks]]", *(f"{k} = {toml_value(v)}" for k, v in sink.items())]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    """A loopback port that was free a moment ago: the child must bind it itself, so port 0 will not do."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def run_ids(path: Path) -> set[str]:
    return {e["data"]["run_id"] for e in read_jsonl(path)}


class Watcher:
    """One `flora-watcher --log-format json run -c CFG` child; its stdout and stderr go to ``log_path``."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @classmethod
    async def start(cls, cfg: Path, log_path: Path, *, notify: NotifySocket | None = None,
                    code: str | None = None) -> Watcher:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FLORA_WATCHER_CONFIG")}
        env["PYTHONUNBUFFERED"] = "1"
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify.address
            env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
        program = ["-c", code] if code else ["-m", "watcher"]
        with open(log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *program, "--log-format", "json", "--log-level", "debug", "run", "-c", str(cfg),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )
        return cls(proc, log_path)

    def logs(self, event: str | None = None) -> list[dict]:
        lines = read_jsonl(self.log_path)
        return [rec for rec in lines if event is None or rec.get("event") == event]

    async def wait_log(self, event: str, *, count: int = 1, timeout: float = LIVENESS) -> dict:
        await until(lambda: len(self.logs(event)) >= count, timeout, f"log event {event}")
        return self.logs(event)[count - 1]

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def spawn(tmp_path: Path):
    """Starts watchers; kills any still running when the test ends (a failed assertion must not leak one)."""
    started: list[Watcher] = []

    async def start(cfg: Path, **kwargs: Any) -> Watcher:
        watcher = await Watcher.start(cfg, tmp_path / "watcher.log", **kwargs)
        started.append(watcher)
        return watcher

    try:
        yield start
    finally:
        for watcher in started:
            await watcher.kill()


@pytest.fixture
async def notify():
    ns = NotifySocket()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
async def http():
    # Each request's bound is a liveness bound too: with both cores busy the child can take seconds to answer a
    # request (a 2 s bound failed the metrics test with a bare TimeoutError at load 20-40). A daemon that never
    # answers still fails the test, after HTTP_TIMEOUT.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.text()


async def wait_ready(http: aiohttp.ClientSession, base: str, timeout: float = LIVENESS) -> str:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):  # not listening yet, or slow to answer
            last = await get(http, base + "/readyz")
            if last[0] == 200:
                return last[1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never answered 200 (last: {last})")


def create_run(sim, **kwargs: Any) -> str:
    kwargs = {"technique": "cctv-cam", "pending_ms": 20, "running_ms": 100, "outcome": "completed", **kwargs}
    return sim.sim.create_run(**kwargs)


# -------------------------------------------------------------------------------------------- systemd


async def test_sd_notify_ready_status_watchdog_and_stopping(sim, notify, spawn, tmp_path: Path) -> None:
    """1. READY=1 with a STATUS= line once the config and store are ready; 2. STATUS= after sweeps;
    3. WATCHDOG=1 pings, none withheld; 4. SIGTERM: STOPPING=1, no ping after it, exit 0."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(config_text(sim.base_url, tmp_path, sinks=[{"name": "journal", "type": "file",
                                                                "path": str(tmp_path / "events.jsonl")}]))
    watcher = await spawn(cfg, notify=notify)
    await notify.wait_for("READY", "1")
    await notify.wait_for("WATCHDOG", "1", count=6)
    ready = notify.index("READY", "1")[0]
    assert notify.messages[ready][1]["STATUS"].startswith("tracking 0 active runs")
    assert ready < notify.index("WATCHDOG")[0]
    assert any(s.endswith("API ok") for s in notify.values("STATUS")[1:]), notify.values("STATUS")
    # Pinged every time, never withheld. (The pings' cadence is the feeder's, tested on a stepped clock in
    # tests/unit/test_systemd.py; measured here it would only measure how busy the machine is.)
    assert watcher.logs("systemd.watchdog_withheld") == []
    assert await watcher.stop() == 0
    (stopping,) = notify.index("STOPPING", "1")
    assert notify.index("WATCHDOG")[-1] < stopping  # nothing claims to be alive after STOPPING=1


async def test_an_api_that_stalls_every_request_is_an_outage_not_a_wedge(sim, notify, spawn, http,
                                                                        tmp_path: Path) -> None:
    """Every API request stalls for a minute (each attempt ends at api.timeout). The loop still turns: pings go
    on for longer than the wedge period, so systemd does not restart a healthy daemon for an API outage; /readyz
    answers 503 naming the timeout, STATUS= says the API is failing. When the API recovers, /readyz is 200."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(config_text(sim.base_url, tmp_path, listen=f"127.0.0.1:{port}", api_timeout=API_TIMEOUT,
                               sinks=[{"name": "journal", "type": "file", "path": str(tmp_path / "e.jsonl")}]))
    watcher = await spawn(cfg, notify=notify)
    await wait_ready(http, base)
    sim.sim.set_faults(stall_share=1.0, stall_ms=60_000)
    stalled_at = time.monotonic()

    async def not_ready_because_of_the_api() -> str:
        while True:
            status, body = await get(http, base + "/readyz")
            if status == 503 and "): " in body:  # once a sweep has failed, the reason names its error
                return body
            await asyncio.sleep(0.05)

    reason = await asyncio.wait_for(not_ready_because_of_the_api(), LIVENESS)
    assert reason.startswith("not ready: sweeper, last successful sweep") and "no answer within 0.3s" in reason, reason
    await until(lambda: any(s.endswith("API failing") for s in notify.values("STATUS")), LIVENESS,
                "STATUS API failing")
    # Past the wedge period, and still pinging: the daemon never decided it was wedged.
    await until(lambda: any(t > stalled_at + WEDGED_AFTER + 0.5 for t in notify.times("WATCHDOG")), LIVENESS,
                "a ping well past the wedge period")
    assert watcher.logs("systemd.watchdog_withheld") == []
    assert (await get(http, base + "/healthz"))[0] == 200
    assert sim.sim.stats()["faults"].get("stall", 0) >= 5

    sim.sim.set_faults(stall_share=0.0)
    assert (await wait_ready(http, base)).startswith("ok")
    assert await watcher.stop() == 0


async def test_a_wedged_sweep_loop_stops_the_watchdog_pings(sim, notify, tmp_path: Path, monkeypatch) -> None:
    """The third sweep hangs forever (one await that never returns: the bug a watchdog exists for). The pings
    go on for the wedge period, then stop while the daemon still runs (systemd would restart it), with
    `systemd.watchdog_withheld` in the log; a stop request still ends it cleanly.

    In-process on a manual clock: the wedge period (2 x api.timeout + 5 s) passes in clock steps, not in real
    seconds. (test_sd_notify_ready_status_watchdog_and_stopping drives a real process's pings.)"""
    from structlog.testing import capture_logs

    from tests.fakes import FakeClock, Recorder, advance_until
    from watcher.config import load
    from watcher.daemon import Daemon, Options
    from watcher.sinks.registry import REGISTRY
    from watcher.sweep import Sweeper

    real_sweep = Sweeper.sweep

    async def wedged(self):
        if self.sweeps >= 2:
            await asyncio.Event().wait()
        return await real_sweep(self)

    monkeypatch.setattr(Sweeper, "sweep", wedged)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(config_text(sim.base_url, tmp_path, api_timeout=API_TIMEOUT,
                               sinks=[{"name": "journal", "type": "file", "path": str(tmp_path / "e.jsonl")}]))
    clock = FakeClock(manual=True)
    recorder = Recorder()
    daemon = Daemon(load(str(cfg), sink_types=REGISTRY), Options(install_signal_handlers=False), clock=clock,
                    observers=[recorder], env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    task = asyncio.create_task(daemon.run())
    try:
        await recorder.sweeps(1)
        await advance_until(clock, lambda: len(recorder.reports) >= 2, "the second sweep", step=PING_EVERY,
                            limit=5)
        last_progress = daemon.feeder.last_progress
        with capture_logs() as logs:
            await advance_until(clock, lambda: daemon.feeder.missed >= 6, "six withheld pings", step=PING_EVERY,
                                limit=WEDGED_AFTER + 10 * PING_EVERY)
        withheld = [e for e in logs if e["event"] == "systemd.watchdog_withheld"]
        assert len(withheld) == 1  # logged once, not at every withheld ping
        assert withheld[0]["period_s"] == pytest.approx(WEDGED_AFTER)
        assert withheld[0]["stalled_s"] >= WEDGED_AFTER
        # Pinged right up to the wedge period, and not after it.
        assert WEDGED_AFTER - PING_EVERY <= clock.t - 6 * PING_EVERY - last_progress <= WEDGED_AFTER + 1e-6
        await until(lambda: notify.index("WATCHDOG"), LIVENESS, "the pings to arrive")
        assert len(recorder.reports) == 2 and not task.done()
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, LIVENESS) == 0
    assert notify.index("STOPPING", "1")
    assert notify.index("WATCHDOG")[-1] < notify.index("STOPPING", "1")[0]


# --------------------------------------------------------------------------------------------- SIGHUP


async def test_sighup_keeps_the_running_config_when_the_new_one_is_broken_and_applies_a_good_one(
    sim, notify, spawn, tmp_path: Path
) -> None:
    """1. A broken config + SIGHUP: `config.reload_rejected` naming the key, RELOADING=1 then READY=1, still
    running and still delivering with the old config. 2. A good config adding a file sink + SIGHUP:
    `config.reloaded`, and the new sink receives the next event."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    sink_a = {"name": "a", "type": "file", "path": str(a)}
    sink_b = {"name": "b", "type": "file", "path": str(b)}
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(config_text(sim.base_url, tmp_path, sinks=[sink_a]))
    watcher = await spawn(cfg, notify=notify)
    await notify.wait_for("READY", "1")
    await watcher.wait_log("sweep.finished")

    cfg.write_text(config_text(sim.base_url, tmp_path, sinks=[sink_a, sink_b], watch_extra="sweep_every = 1"))
    watcher.proc.send_signal(signal.SIGHUP)
    rejected = await watcher.wait_log("config.reload_rejected")
    assert "watch.sweep_every" in rejected["error"]
    await notify.wait_for("READY", "1", count=2)
    assert notify.index("RELOADING", "1")[0] < notify.index("READY", "1")[1]
    first = create_run(sim)
    await until(lambda: first in run_ids(a), LIVENESS, "an event with the old config after a rejected reload")
    assert watcher.proc.returncode is None

    cfg.write_text(config_text(sim.base_url, tmp_path, sinks=[sink_a, sink_b]))
    watcher.proc.send_signal(signal.SIGHUP)
    reloaded = await watcher.wait_log("config.reloaded")
    assert reloaded["sinks"] == ["a", "b"]
    second = create_run(sim, outcome="failed", error_code="GPU_PROVIDER_ERROR")
    await until(lambda: second in run_ids(b) and second in run_ids(a), LIVENESS, "the new sink's first event")
    assert first not in run_ids(b)
    assert await watcher.stop() == 0


# -------------------------------------------------------------------------------------------- SIGTERM


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 200, or never answers while ``hang`` is set."""

    def __init__(self) -> None:
        self.hang = True
        self.requests: list[tuple[str, dict]] = []  # (event id, body) of every request, answered or not
        self.answered: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.requests.append((body["id"], body))
        if self.hang:
            await asyncio.Event().wait()  # until the client gives up (the handler is cancelled)
        self.answered.append(body["id"])
        return web.Response(text="ok")

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


async def test_sigterm_during_a_hung_delivery_exits_0_in_time_and_loses_nothing(sim, spawn, http,
                                                                               tmp_path: Path) -> None:
    """1. The receiver hangs on a delivery; SIGTERM: /readyz turns 503 "shutting down" while the delivery gets
    its grace period, then the process exits 0 well within the stop timeout, the delivery still pending.
    2. Restarted with a healthy receiver, the same event (same id) arrives."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    grace = 3.0  # the window in which /readyz says "shutting down": a busy machine's child must answer in it
    async with Receiver() as receiver:
        cfg = tmp_path / "cfg.toml"
        cfg.write_text(config_text(
            sim.base_url, tmp_path, listen=f"127.0.0.1:{port}", shutdown_grace=grace,
            sinks=[{"name": "ops", "type": "webhook", "url": receiver.url, "timeout": 30}],
        ))
        watcher = await spawn(cfg)
        await wait_ready(http, base)
        run = create_run(sim)
        await until(lambda: receiver.requests, LIVENESS, "the delivery to reach the receiver")

        stopped_at = time.monotonic()
        watcher.proc.send_signal(signal.SIGTERM)
        seen: list[tuple[int, str]] = []
        while watcher.proc.returncode is None and time.monotonic() - stopped_at < STOP_TIMEOUT:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                seen.append(await get(http, base + "/readyz"))
            await asyncio.sleep(0.02)
        assert await asyncio.wait_for(watcher.proc.wait(), STOP_TIMEOUT) == 0
        assert (503, "not ready: sweeper, shutting down\n") in seen, seen
        # The daemon gave the hung send its grace period, then cancelled it (the grace period itself is timed on a
        # manual clock in tests/integration/test_delivery.py; here wall time would only measure the machine).
        assert watcher.logs("delivery.drain_timeout")
        assert receiver.answered == []
        store = Store.open(store_path(tmp_path / "state"))
        try:
            assert store.pending_counts() == {"ops": 1}
        finally:
            store.close()

        receiver.hang = False
        watcher = await spawn(cfg)
        expected = event_id(run, "run.completed")
        await until(lambda: receiver.answered, LIVENESS, "the pending delivery after the restart")
        assert receiver.answered == [expected]
        assert [eid for eid, _ in receiver.requests] == [expected, expected]  # the same event, re-sent
        await watcher.wait_log("delivery.done")
        assert await watcher.stop() == 0
    store = Store.open(store_path(tmp_path / "state"))
    try:
        assert sum(store.pending_counts().values()) == 0
    finally:
        store.close()


# -------------------------------------------------------------------------------------------- metrics


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` from a Prometheus text exposition (and proof that it parses)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Mapping[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_and_health_endpoints_show_the_daemon_working(sim, spawn, http, tmp_path: Path) -> None:
    """/healthz 200 at once, /readyz 200 after a sweep; /metrics parses, and its counters move: sweeps, API
    requests, events by type, deliveries by sink, the outbox back to 0."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    events_file = tmp_path / "events.jsonl"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(config_text(sim.base_url, tmp_path, listen=f"127.0.0.1:{port}",
                               sinks=[{"name": "journal", "type": "file", "path": str(events_file)}]))
    spawned = time.time()
    watcher = await spawn(cfg)
    assert (await wait_ready(http, base)).startswith("ok: sweeper, last successful sweep")
    assert await get(http, base + "/healthz") == (200, "ok\n")

    async def scrape() -> dict[tuple[str, frozenset], float]:
        status, text = await get(http, base + "/metrics")
        assert status == 200
        return samples(text)

    before = await scrape()
    assert value(before, "flora_watcher_build_info", version=__version__) == 1
    for outcome in ("delivered", "retry", "dead", "disabled"):  # every sink's series exist from the start
        series = ("flora_watcher_deliveries_total", frozenset({"sink": "journal", "outcome": outcome}.items()))
        assert before[series] == 0
    ok = create_run(sim)
    bad = create_run(sim, technique="voiceover", outcome="failed", error_code="GPU_PROVIDER_ERROR")
    await until(lambda: run_ids(events_file) == {ok, bad}, LIVENESS, "both events in the file")

    async def delivered_and_drained() -> dict:
        while True:
            m = await scrape()
            if (value(m, "flora_watcher_deliveries_total", sink="journal", outcome="delivered") == 2
                    and value(m, "flora_watcher_outbox_pending", sink="journal") == 0):
                return m
            await asyncio.sleep(0.05)

    after = await asyncio.wait_for(delivered_and_drained(), LIVENESS)
    assert value(after, "flora_watcher_sweeps_total", outcome="ok") > value(before, "flora_watcher_sweeps_total",
                                                                            outcome="ok")
    assert value(after, "flora_watcher_api_requests_total", route="list", outcome="ok") > value(
        before, "flora_watcher_api_requests_total", route="list", outcome="ok")
    assert value(after, "flora_watcher_events_total", type="run.completed") == 1
    assert value(after, "flora_watcher_events_total", type="run.failed") == 1
    assert value(after, "flora_watcher_sweeps_total", outcome="error") == 0
    assert value(after, "flora_watcher_detection_latency_seconds_count") == 2
    # a wall-clock timestamp in seconds (not ms, not monotonic), moved by the sweeps since the first scrape
    last_sweep = value(after, "flora_watcher_last_successful_sweep_timestamp_seconds")
    assert value(before, "flora_watcher_last_successful_sweep_timestamp_seconds") < last_sweep <= time.time()
    assert last_sweep >= spawned
    assert await watcher.stop() == 0


# ------------------------------------------------------------------------------------------ live view


async def test_on_a_terminal_run_draws_the_live_view_and_prints_events_above_it(sim, tmp_path: Path) -> None:
    """stdout and stderr on a pseudo-terminal: the live table is drawn, the stdout sink's lines still come out
    whole (rich prints them above the table), and on SIGTERM the cursor is given back and the exit status is 0.
    (The other tests run with stdout in a file: plain lines, no table.)"""
    import fcntl
    import struct
    import termios

    cfg = tmp_path / "cfg.toml"
    cfg.write_text(config_text(sim.base_url, tmp_path, sinks=[{"name": "console", "type": "stdout"}]))
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher", "--log-level", "warning", "run", "-c", str(cfg),
        stdin=asyncio.subprocess.DEVNULL, stdout=slave, stderr=slave, env=env,
    )
    os.close(slave)
    output = bytearray()
    closed = asyncio.Event()

    def read() -> None:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if chunk:
            output.extend(chunk)
        else:
            asyncio.get_running_loop().remove_reader(master)
            closed.set()

    asyncio.get_running_loop().add_reader(master, read)
    try:
        # The table is drawn once the state store is open (the first start is on record), so a run created
        # after it is new to the watcher however long the first sweep takes on a busy machine.
        await until(lambda: b"flora-watcher \xe2\x80\x94 " in output, LIVENESS, "the live table")
        run = create_run(sim)
        line = f"run.completed · CCTV Cam · {run}".encode()
        await until(lambda: line in output, LIVENESS, "the event line")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), STOP_TIMEOUT) == 0
        await asyncio.wait_for(closed.wait(), LIVENESS)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(master)
        os.close(master)
    text = output.decode("utf-8", "replace")
    assert "\x1b[?25l" in text and text.rstrip().endswith("\x1b[?25h")  # cursor hidden while live, then restored
    # The event line is printed where the previous frame of the table was erased, as a whole line, and the
    # table is drawn again below it (a raw write would land right after the table's last border).
    at = text.index(f"✅ run.completed · CCTV Cam · {run}")
    assert text[:at].endswith("\x1b[2K"), repr(text[at - 40:at])
    # The sink's lines (the event, then its outputs, one per line) come out whole, then the table again.
    after = [line.lstrip("\x1b[0123456789;mK") for line in text[at:].split("\r\n")[1:6]]
    assert any(line.startswith("flora-watcher — ") for line in after), after


def test_the_live_view_shows_active_runs_and_runs_that_ended_within_the_last_minute() -> None:
    now = 10_000_000

    def tracked(run_id: str, status: str, completed_at: int | None = None) -> TrackedRun:
        return TrackedRun(Run(run_id=run_id, status=status, completed_at=completed_at), first_seen_ms=0,
                          last_change_ms=0)

    runs = [tracked("pending", "pending"), tracked("running", "running"), tracked("odd", "queued_for_gpu"),
            tracked("just_done", "completed", now - 5_000), tracked("old", "failed", now - 61_000),
            tracked("no_time", "failed")]
    shown = [r.run_id for r in live_runs(runs, now, keep_ms=60_000)]
    assert shown == ["pending", "running", "odd", "just_done"]
