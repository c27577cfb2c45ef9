"""The apprise sink in the real watcher, against the simulator and real local receivers: each URL is its own
delivery target (a failing one never makes the working one send twice), a burst becomes a few messages, a hung
SMTP server delays nothing else, and no URL secret reaches the log, ``status``, ``deliveries``, check-config or
the status page.

Each ``once()`` is one `flora-watcher run --once` in-process; the simulator and the watcher share one FakeClock.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
from pathlib import Path

import pytest
import structlog

from tests.fakes import FakeClock, Recorder, until
from tests.sinks.apprise_helpers import SmtpServer, need_apprise
from tests.sinks.helpers import Receiver
from watcher import logs
from watcher.cli import main
from watcher.config import ApiConfig, Config, DeliveryConfig, WatchConfig
from watcher.daemon import Daemon, Options
from watcher.observer import State
from watcher.secret import Secret
from watcher.sinks.registry import sink_config
from watcher.store import Store, store_path

KEY = "sk_test_apprise_key_0123456789"
EPOCH_MS = 1_764_399_000_000
CANARY_TOKEN = "CANARYapprise0123456789abcdef"
CANARY_PASSWORD = "CANARYpw-4f8e2a9c"
RUN_ID = re.compile(r"run_[a-z0-9]{12,}")


@pytest.fixture(autouse=True)
def _apprise() -> None:
    need_apprise()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0, epoch_ms=EPOCH_MS)


@pytest.fixture
def sim_clock(clock: FakeClock) -> FakeClock:
    return clock


@pytest.fixture
async def good() -> Receiver:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def bad() -> Receiver:
    r = Receiver()
    r.default.status = 500
    r.default.body = f"Cannot POST /{CANARY_TOKEN}".encode()  # a receiver that echoes the URL back
    await r.start()
    yield r
    await r.stop()


def make_config(base_url: str, state_dir: Path, *sinks, **delivery) -> Config:
    return Config(
        api=ApiConfig(base_url=base_url, api_key=Secret(KEY), timeout=5.0, max_rps=200.0),
        watch=WatchConfig(interval=0.1, state_dir=state_dir, poll_max_interval=1.0),
        delivery=DeliveryConfig(shutdown_grace=2.0, **delivery),
        sinks=tuple(sinks),
    )


def apprise(name: str, *urls: str, **fields):
    return sink_config(name, "apprise", urls=tuple(Secret(u) for u in urls), where="sinks[0]", **fields)


async def once(cfg: Config, clock: FakeClock) -> int:
    code = await Daemon(cfg, Options(once=True, install_signal_handlers=False), clock=clock).run()
    clock.advance(0.05)
    return code


def finished_runs(sim, clock: FakeClock, count: int, **kwargs) -> list[str]:
    runs = [sim.sim.create_run(technique="cctv-cam", pending_ms=50, running_ms=300, **kwargs) for _ in range(count)]
    clock.advance(1.0)
    assert all(sim.sim.run_truth(r)["status"] in ("completed", "failed") for r in runs)
    return runs


def messages(receiver: Receiver) -> list[dict]:
    return [json.loads(r.body) for r in receiver.requests]


def run_ids(receiver: Receiver) -> list[str]:
    return [run for m in messages(receiver) for run in RUN_ID.findall(m["message"])]


def deliveries(state: Path) -> dict[str, dict[str, str]]:
    """target → run id → state, from the outbox."""
    store = Store.open(store_path(state))
    try:
        rows = store._conn.execute(
            "SELECT d.sink, e.run_id, d.state FROM deliveries d JOIN events e ON e.id = d.event_id").fetchall()
    finally:
        store.close()
    out: dict[str, dict[str, str]] = {}
    for sink, run, state_ in rows:
        out.setdefault(sink, {})[run] = state_
    return out


async def test_a_failing_url_beside_a_working_one_never_makes_it_send_twice(
        sim, good: Receiver, bad: Receiver, tmp_path: Path, clock: FakeClock) -> None:
    state = tmp_path / "state"
    cfg = make_config(sim.base_url, state, apprise(
        "alerts", f"json://127.0.0.1:{good.port}/ok", f"json://127.0.0.1:{bad.port}/{CANARY_TOKEN}",
        group_by=["type", "error_code", "project_id"]))
    assert await once(cfg, clock) == 0  # first start
    runs = finished_runs(sim, clock, 6, outcome="failed", error_code="GPU_PROVIDER_ERROR")
    assert await once(cfg, clock) == 0
    assert sorted(run_ids(good)) == sorted(runs)  # each event once, at the first attempt
    first_bad = len(bad.requests)
    assert first_bad >= 1
    outbox = deliveries(state)
    assert set(outbox) == {"alerts:json", "alerts:json#2"}  # one delivery per (event, target)
    assert set(outbox["alerts:json"].values()) == {"delivered"}
    assert set(outbox["alerts:json#2"].values()) == {"pending"}
    for _ in range(3):  # the failing target's retries come due; the working one has nothing left to send
        clock.advance(700)
        assert await once(cfg, clock) == 0
    assert sorted(run_ids(good)) == sorted(runs)
    assert len(bad.requests) > first_bad
    assert set(deliveries(state)["alerts:json#2"].values()) == {"pending"}


async def test_a_burst_becomes_a_few_messages_naming_every_run(sim, good: Receiver, tmp_path: Path,
                                                             clock: FakeClock) -> None:
    cfg = make_config(sim.base_url, tmp_path / "state", apprise("alerts", f"json://127.0.0.1:{good.port}/ok"))
    assert await once(cfg, clock) == 0
    failed = finished_runs(sim, clock, 30, outcome="failed", error_code="INSUFFICIENT_CREDITS")
    completed = finished_runs(sim, clock, 10, outcome="completed")
    assert await once(cfg, clock) == 0
    sent = messages(good)
    assert len(sent) <= 4  # one per group (type, error_code)
    assert sorted(run_ids(good)) == sorted(failed + completed) or any("more" in m["message"] for m in sent)
    titles = {m["title"]: m["type"] for m in sent}
    assert titles["❌ 30 runs failed: INSUFFICIENT\\_CREDITS"] == "failure"
    assert titles["✅ 10 runs completed"] == "success"
    burst = next(m for m in sent if m["title"].startswith("❌ 30"))
    assert "… and 5 more: `flora-watcher events --type run.failed --error-code INSUFFICIENT_CREDITS" \
        in burst["message"]


def _apprise_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("apprise ")]


async def test_a_hung_smtp_server_does_not_delay_the_webhook(sim, good: Receiver, tmp_path: Path,
                                                             clock: FakeClock) -> None:
    """The webhook receives every event while the SMTP server holds the apprise sink's send; then the SMTP server
    closes the connection: the send fails (retry later), and its thread ends."""
    smtp = SmtpServer(hang=True)
    await smtp.start()
    try:
        cfg = make_config(sim.base_url, tmp_path / "state",
                          sink_config("hook", "webhook", url=Secret(good.url("/hook"))),
                          apprise("mail", smtp.url(), timeout=60.0))
        assert await once(cfg, clock) == 0
        runs = finished_runs(sim, clock, 5, outcome="failed", error_code="OOM")
        task = asyncio.create_task(once(cfg, clock))
        await until(lambda: len(good.requests) >= 5 or task.done(), "the webhook's five deliveries", timeout=30)
        await until(lambda: smtp.connections >= 1 or task.done(), "the apprise send to reach the SMTP server",
                    timeout=30)
        assert sorted(json.loads(r.body)["data"]["run_id"] for r in good.requests) == sorted(runs)
        assert not task.done() and smtp.connections == 1  # the email is still on its way, the webhook done
        smtp.release()
        assert await asyncio.wait_for(task, 30) == 0
        outbox = deliveries(tmp_path / "state")
        assert set(outbox["hook"].values()) == {"delivered"}
        assert set(outbox["mail:mailto"].values()) == {"pending"}  # failed: retried later
        await until(lambda: not _apprise_threads(), "the apprise thread to end", timeout=30)
    finally:
        await smtp.stop()


async def test_a_restart_without_a_url_dead_letters_that_target_only(
        sim, good: Receiver, bad: Receiver, tmp_path: Path, clock: FakeClock) -> None:
    state = tmp_path / "state"
    three = apprise("alerts", f"json://127.0.0.1:{good.port}/ok", f"xml://127.0.0.1:{bad.port}/{CANARY_TOKEN}",
                    f"json://127.0.0.1:{bad.port}/x")
    assert await once(make_config(sim.base_url, state, three), clock) == 0
    runs = finished_runs(sim, clock, 2, outcome="failed", error_code="OOM")
    assert await once(make_config(sim.base_url, state, three), clock) == 0
    assert set(deliveries(state)) == {"alerts:json", "alerts:xml", "alerts:json#2"}
    # The xml URL goes: its target's pending deliveries become dead letters (`replay` once it is back); the
    # second json URL keeps its name (alerts:json#2), its pending retries and its place.
    two = apprise("alerts", f"json://127.0.0.1:{good.port}/ok", f"json://127.0.0.1:{bad.port}/x")
    assert await once(make_config(sim.base_url, state, two), clock) == 0
    outbox = deliveries(state)
    assert set(outbox["alerts:xml"].values()) == {"dead"}
    assert set(outbox["alerts:json#2"].values()) == {"pending"}
    assert sorted(run_ids(good)) == sorted(runs)


async def test_a_reload_that_drops_a_url_dead_letters_its_target_and_keeps_the_others(
        sim, good: Receiver, bad: Receiver, tmp_path: Path, clock: FakeClock) -> None:
    state = tmp_path / "state"
    good_url, xml_url, json_url = (f"json://127.0.0.1:{good.port}/ok", f"xml://127.0.0.1:{bad.port}/x",
                                   f"json://127.0.0.1:{bad.port}/y")
    current = {"cfg": make_config(sim.base_url, state, apprise("alerts", good_url, xml_url, json_url))}
    recorder = Recorder()
    daemon = Daemon(current["cfg"], Options(install_signal_handlers=False, reload=lambda: current["cfg"]),
                    clock=clock, observers=[recorder])
    task = asyncio.create_task(daemon.run())
    try:
        await recorder.sweeps(1)
        runs = finished_runs(sim, clock, 2, outcome="failed", error_code="OOM")
        await until(lambda: sorted(run_ids(good)) == sorted(runs), "the events at the working URL")
        await until(lambda: {s for s, o in recorder.deliveries if o == "retry"} >= {"alerts:xml", "alerts:json#2"},
                    "a failed attempt at each failing URL")
        kept = daemon.sinks["alerts:json"]
        current["cfg"] = make_config(sim.base_url, state, apprise("alerts", good_url, json_url))
        daemon.request_reload()
        await until(lambda: State.RELOADING in recorder.states and recorder.states[-1] == State.READY,
                    "the reload to finish")
        assert set(daemon.sinks) == {"alerts:json", "alerts:json#2"}
        assert daemon.sinks["alerts:json"] is kept  # an unchanged URL keeps its worker
        assert daemon.store is not None
        pending = await daemon.store.pending_counts()
        assert pending.get("alerts:xml", 0) == 0 and pending["alerts:json#2"] >= 1
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
    assert set(deliveries(state)["alerts:xml"].values()) == {"dead"}
    assert sorted(run_ids(good)) == sorted(runs)


async def test_no_url_secret_in_the_log_status_deliveries_check_config_or_page(
        sim, bad: Receiver, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    smtp = SmtpServer()
    await smtp.start()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config(), logs._handler)
    buf = io.StringIO()
    try:
        state = tmp_path / "state"
        mail = smtp.url(userinfo=f"ops:{CANARY_PASSWORD}")
        failing = f"json://127.0.0.1:{bad.port}/{CANARY_TOKEN}?secret={CANARY_TOKEN}"
        config_file = tmp_path / "flora-watcher.toml"
        config_file.write_text(f"""
