"""`flora-watcher run | head -1` exits once the pipe's reader is gone (issue 14)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from watcher.commands.run import watch_stdout_reader
from watcher.simulator import run_simulator

BIN = Path(sys.executable).parent / "flora-watcher"


async def test_the_watch_fires_when_the_read_end_closes_and_not_before() -> None:
    r, w = os.pipe()
    gone = asyncio.Event()
    unwatch = watch_stdout_reader(gone.set, fd=w)
    try:
        os.write(w, b"x\n")
        await asyncio.sleep(0.05)
        assert not gone.is_set()
        os.close(r)
        await asyncio.wait_for(gone.wait(), 10)
    finally:
        unwatch()
        os.close(w)


@pytest.mark.parametrize("kind", ["file", "terminal", "devnull"])
async def test_a_terminal_or_file_is_not_watched(tmp_path: Path, kind: str) -> None:
    """Only a pipe's closed read end stops the daemon: watching a terminal would stop it at the first key typed
    there (the terminal becomes readable)."""
    master = None
    if kind == "terminal":
        master, fd = os.openpty()
    else:
        fd = os.open(tmp_path / "out" if kind == "file" else os.devnull, os.O_WRONLY | os.O_CREAT)
    try:
        unwatch = watch_stdout_reader(lambda: None, fd=fd)
        watched = asyncio.get_running_loop().remove_reader(fd)  # True: a reader was registered on fd
        unwatch()
        assert not watched, f"a {kind} was watched"
    finally:
        os.close(fd)
        if master is not None:
            os.close(master)


async def test_run_piped_into_head_stops_after_the_first_line(tmp_path: Path) -> None:
    async with run_simulator(api_key="sk_test_pipe") as sim:
        config = tmp_path / "w.toml"
        config.write_text(f'[api]\nbase_url = "{sim.base_url}"\napi_key = "sk_test_pipe"\n'
                          f'[watch]\ninterval = 0.2\nstate_dir = "{tmp_path / "state"}"\n')
        proc = await asyncio.create_subprocess_exec(
            str(BIN), "--log-format", "json", "run", "-c", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        err_lines: list[bytes] = []
        try:
            while b'"sweep.finished"' not in (line := await asyncio.wait_for(proc.stderr.readline(), 30)):
                err_lines.append(line)  # the first sweep is done: runs from now on are reported
            err_lines.append(line)
            sim.sim.create_runs(3, pending_ms=300, running_ms=300)
            first = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert first.strip()
            proc._transport.get_pipe_transport(1).close()  # `head -1` exits: the read end closes
            code = await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        err = b"".join(err_lines).decode() + (await proc.stderr.read()).decode()
    assert code == 0
    assert '"stdout.closed"' in err and "Traceback" not in err and "Exception ignored" not in err


async def test_a_startup_failure_logs_the_exit_code_the_process_exits_with(tmp_path: Path) -> None:
    """Bug 2: daemon.stopped said exit_code 0 while the process exited 1."""
    from structlog.testing import capture_logs

    from watcher.config import parse
    from watcher.daemon import Daemon, Options
    from watcher.sinks.registry import REGISTRY

    state = tmp_path / "state"
    (state / "state.sqlite3").mkdir(parents=True)  # the state file is a directory: the store cannot open
    cfg = parse(f'[api]\napi_key = "sk_test_x0123456789"\n[watch]\nstate_dir = "{state}"\n'
                '[[sinks]]\nname = "console"\ntype = "stdout"\n',
                env={}, read_file=lambda p: "", sink_types=REGISTRY, source=None)
    with capture_logs() as logs:
        code = await Daemon(cfg, Options(once=True, install_signal_handlers=False)).run()
    assert code == 1
    assert [e for e in logs if e["event"] == "daemon.startup_failed"]
    assert [e["exit_code"] for e in logs if e["event"] == "daemon.stopped"] == [1]
