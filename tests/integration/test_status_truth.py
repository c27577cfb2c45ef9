"""`status` and `deliveries` tell the truth about a paused sink (issue 24, item 6).

After a restart `status` showed "PAUSED … next probe <a time in the past>" for a sink the new process was simply
retrying: the pause is written by the process whose circuit breaker opened, and a process started later begins
with the breaker closed, so the record outlived it. A pause that still holds shows when the next probe comes;
one whose probe is long overdue says the daemon may not be running; a left-over one gives way to the sink's
real health.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sinks.helpers import make_event
from watcher.cli import main
from watcher.commands._common import PROBE_GRACE_MS, live_pause, probe_text
from watcher.store import Store, store_path
from watcher.store_api import RETRY, Outcome

NOW = 1_764_400_000_000
SECOND = 1_000


def test_a_pause_holds_until_a_later_attempt_shows_it_is_left_over() -> None:
    pause = (NOW - 60 * SECOND, NOW + 5 * SECOND)
    assert live_pause(None, last_success_ms=None, last_failure_ms=None) is None
    assert live_pause(pause, last_success_ms=None, last_failure_ms=NOW - 60 * SECOND) == pause  # what paused it
    assert live_pause(pause, last_success_ms=NOW - 120 * SECOND, last_failure_ms=None) == pause  # before it
    # a later process delivered (a success after the pause began) or retried after the probe was due
    assert live_pause(pause, last_success_ms=NOW - 30 * SECOND, last_failure_ms=None) is None
    assert live_pause(pause, last_success_ms=None, last_failure_ms=NOW + 6 * SECOND) is None
    assert live_pause((NOW, None), last_success_ms=None, last_failure_ms=NOW + 1) == (NOW, None)  # probing


def test_the_next_probe_is_never_shown_as_a_time_in_the_past() -> None:
    def text(probe: int | None) -> str:
        return probe_text(probe, NOW, timeout_s=10, last_sweep_ms=NOW - 600 * SECOND)

    assert text(NOW + 4 * SECOND).startswith("next probe in 4s (")
    assert text(None) == "probing"
    assert text(NOW - 3 * SECOND) == "probing now"  # sent on time, may be waiting out the sink's timeout
    assert text(NOW - 10 * SECOND - PROBE_GRACE_MS) == "probing now"
    overdue = text(NOW - 300 * SECOND)
    assert overdue == "next probe overdue by 5m: is the daemon running? (last sweep 10m ago)"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "flora-watcher.toml"
    cfg.write_text(f'[watch]\nstate_dir = "{tmp_path / "state"}"\n\n'
                   f'[[sinks]]\nname = "journal"\ntype = "file"\npath = "{tmp_path / "events.jsonl"}"\n')
    return cfg


def paused_sink(state_dir: Path, *, since: int, probe: int, retried_at: int | None) -> None:
    """A sink paused by a process that is gone; with ``retried_at``, a later process retried a delivery then."""
    with Store.open(store_path(state_dir)) as store:
        store.commit_sweep(upserts=[], deletes=[], events=[(make_event(run_id="run_one"), ["journal"])],
                           meta={"last_sweep_ms": str(since)}, now_ms=since - SECOND)
        (delivery,) = store.due_deliveries("journal", since)
        store.record_outcomes([Outcome(delivery.id, "journal", RETRY, since, error="connection refused",
                                       next_attempt_ms=since + SECOND, health=False)])
        store.set_sink_pause("journal", since_ms=since, next_probe_ms=probe)
        if retried_at is not None:
            store.record_outcomes([Outcome(delivery.id, "journal", RETRY, retried_at, error="connection refused",
                                           next_attempt_ms=retried_at + 60 * SECOND, health=False)])


def sink_line(out: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith("  journal [file]")]
    return line


def test_after_a_restart_a_retried_sink_is_failing_not_paused(config: Path, tmp_path: Path, capsys) -> None:
    from watcher.commands._common import now_ms

    now = now_ms()
    paused_sink(tmp_path / "state", since=now - 600 * SECOND, probe=now - 595 * SECOND, retried_at=now - SECOND)
    assert main(["status", "-c", str(config)]) == 0
    line = sink_line(capsys.readouterr().out)
    assert "PAUSED" not in line and "failing (2 in a row): connection refused" in line, line
    assert main(["deliveries", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "paused" not in out and "next attempt" in out, out


def test_a_pause_whose_probe_is_long_overdue_asks_whether_the_daemon_runs(config: Path, tmp_path: Path,
                                                                          capsys) -> None:
    from watcher.commands._common import now_ms

    now = now_ms()
    paused_sink(tmp_path / "state", since=now - 600 * SECOND, probe=now - 595 * SECOND, retried_at=None)
    assert main(["status", "-c", str(config)]) == 0
    line = sink_line(capsys.readouterr().out)
    assert "PAUSED since" in line and "next probe overdue by 9m: is the daemon running? (last sweep 10m ago)" in line
    assert main(["deliveries", "-c", str(config)]) == 0
    assert "next probe overdue by 9m" in capsys.readouterr().out
