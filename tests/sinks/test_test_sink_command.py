"""`flora-watcher test-sink NAME`: one synthetic event through the sink's real path; 0 delivered, 1 not."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from tests.sinks.helpers import Receiver, ThreadedReceiver
from watcher.cli import main
from watcher.commands.test_sink import TEST_TECHNIQUE, synthetic_event

SECRET = "whsec_" + base64.b64encode(b"test-sink secret key 32 bytes!!!").decode()
TOKEN = "tok-SECRETPATH-4242"


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with ThreadedReceiver() as receiver:
        yield receiver


@pytest.fixture
def config(tmp_path: Path, hook: Receiver, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPS_URL", hook.url(f"/hooks/{TOKEN}"))
    monkeypatch.setenv("OPS_SECRET", SECRET)
    monkeypatch.delenv("FLORA_API_KEY", raising=False)
    path = tmp_path / "flora-watcher.toml"
    path.write_text(f"""
[watch]
state_dir = "{tmp_path / 'state'}"

[[sinks]]
name = "ops"
type = "webhook"
url = "${{OPS_URL}}"
secret = "${{OPS_SECRET}}"
events = ["run.failed"]

[[sinks]]
name = "journal"
type = "file"
path = "{tmp_path / 'events.jsonl'}"
""")
    return path


def test_delivered_prints_the_receivers_answer_and_exits_0(config: Path, hook: Receiver,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-sink", "ops", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ops: delivered (HTTP 200: ok)" in out
    (req,) = hook.requests
    event = Webhook(SECRET).verify(req.body, req.headers)
    assert event["type"] == "run.failed"
    assert event["data"]["run_id"].startswith("run_test_")
    assert event["data"]["technique"]["name"] == TEST_TECHNIQUE


def test_not_delivered_prints_why_without_secrets_and_exits_1(config: Path, hook: Receiver,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    hook.answer(500, f"boom at /hooks/{TOKEN}")
    assert main(["test-sink", "ops", "-c", str(config)]) == 1
    captured = capsys.readouterr()
    assert "not delivered (server_error, retryable): HTTP 500 from receiver" in captured.err
    for secret in (TOKEN, SECRET, hook.url(f"/hooks/{TOKEN}")):
        assert secret not in captured.out + captured.err


def test_other_types_and_a_note_when_filters_would_skip_it(config: Path, hook: Receiver,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-sink", "ops", "-c", str(config), "--type", "run.completed"]) == 0
    assert "would not receive run.completed" in capsys.readouterr().err
    assert json.loads(hook.requests[0].body)["type"] == "run.completed"


def test_a_file_sink_is_tested_too(config: Path, tmp_path: Path) -> None:
    assert main(["test-sink", "journal", "-c", str(config)]) == 0
    (line,) = (tmp_path / "events.jsonl").read_text().splitlines()
    assert json.loads(line)["data"]["technique"]["name"] == TEST_TECHNIQUE


def test_an_unknown_sink_lists_the_known_ones(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-sink", "nope", "-c", str(config)]) == 2
    assert "no sink named 'nope'; configured sinks: ops, journal" in capsys.readouterr().err


def test_connection_refused_exits_1(config: Path, hook: Receiver, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.sinks.helpers import closed_port

    monkeypatch.setenv("OPS_URL", f"http://127.0.0.1:{closed_port()}/hooks/{TOKEN}")
    assert main(["test-sink", "ops", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "network, retryable" in err and TOKEN not in err


def test_synthetic_events_are_unmistakable() -> None:
    now = int(time.time() * 1000)
    failed = synthetic_event("run.failed", now_ms=now, token=os.urandom(6).hex())
    assert failed.data["error_code"] == "TEST_EVENT" and failed.data["status"] == "failed"
    started = synthetic_event("run.started", now_ms=now, token="abc")
    assert started.data["status"] == "running" and started.data["completed_at"] is None
    assert started.id == synthetic_event("run.started", now_ms=now + 5, token="abc").id  # id = f(run, type)
