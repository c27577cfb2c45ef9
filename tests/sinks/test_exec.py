"""Exec sink: argv without a shell, event JSON on stdin, exit codes, timeout, missing command."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.sinks.helpers import make_event
from watcher.errors import DeliveryError, Reason
from watcher.render import event_body
from watcher.sinks.exec import ExecSink
from watcher.sinks.registry import sink_config


def process_gone(pid: int, wait: float = 2.0) -> bool:
    """Whether ``pid`` is dead (or a zombie awaiting its reaper) within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return True
        time.sleep(0.01)
    return False


def exec_sink(code: str, *args: str, timeout: float = 10.0) -> ExecSink:
    return ExecSink(sink_config(name="hook", type="exec", command=(sys.executable, "-c", code, *args),
                               timeout=timeout))


async def test_event_json_on_stdin_and_event_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLORA_API_KEY", "sk_live_must_not_reach_hooks")
    out = tmp_path / "seen.json"
    code = ("import json, os, sys; body = sys.stdin.buffer.read(); "
            "env = {k: os.environ.get(k) for k in ('FLORA_EVENT_ID', 'FLORA_EVENT_TYPE', 'FLORA_RUN_ID', "
            "'FLORA_API_KEY')}; open(sys.argv[1], 'w').write(json.dumps({'body': body.decode(), 'env': env})); "
            "print('stored', end='')")
    event = make_event()
    result = await exec_sink(code, str(out)).send(event)
    seen = json.loads(out.read_text())
    assert seen["body"].encode() == event_body(event)
    assert seen["env"] == {"FLORA_EVENT_ID": event.id, "FLORA_EVENT_TYPE": "run.failed",
                           "FLORA_RUN_ID": "run_abc123", "FLORA_API_KEY": None}
    assert (result.status, result.detail) == (0, "stored")


async def test_no_shell_is_involved(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    sink = exec_sink("import sys; sys.stdin.read()", f"; touch {marker}")
    await sink.send(make_event())
    assert not marker.exists()


async def test_exit_75_is_retryable() -> None:
    with pytest.raises(DeliveryError) as err:
        await exec_sink("import sys; sys.stderr.write('queue full'); sys.exit(75)").send(make_event())
    assert (err.value.retryable, err.value.reason, err.value.status) == (True, Reason.EXEC_FAILED, 75)
    assert "queue full" in err.value.message


async def test_other_exit_codes_are_permanent_with_the_start_of_stderr() -> None:
    code = "import sys; sys.stdin.read(); sys.stderr.write('E' * 150 + 'F' * 500); sys.exit(3)"
    with pytest.raises(DeliveryError) as err:
        await exec_sink(code).send(make_event())
    assert (err.value.retryable, err.value.reason, err.value.status) == (False, Reason.EXEC_FAILED, 3)
    assert "exited with 3" in err.value.message
    assert "E" * 150 + "F" * 50 + "…" in err.value.message and "F" * 51 not in err.value.message


async def test_a_hung_command_is_killed_with_its_children_and_retried_later(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # A shell starts its child in milliseconds, so it has done so well within the sink's timeout even on a busy
    # machine (a Python command needs a good part of a second just to start there).
    script = f"sleep 30 & echo $! > {pid_file}; wait"
    sink = ExecSink(sink_config(name="hook", type="exec", command=("/bin/sh", "-c", script), timeout=2.0))
    started = time.monotonic()
    with pytest.raises(DeliveryError) as err:
        await sink.send(make_event())
    assert time.monotonic() - started < 25, "the sink waited for the command (30 s) instead of its timeout (2 s)"
    assert (err.value.retryable, err.value.reason) == (True, Reason.TIMEOUT)
    assert process_gone(int(pid_file.read_text()), wait=20), "the command's child survived the timeout"


async def test_a_missing_command_is_a_permanent_config_problem() -> None:
    sink = ExecSink(sink_config(name="hook", type="exec", command=("/nonexistent/flora-hook",)))
    await sink.start()  # warns, does not fail
    with pytest.raises(DeliveryError) as err:
        await sink.send(make_event())
    assert (err.value.retryable, err.value.reason) == (False, Reason.BAD_CONFIG)
    assert "command not found: /nonexistent/flora-hook" in err.value.message


async def test_a_non_executable_command_is_a_permanent_config_problem(tmp_path: Path) -> None:
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o600)
    with pytest.raises(DeliveryError) as err:
        await ExecSink(sink_config(name="hook", type="exec", command=(str(script),))).send(make_event())
    assert (err.value.retryable, err.value.reason) == (False, Reason.BAD_CONFIG)
