"""Supervision (issue 24, item 2): a long-lived task that dies is logged at once, restarted with a capped,
jittered backoff, counted, and named by ``/readyz`` while it is down; an error no restart can cure is not
restarted. The supervisor alone on a manual ``FakeClock`` (the backoff passes only when the test moves time),
then the daemon's own tasks: a sink worker, the HTTP server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.fakes import FakeClock, until
from tests.in_process import readyz, running
from watcher.config import ApiConfig, Config, DeliveryConfig, ServerConfig, WatchConfig
from watcher.daemon import Daemon
from watcher.dispatcher import SinkWorker
from watcher.errors import AuthError
from watcher.secret import Secret
from watcher.simulator import run_simulator
from watcher.sinks.registry import sink_config
from watcher.supervisor import Supervisor

KEY = "sk_test_supervision_0123456789"
EPOCH_MS = 1_764_399_000_000


async def settle() -> None:
    """Let every task that can run, run (a few loop turns; no time passes on the manual clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


class Child:
    """A task body that raises ``failures`` times (or returns, with ``returns``), then runs until cancelled."""

    def __init__(self, failures: int, error: Exception | None = None, *, returns: bool = False) -> None:
        self.failures = failures
        self.error = error or RuntimeError("bug in the task")
        self.returns = returns
        self.runs = 0

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            if self.returns:
                return
            raise self.error
        await asyncio.Event().wait()


async def test_a_task_that_raises_is_logged_at_once_down_while_it_waits_and_restarted_with_backoff() -> None:
    """1. The task raises three times: each crash is a ``task.crashed`` line at once, with the error.
    2. While it waits for its restart, ``down`` names it (what ``/readyz`` reads), and the observer counts it.
    3. The waits grow (1 s, 2 s, 4 s ceilings, equal jitter: never under half of it); then it runs."""
    clock = FakeClock(0.0, manual=True)
    events: list[tuple[str, str, str | None]] = []
    sup = Supervisor(clock=clock, on_event=lambda *e: events.append(e))
    child = Child(3)
    with capture_logs() as logs:
        sup.start("sink:journal", child)
        waits = []
        for crash in range(1, 4):
            await until(lambda n=crash: child.runs == n and clock.waiting, f"crash {crash}")
            assert sup.down["sink:journal"].error == "RuntimeError: bug in the task"
            assert sup.down["sink:journal"].crashes == crash
            waits.append(clock.next_deadline() - clock.t)
            clock.advance(waits[-1])
        await until(lambda: child.runs == 4, "the fourth run")
        await settle()
    assert "sink:journal" not in sup.down
    assert 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2 and 2 <= waits[2] <= 4, waits
    crashed = [e for e in logs if e["event"] == "task.crashed"]
    assert [(e["task"], e["error"], e["crashes"], e["log_level"]) for e in crashed] == [
        ("sink:journal", "RuntimeError: bug in the task", n, "error") for n in (1, 2, 3)]
    assert all(e["exc_info"] is child.error for e in crashed)  # the traceback goes to the log
    assert [e[1] for e in events] == ["crashed", "restarted"] * 3
    await sup.cancel("sink:journal")


async def test_a_task_that_returns_when_nobody_asked_it_to_is_a_crash_too() -> None:
    clock = FakeClock(0.0, manual=True)
    sup = Supervisor(clock=clock)
    child = Child(1, returns=True)
    with capture_logs() as logs:
        sup.start("lease", child)
        await until(lambda: clock.waiting, "the restart wait")
        assert sup.down["lease"].error == "ended unexpectedly"
        clock.advance(1)
        await until(lambda: child.runs == 2, "the restart")
    assert [e["error"] for e in logs if e["event"] == "task.crashed"] == ["ended unexpectedly"]
    await sup.cancel("lease")


async def test_an_error_no_restart_can_cure_is_not_restarted_and_fails_the_supervisor() -> None:
    clock = FakeClock(0.0, manual=True)
    sup = Supervisor(clock=clock)
    refused = AuthError("the API key was refused", status=401)
    child = Child(5, refused)
    task = sup.start("sweep-loop", child, fatal=lambda exc: isinstance(exc, AuthError))
    await asyncio.wait_for(sup.failed.wait(), 5)
    await asyncio.wait_for(task, 5)
    assert sup.failure is refused and child.runs == 1 and not sup.down


async def test_a_retired_task_is_not_restarted_and_its_wait_is_called_off() -> None:
    clock = FakeClock(0.0, manual=True)
    sup = Supervisor(clock=clock)
    child = Child(10)
    task = sup.start("sink:gone", child)
    await until(lambda: clock.waiting, "the restart wait")
    assert "sink:gone" in sup.down
    assert sup.retire("sink:gone") is task
    await asyncio.wait_for(task, 5)  # ends without the clock moving
    assert child.runs == 1 and not sup.down


# ------------------------------------------------------------------------------------- the daemon's tasks


def daemon_config(base_url: str, tmp_path: Path) -> Config:
    return Config(
        api=ApiConfig(base_url=base_url, api_key=Secret(KEY), timeout=5.0, max_rps=200.0),
        watch=WatchConfig(interval=1.0, state_dir=tmp_path / "state", poll_max_interval=1.0),
        delivery=DeliveryConfig(shutdown_grace=1.0),
        server=ServerConfig(listen="127.0.0.1:0"),
        sinks=(sink_config(name="journal", type="file", path=tmp_path / "events.jsonl"),),
    )


async def metric(daemon: Daemon, line: str) -> bool:
    assert daemon.server is not None
    async with aiohttp.ClientSession() as http, http.get(daemon.server.url + "/metrics") as resp:
        return line in await resp.text()


async def test_a_crashed_sink_worker_is_named_by_readyz_restarted_and_delivers_again(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """1. A bug kills the sink worker once: ``task.crashed`` names it, ``/readyz`` answers 503 naming the task
       and its error, the crash is counted in ``flora_watcher_task_crashes_total``.
    2. After its backoff (clock time) it runs again: ``/readyz`` 200, and a run that ends is delivered."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    pump = SinkWorker._pump
    bugs = {"left": 0}

    async def buggy_pump(self):
        if bugs["left"]:
            bugs["left"] -= 1
            raise RuntimeError("bug in the worker")
        return await pump(self)

    monkeypatch.setattr(SinkWorker, "_pump", buggy_pump)
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as sim:
        cfg = daemon_config(sim.base_url, tmp_path)
        with capture_logs() as logs:
            async with running(cfg, clock) as (daemon, recorder):
                clock.advance(cfg.watch.interval)  # runs created from now on are after the first start
                await recorder.sweeps(2)
                assert (await readyz(daemon))[0] == 200
                bugs["left"] = 1
                daemon.dispatcher.wake()
                await until(lambda: "sink:journal" in daemon.supervisor.down, "the worker's crash")
                status, body = await readyz(daemon)
                assert (status, body) == (503, "not ready: sweeper, task sink:journal down: RuntimeError: bug in "
                                               "the worker\n")
                assert await metric(daemon, 'flora_watcher_task_crashes_total{task="sink:journal"} 1.0')
                run = sim.sim.create_run(technique="cctv-cam", pending_ms=50, running_ms=300, outcome="completed")
                journal = tmp_path / "events.jsonl"
                for n in range(3, 13):  # the backoff (at most 1 s) passes with the sweeps
                    clock.advance(cfg.watch.interval)
                    await recorder.sweeps(n)
                    if recorder.reports[-1].new_events:
                        break
                await until(lambda: run in journal.read_text(), "the event delivered")
                assert "sink:journal" not in daemon.supervisor.down
                assert (await readyz(daemon))[0] == 200
    assert [e["task"] for e in logs if e["event"] == "task.crashed"] == ["sink:journal"]
    assert [e["task"] for e in logs if e["event"] == "task.restarted"] == ["sink:journal"]


async def test_the_http_server_task_binds_again_when_its_socket_is_closed(tmp_path: Path) -> None:
    """The listening socket closed under the server (not by the daemon): the ``http-server`` task crashes, is
    restarted, and the same address answers again."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as sim:
        cfg = daemon_config(sim.base_url, tmp_path)
        with capture_logs() as logs:
            async with running(cfg, clock) as (daemon, _):
                assert daemon.server is not None
                url = daemon.server.url
                daemon.server._listener.close()
                await until(lambda: "http-server" in daemon.supervisor.down, "the server task's crash")
                with pytest.raises(aiohttp.ClientError):
                    await readyz(daemon)
                clock.advance(1)
                await until(lambda: daemon.server.serving, "the socket bound again")
                assert daemon.server.url == url
                assert (await readyz(daemon))[0] == 200
    assert [e["task"] for e in logs if e["event"] == "task.crashed"] == ["http-server"]
