"""Issue 14: the operator-facing commands tell the truth — exit codes (bugs 5 and 6), status, plurals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sinks.helpers import closed_port, make_event
from watcher import statelock
from watcher.cli import main
from watcher.commands.status import tracked_line
from watcher.store import Store, store_path
from watcher.store_api import DEAD, Outcome

BIN = Path(sys.executable).parent / "flora-watcher"


@pytest.fixture
def config(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("FLORA_API_KEY", "sk_test_ops0123456789")
    (tmp_path / "cfg").mkdir()
    cfg = tmp_path / "cfg" / "flora-watcher.toml"
    cfg.write_text(f"""
[api]
base_url = "http://127.0.0.1:{closed_port()}/api/v1"
[watch]
state_dir = "../state"
[[sinks]]
name = "journal"
type = "file"
path = "{tmp_path / 'events.jsonl'}"
""")
    return cfg


def populate(state_dir: Path) -> str:
    store = Store.open(store_path(state_dir))
    try:
        event = make_event(run_id="run_one")
        store.commit_sweep(upserts=[], deletes=[], events=[(event, ["journal"])],
                           meta={"last_sweep_ms": "1000", "last_sweep_ok_ms": "1000",
                                 "high_watermark_ms:ws|prj|tech": "5"}, now_ms=1_000)
        (delivery,) = store.due_deliveries("journal", 10_000)
        store.record_outcomes([Outcome(delivery.id, "journal", DEAD, 3_000, status=400, error="HTTP 400")])
        return event.id
    finally:
        store.close()


# ------------------------------------------------------------------------------------ bug 5: the lock


def test_a_second_run_on_a_locked_state_is_refused_with_the_holders_pid(config: Path, tmp_path: Path,
                                                                         capsys) -> None:
    with statelock.acquire(tmp_path / "state"):
        assert main(["run", "--once", "-c", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"PID {os.getpid()}" in err and str(tmp_path / "state") in err


def test_the_lock_is_free_again_once_its_holder_is_gone(tmp_path: Path) -> None:
    lock = statelock.acquire(tmp_path / "s")
    with pytest.raises(statelock.StateLocked):
        statelock.acquire(tmp_path / "s")
    lock.release()
    statelock.acquire(tmp_path / "s").release()


def test_two_daemons_on_one_sqlite_state_the_second_exits_2(config: Path, tmp_path: Path) -> None:
    """The real thing: a running daemon (its API down, so it just keeps sweeping) and a second `run`."""
    env = {**os.environ, "FLORA_API_KEY": "sk_test_ops0123456789"}
    first = subprocess.Popen([str(BIN), "--log-format", "json", "run", "-c", str(config)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock_file = tmp_path / "state" / statelock.LOCK_FILENAME
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if lock_file.exists() and lock_file.read_text().strip() == str(first.pid):
                break
            assert first.poll() is None, "the first daemon exited"
            time.sleep(0.05)
        second = subprocess.run([str(BIN), "run", "-c", str(config)], env=env, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2
        assert f"PID {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0


# -------------------------------------------------------------------------- bug 6: names and ids


def test_unknown_sink_names_are_usage_errors_everywhere(config: Path, tmp_path: Path, capsys) -> None:
    populate(tmp_path / "state")
    assert main(["deliveries", "--sink", "nosuch", "-c", str(config)]) == 2
    assert main(["replay", "--failed", "--sink", "nosuch", "-c", str(config)]) == 2
    assert main(["test-sink", "nosuch", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("no sink named 'nosuch'") == 3
    assert main(["deliveries", "--failed", "--sink", "journal", "-c", str(config)]) == 0


def test_a_sink_removed_from_the_config_can_still_be_named(config: Path, tmp_path: Path, capsys) -> None:
    populate(tmp_path / "state")
    config.write_text(config.read_text().replace('name = "journal"', 'name = "renamed"'))
    assert main(["deliveries", "--failed", "--sink", "journal", "-c", str(config)]) == 0
    assert "run_one" in capsys.readouterr().out


def test_replay_of_an_id_that_matches_nothing_exits_1(config: Path, tmp_path: Path, capsys) -> None:
    event_id = populate(tmp_path / "state")
    assert main(["replay", "evt_nosuch", "-c", str(config)]) == 1
    captured = capsys.readouterr()
    assert "unknown event: evt_nosuch" in captured.err and "re-queued 0 deliveries" in captured.out
    assert main(["replay", event_id, "-c", str(config)]) == 0
    assert "re-queued 1 delivery\n" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- status, plurals


def test_status_json_has_no_internal_keys_and_integer_ms_timestamps(config: Path, tmp_path: Path,
                                                                   capsys) -> None:
    populate(tmp_path / "state")
    assert main(["status", "--json", "-c", str(config)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "high_watermark" not in json.dumps(doc)
    assert doc["meta"]["last_sweep_ms"] == 1000 and doc["meta"]["last_sweep_ok_ms"] == 1000
    assert doc["meta"]["first_start_ms"] is None

    def timestamps(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from timestamps(v, f"{path}.{k}")
                if k.endswith("_ms"):
                    yield f"{path}.{k}", v
    found = dict(timestamps(doc))
    assert found and all(v is None or type(v) is int for v in found.values()), found
    assert doc["path"] == str((tmp_path / "state" / "state.sqlite3").resolve())


def test_status_prints_the_state_path_resolved_and_singular_counts(config: Path, tmp_path: Path,
                                                                  capsys) -> None:
    populate(tmp_path / "state")
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"state:        {(tmp_path / 'state' / 'state.sqlite3').resolve()} (" in out
    assert ".." not in out
    assert "1 dead letter," in out and "1 event" in out
    assert main(["deliveries", "--failed", "-c", str(config)]) == 0
    assert "1 attempt," in capsys.readouterr().out


def test_active_runs_are_not_counted_as_finished() -> None:
    line = tracked_line({"completed": 7, "failed": 2, "running": 4, "pending": 1, "queued_new": 1})
    assert line == "6 active (pending 1, queued_new 1, running 4), 9 recently finished (completed 7, failed 2)"
    assert tracked_line({}) == "0 active, 0 recently finished"


# ------------------------------------------------------------------------- global options, anywhere


@pytest.mark.parametrize(
    ("argv", "fmt", "level"),
    [
        (["run"], "auto", None),
        (["--log-format", "json", "run"], "json", None),
        (["run", "--log-format", "json"], "json", None),
        (["run", "--once", "--log-level", "debug", "--log-format", "console"], "console", "debug"),
        (["--log-format", "json", "status", "--log-format", "console"], "console", None),  # the later one wins
    ],
)
def test_global_options_work_before_and_after_the_command(argv, fmt, level) -> None:
    from watcher.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.log_format, args.log_level) == (fmt, level)


# ------------------------------------------------------------------------- a paused sink in deliveries


def test_the_next_attempt_shown_is_the_real_one() -> None:
    from watcher.commands.deliveries import next_attempt_text, real_next_attempt_ms

    now = 1_764_400_000_000
    assert next_attempt_text(now + 60_000, now, None).startswith("next attempt 2025-")
    assert next_attempt_text(now - 60_000, now, None) == "due now"  # never a time in the past
    paused = next_attempt_text(now - 60_000, now, (now - 120_000, now + 5_000))
    assert paused.startswith("waiting: sink paused since") and "next probe" in paused
    assert real_next_attempt_ms(now - 60_000, (now - 120_000, now + 5_000)) == now + 5_000
    assert real_next_attempt_ms(now + 60_000, (now - 120_000, now + 5_000)) == now + 60_000
    assert real_next_attempt_ms(now - 60_000, None) == now - 60_000


def test_deliveries_of_a_paused_sink_say_so(config: Path, tmp_path: Path, capsys) -> None:
    populate(tmp_path / "state")
    store = Store.open(store_path(tmp_path / "state"))
    try:
        store.replay_failed(now_ms=1_000)
        store.set_sink_pause("journal", since_ms=2_000, next_probe_ms=4_000_000_000_000)
    finally:
        store.close()
    assert main(["deliveries", "-c", str(config)]) == 0
    assert "waiting: sink paused since" in capsys.readouterr().out
    assert main(["deliveries", "--json", "-c", str(config)]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["next_attempt_ms"], row["sink_paused_since_ms"]) == (4_000_000_000_000, 2_000)
    assert main(["status", "-c", str(config)]) == 0
    assert "PAUSED since" in capsys.readouterr().out