[api]
base_url = "{sim.base_url}"
api_key = "{KEY}"
[watch]
interval = 0.1
state_dir = "{state}"
[[sinks]]
name = "alerts"
type = "apprise"
urls = ["{mail}", "{failing}"]
""")
        from watcher.config import load
        from watcher.sinks.registry import REGISTRY

        logs.configure(fmt="json", level="debug", stream=buf)
        cfg = load(config_file, sink_types=REGISTRY)
        assert await once(cfg, clock) == 0
        finished_runs(sim, clock, 3, outcome="failed", error_code="GPU_PROVIDER_ERROR")
        assert await once(cfg, clock) == 0
        clock.advance(700)
        assert await once(cfg, clock) == 0
        assert len(smtp.mails) >= 1 and len(bad.requests) >= 2
        page = await _status_page(cfg, clock)
    finally:
        await smtp.stop()
        logs.clear_secrets()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.configure(**saved[2])
        logs._handler = saved[3]
    outputs = {"log": buf.getvalue(), "page": page}
    for command in (["status"], ["status", "--json"], ["deliveries"], ["deliveries", "--failed"],
                    ["check-config"]):
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr("sys.stdout", out)
        monkeypatch.setattr("sys.stderr", err)
        code = main([*command, "-c", str(config_file)])
        monkeypatch.undo()
        assert code == 0, (command, err.getvalue())
        outputs[" ".join(command)] = out.getvalue() + err.getvalue()
    assert "alerts:mailto" in outputs["status"] and "alerts:json" in outputs["status"]
    assert "alerts:mailto" in outputs["page"]
    assert "mailto://…" in outputs["check-config"] or "alerts:mailto" in outputs["check-config"]
    assert "apprise reports a failure" in outputs["log"].lower()
    for where, text in outputs.items():
        for needle in (CANARY_TOKEN, CANARY_PASSWORD, "CANARY"):
            assert needle not in text, f"{needle} leaked into {where}: {text[:2000]}"


async def _status_page(cfg: Config, clock: FakeClock) -> str:
    from watcher.server import StatusPage
    from watcher.store import AsyncStore

    daemon = Daemon(cfg, Options(once=True, install_signal_handlers=False), clock=clock)
    async with await AsyncStore.open(store_path(cfg.watch.state_dir)) as store:
        page = StatusPage(store, sink_types=daemon.sink_types, clock=clock)
        return (await page.body()).decode()
