"""`flora-watcher watch RUN_ID` against the simulator: every exit status of CONTRACT §2, in-process.

The simulator and the command share one ``FakeClock``: the command's polls sleep on it, so the simulated runs
progress exactly as far as the command waited, and nothing here waits in real time (but the CLI test)."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from tests.fakes import FakeClock
from watcher import cli
from watcher.commands.watch import watch_run
from watcher.secret import Secret
from watcher.simulator import Faults, run_simulator

KEY = "sk_test_sim"
FAST = {"interval": 0.05, "max_interval": 0.2}  # polls in tens of ms instead of seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0, deadlines_jump=False)  # a request's timeout passes only as the polls' sleeps move time


@pytest.fixture
def sim_clock(clock: FakeClock) -> FakeClock:
    """The shared ``sim`` fixture's simulator runs on the same clock."""
    return clock


async def watch(sim, clock: FakeClock, run_id: str, *, key: str = KEY, **kwargs) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of one watch."""
    out, err = io.StringIO(), io.StringIO()
    code = await watch_run(run_id, base_url=sim.base_url, api_key=Secret(key), out=out, err=err,
                           clock=clock, **{**FAST, **kwargs})
    return code, out.getvalue(), err.getvalue()


async def test_completed_run_exits_0_with_a_summary_and_its_outputs(sim, clock):
    run_id = sim.sim.create_run(technique="cctv-cam", pending_ms=100, running_ms=300, outcome="completed")
    started = clock.t
    code, out, err = await watch(sim, clock, run_id)
    assert code == 0
    assert clock.t - started < 0.4 + 0.2  # the run's 400 ms, then at most one poll interval
    lines = out.splitlines()
    assert lines[-1].startswith(f"{run_id} completed in ")
    assert any("imageUrl https://" in line for line in lines[:-1])
    # Not a terminal: one plain line per change on stderr, ending with the terminal status.
    progress = [line for line in err.splitlines() if line.startswith(f"{run_id}: ")]
    assert progress[0].startswith(f"{run_id}: pending")
    assert any("running" in line and "%" in line for line in progress)
    assert progress[-1].startswith(f"{run_id}: completed")


async def test_failed_run_exits_1_with_error_code_and_message(sim, clock):
    run_id = sim.sim.create_run(technique="cctv-cam", pending_ms=100, running_ms=300, outcome="failed",
                                error_code="GPU_PROVIDER_ERROR")
    code, out, _ = await watch(sim, clock, run_id)
    assert code == 1
    last = out.splitlines()[-1]
    assert last.startswith(f"{run_id} failed")
    assert "GPU_PROVIDER_ERROR" in last
    assert "The provider failed" in last


async def test_unknown_run_exits_3(sim, clock):
    code, out, err = await watch(sim, clock, "run_doesnotexist")
    assert code == 3
    assert out == ""
    assert "run run_doesnotexist not found" in err


async def test_refused_key_exits_4_without_printing_it(sim, clock):
    run_id = sim.sim.create_run(technique="cctv-cam", pending_ms=100, running_ms=300, outcome="completed")
    code, out, err = await watch(sim, clock, run_id, key="sk_live_wrongwrongwrong")
    assert code == 4
    assert out == ""
    assert "refused the key" in err
    assert "sk_live_wrongwrongwrong" not in err


async def test_timeout_exits_124_with_the_last_state(sim, clock):
    run_id = sim.sim.create_run(technique="cctv-cam", pending_ms=50, running_ms=60_000, outcome="completed")
    started = clock.t
    code, out, err = await watch(sim, clock, run_id, give_up_after=0.6)
    assert code == 124
    assert clock.t - started == pytest.approx(0.6)
    assert out.splitlines()[-1].startswith(f"{run_id} running")
    assert "still not finished" in out
    assert "timed out after 0.6s" in err


async def test_transient_api_errors_are_retried_until_the_run_ends():
    clock = FakeClock(0.0, deadlines_jump=False)
    async with run_simulator(api_key=KEY, seed=3, faults=Faults(malformed_share=0.5), clock=clock) as flaky:
        run_id = flaky.sim.create_run(technique="cctv-cam", pending_ms=100, running_ms=300, outcome="completed")
        code, out, err = await watch(flaky, clock, run_id)
    assert code == 0
    assert "API error, retrying" in err
    assert out.splitlines()[-1].startswith(f"{run_id} completed")


async def test_json_prints_the_final_run(sim, clock):
    run_id = sim.sim.create_run(technique="cctv-cam", pending_ms=50, running_ms=200, outcome="failed")
    code, out, _ = await watch(sim, clock, run_id, as_json=True)
    assert code == 1
    doc = json.loads(out)
    assert doc["run_id"] == run_id
    assert doc["status"] == "failed"
    assert doc["error_code"]


async def test_progress_bar_mode_on_a_terminal(sim, clock):
    run_id = sim.sim.create_run(technique="cctv-cam", pending_ms=50, running_ms=200, outcome="completed")
    code, out, _ = await watch(sim, clock, run_id, live=True)
    assert code == 0
    assert out.splitlines()[-1].startswith(f"{run_id} completed")


async def test_the_command_line(tmp_path, monkeypatch):
    """`flora-watcher watch RUN_ID -c FILE --json` end to end through the CLI (in a worker thread, since
    the command runs its own event loop), on real time."""
    async with run_simulator(api_key=KEY, seed=1) as sim:
        await _the_command_line(sim, tmp_path, monkeypatch)


async def _the_command_line(sim, tmp_path, monkeypatch):
    monkeypatch.delenv("FLORA_API_KEY", raising=False)
    config = tmp_path / "flora-watcher.toml"
    config.write_text(f'[api]\nbase_url = "{sim.base_url}"\napi_key = "{KEY}"\n')
    run_id = sim.sim.create_run(technique="cctv-cam", pending_ms=50, running_ms=200, outcome="completed")
    code = await asyncio.to_thread(
        cli.main, ["--log-level", "error", "watch", run_id, "-c", str(config), "--interval", "0.05",
                   "--max-interval", "0.2", "--timeout", "10", "--json"])
    assert code == 0
    assert await asyncio.to_thread(
        cli.main, ["--log-level", "error", "watch", "run_nope", "-c", str(config), "--interval", "0.05"]) == 3
    assert await asyncio.to_thread(cli.main, ["watch", run_id, "--timeout", "-1"]) == 2
