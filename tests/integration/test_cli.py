"""The command line as a user meets it: exit codes and output of every store-reading command, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.sinks.helpers import make_event
from watcher.cli import main
from watcher.store import Store, store_path
from watcher.store_api import DEAD, DELIVERED, Outcome

CANARY_URL = "https://hooks.slack.com/services/T000/B000/CANARYcanary0123456789"


@pytest.fixture
def config(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("FLORA_API_KEY", "sk_live_CANARYkey0123456789")
    monkeypatch.setenv("CHAT_URL", CANARY_URL)
    cfg = tmp_path / "flora-watcher.toml"
    cfg.write_text(f"""
[watch]
state_dir = "{tmp_path / 'state'}"

[[sinks]]
name = "journal"
type = "file"
path = "{tmp_path / 'events.jsonl'}"

[[sinks]]
name = "chat"
type = "slack"
url = "${{CHAT_URL}}"
""")
    return cfg


def populate(cfg_dir: Path) -> list[str]:
    """A state store with two events: one delivered to both sinks, one dead-lettered on the chat sink."""
    store = Store.open(store_path(cfg_dir / "state"))
    try:
        ok, bad = make_event(run_id="run_ok", event_type="run.completed"), make_event(run_id="run_bad")
        store.commit_sweep(upserts=[], deletes=[], events=[(ok, ["journal", "chat"]), (bad, ["journal", "chat"])],
                           meta={"last_sweep_ms": "1", "last_sweep_ok_ms": "1"}, now_ms=1_000)
        journal, chat = store.due_deliveries("journal", 10_000), store.due_deliveries("chat", 10_000)
        store.record_outcomes([Outcome(d.id, d.sink, DELIVERED, 2_000) for d in journal])
        store.record_outcomes([
            Outcome(d.id, d.sink, DEAD, 3_000, status=404, error=f"HTTP 404 from {CANARY_URL}") if d.event_id == bad.id
            else Outcome(d.id, d.sink, DELIVERED, 2_000, status=200)
            for d in chat
        ])
        return [ok.id, bad.id]
    finally:
        store.close()


def test_check_config_exit_codes(config: Path, tmp_path: Path, capsys) -> None:
    assert main(["check-config", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "config OK" in out and "CANARY" not in out
    broken = tmp_path / "broken.toml"
    broken.write_text('[watch]\nintervall = 5\n')
    assert main(["check-config", "-c", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "watch.intervall" in err and len(err.strip().splitlines()) == 1


def test_status_before_any_run_says_so(config: Path, capsys) -> None:
    assert main(["status", "-c", str(config)]) == 0
    assert "no state yet" in capsys.readouterr().out


def test_status_shows_outbox_and_sink_health_without_secrets(config: Path, capsys) -> None:
    populate(config.parent)
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "1 dead letter," in out
    assert "chat [slack]" in out and "journal [file]" in out
    assert "CANARY" not in out
    assert main(["status", "-c", str(config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["deliveries"]["dead"] == 1
    assert "CANARY" not in json.dumps(data)


def test_deliveries_lists_dead_letters_and_replay_requeues_them(config: Path, capsys) -> None:
    ok_id, bad_id = populate(config.parent)
    assert main(["deliveries", "-c", str(config)]) == 0
    assert "no pending deliveries" in capsys.readouterr().out
    assert main(["deliveries", "-c", str(config), "--failed"]) == 0
    out = capsys.readouterr().out
    assert bad_id in out and "chat" in out and "CANARY" not in out
    assert main(["replay", "-c", str(config), "--failed"]) == 0
    assert "re-queued 1 delivery\n" in capsys.readouterr().out
    assert main(["deliveries", "-c", str(config), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["event_id"], r["sink"], r["state"]) for r in rows] == [(bad_id, "chat", "pending")]
    # a delivered event can be sent again on purpose
    assert main(["replay", "-c", str(config), ok_id, "evt_unknown"]) == 1  # an id that matches nothing
    captured = capsys.readouterr()
    assert "re-queued 2 deliveries" in captured.out and "unknown event: evt_unknown" in captured.err


def test_replay_needs_ids_or_failed(config: Path, capsys) -> None:
    assert main(["replay", "-c", str(config)]) == 2
    assert "EVENT_ID" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys) -> None:
    assert main(["no-such-command"]) == 2
    assert main(["run", "--no-such-flag"]) == 2


def test_a_missing_config_file_named_with_c_is_a_config_error(tmp_path: Path, capsys) -> None:
    assert main(["status", "-c", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err
