"""`flora-watcher events` against a real SQLite state store: filters, --json, --follow (a real subprocess)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from watcher.cli import main
from watcher.commands.events import parse_since
from watcher.model import Output, Run, Technique
from watcher.store import Store, store_path
from watcher.transitions import build_event

NOW = 1_764_400_000_000
HOUR = 3_600_000


def make_event(run_id: str, kind: str, *, at: int, code: str | None = None, project: str = "prj_a",
               technique: str = "CCTV Cam"):
    status = "failed" if kind == "run.failed" else "completed"
    run = Run(
        run_id=run_id, status=status, progress=100, created_at=at - 9_000, started_at=at - 8_000, completed_at=at,
        workspace_id="ws_1", project_id=project, technique=Technique("tech_1", technique),
        error_code=code, error_message="The provider failed." if code else None,
        outputs=() if code else (Output("output_1", "imageUrl", f"https://media.example/{run_id}.png"),),
    )
    return build_event(kind, run, "running", now_ms=at, late=False)


def store_events(state_dir: Path, *events) -> None:
    with Store.open(store_path(state_dir)) as store:
        store.commit_sweep(upserts=(), deletes=(), events=[(e, ["journal"]) for e in events], meta={},
                           now_ms=max(e.created_at for e in events))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "flora-watcher.toml"
    path.write_text(f'[watch]\nstate_dir = "{tmp_path / "state"}"\n')
    return path


@pytest.fixture
def history(config: Path, tmp_path: Path) -> Path:
    store_events(
        tmp_path / "state",
        make_event("run_old", "run.completed", at=NOW - 5 * HOUR),
        make_event("run_gpu", "run.failed", at=NOW - 2 * HOUR, code="GPU_PROVIDER_ERROR"),
        make_event("run_mod", "run.failed", at=NOW - 30 * 60_000, code="GENERATION_PROMPT_MODERATED",
                   project="prj_b"),
        make_event("run_new", "run.completed", at=NOW - 60_000, project="prj_b"),
    )
    return config


def run_ids(out: str) -> list[str]:
    return [word for line in out.splitlines() for word in line.split() if word.startswith("run_")]


def events(capsys, *argv: str) -> str:
    assert main(["events", *argv]) == 0
    return capsys.readouterr().out


def test_all_events_newest_last_in_the_stdout_sinks_text_format(history: Path, capsys) -> None:
    out = events(capsys, "-c", str(history))
    assert run_ids(out) == ["run_old", "run_gpu", "run_mod", "run_new"]
    lines = out.splitlines()
    assert lines[1].startswith("2025-11-29T05:06:40Z ❌ run.failed · CCTV Cam · run_gpu · GPU_PROVIDER_ERROR")
    assert "https://media.example/run_new.png" in lines[3]


def test_filters(history: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ["-c", str(history)]
    assert run_ids(events(capsys, *cfg, "--type", "run.failed")) == ["run_gpu", "run_mod"]
    assert run_ids(events(capsys, *cfg, "--error-code", "GPU_*")) == ["run_gpu"]
    assert run_ids(events(capsys, *cfg, "--error-code", "GPU_*,GENERATION_*")) == ["run_gpu", "run_mod"]
    assert run_ids(events(capsys, *cfg, "--project", "prj_b")) == ["run_mod", "run_new"]
    assert run_ids(events(capsys, *cfg, "--project", "prj_b", "--type", "run.completed")) == ["run_new"]
    assert run_ids(events(capsys, *cfg, "-n", "2")) == ["run_mod", "run_new"]
    monkeypatch.setattr("watcher.commands._common.now_ms", lambda: NOW)
    assert run_ids(events(capsys, *cfg, "--since", "3h")) == ["run_gpu", "run_mod", "run_new"]
    assert run_ids(events(capsys, *cfg, "--since", "45m", "--type", "run.failed")) == ["run_mod"]
    assert run_ids(events(capsys, *cfg, "--since", "2025-11-29T06:30:00Z")) == ["run_mod", "run_new"]
    assert events(capsys, *cfg, "--error-code", "NOPE_*") == ""


def test_json_lines_are_the_events_as_sinks_get_them(history: Path, capsys) -> None:
    out = events(capsys, "-c", str(history), "--json", "--type", "run.failed")
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["data"]["run_id"] for d in docs] == ["run_gpu", "run_mod"]
    assert docs[0]["api_version"] == "flora-watcher.v1"
    assert docs[0]["data"]["error_code"] == "GPU_PROVIDER_ERROR"


@pytest.mark.parametrize("argv", [
    ["--type", "run.exploded"], ["--since", "yesterday-ish"],
    ["-n", "-1"], ["-n", "ten"], ["--type", ""], ["--type", " , "], ["--error-code", ""], ["--project", ""],
])
def test_usage_errors_are_one_line_and_exit_2(config: Path, capsys, argv: list[str]) -> None:
    """A value that would be silently ignored (`-n -1` printed everything, `--type ''` meant every type) is a
    usage error like any other: one line naming the option, exit 2 (issue 24)."""
    assert main(["events", "-c", str(config), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"flora-watcher events: argument {argv[0]}") and "--help" in line, line


def test_limit_zero_prints_nothing(history: Path, capsys) -> None:
    assert events(capsys, "-c", str(history), "-n", "0") == ""
    assert run_ids(events(capsys, "-c", str(history), "-n", "1")) == ["run_new"]


def test_no_state_yet(config: Path, capsys) -> None:
    assert "no state yet" in events(capsys, "-c", str(config))


def test_parse_since() -> None:
    assert parse_since("2h", NOW) == NOW - 2 * HOUR
    assert parse_since("1d12h", NOW) == NOW - 36 * HOUR
    assert parse_since("90s", NOW) == NOW - 90_000
    assert parse_since("2025-11-29T07:06:40", NOW) == NOW
    assert parse_since("2025-11-29T08:06:40+01:00", NOW) == NOW


def test_follow_prints_new_events_as_they_are_stored(history: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("flora-watcher")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLORA_")}
    proc = subprocess.Popen(
        [str(exe), "events", "-c", str(history), "--follow", "--follow-interval", "0.05", "--type", "run.failed",
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    out = Lines(proc)
    try:
        lines = out.next(2)
        assert [json.loads(line)["data"]["run_id"] for line in lines] == ["run_gpu", "run_mod"]
        store_events(tmp_path / "state", make_event("run_skip", "run.completed", at=NOW),
                     make_event("run_live", "run.failed", at=NOW, code="LLM_REFUSAL"))
        (line,) = out.next(1)
        assert json.loads(line)["data"]["run_id"] == "run_live"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()


class Lines:
    """A child's stdout, line by line, read by a thread (so a silent child cannot hang the test)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._queue: queue.Queue[bytes] = queue.Queue()
        stdout = proc.stdout
        threading.Thread(target=lambda: [self._queue.put(b) for b in iter(stdout.readline, b"")], daemon=True).start()

    def next(self, count: int, timeout: float = 60.0) -> list[str]:  # liveness: a busy machine starts Python slowly
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                got.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())).decode().rstrip("\n"))
            except queue.Empty:
                raise AssertionError(f"only {got} within {timeout}s") from None
        return got
