"""Quiet, truthful logs in an API outage (issue 14): the pure rule (tests/integration/test_outage_logs.py runs
the sweep through one)."""

from __future__ import annotations

from watcher.outage import OutageState, decide, reminder_due_ms

MIN = 60_000
T0 = 1_764_399_000_000


def replay(outcomes: list[tuple[int, bool]], state: OutageState | None = None) -> list[tuple[int, str, dict]]:
    state = state or OutageState()
    lines = []
    for now, ok in outcomes:
        state, line = decide(state, ok=ok, now_ms=now, error=None if ok else "ApiUnavailableError: down")
        if line is not None:
            lines.append((now, line.event, line.fields))
    return lines


def test_an_hour_of_failed_sweeps_at_interval_5_is_six_lines() -> None:
    """First failure, reminders after 1, 5, 15 and 60 minutes, recovery: not 720 x 5 lines."""
    ok_before = [(T0 - 5_000, True)]
    failing = [(T0 + i * 5_000, False) for i in range(721)]  # 0 s … 3600 s
    lines = replay([*ok_before, *failing, (T0 + 3_605_000, True)])
    assert [(now - T0, event) for now, event, _ in lines] == [
        (0, "api.unavailable"),
        (1 * MIN, "api.still_unavailable"),
        (5 * MIN, "api.still_unavailable"),
        (15 * MIN, "api.still_unavailable"),
        (60 * MIN, "api.still_unavailable"),
        (60 * MIN + 5_000, "api.recovered"),
    ]
    assert lines[0][2]["last_success_s_ago"] == 5
    assert lines[1][2] == {"error": "ApiUnavailableError: down", "failed_sweeps": 13, "outage_s": 60,
                           "last_success_s_ago": 65}
    assert lines[4][2]["failed_sweeps"] == 721
    assert lines[-1][2] == {"outage_s": 3605, "failed_sweeps": 721}


def test_after_the_last_step_reminders_come_hourly_and_a_long_gap_gives_one_line() -> None:
    assert [reminder_due_ms(0, i) // MIN for i in range(6)] == [1, 5, 15, 60, 120, 180]
    # the process was suspended for 3 hours mid-outage: one reminder, not four
    lines = replay([(T0, False), (T0 + 30_000, False), (T0 + 180 * MIN, False), (T0 + 181 * MIN, False)])
    assert [event for _, event, _ in lines] == ["api.unavailable", "api.still_unavailable"]
    assert replay([(T0 + 240 * MIN, False)], decide(OutageState(), ok=False, now_ms=T0)[0])[0][1] == (
        "api.still_unavailable")


def test_healthy_sweeps_say_nothing_and_an_outage_from_the_start_has_no_last_success() -> None:
    assert replay([(T0 + i * 5_000, True) for i in range(100)]) == []
    lines = replay([(T0, False), (T0 + MIN, False)])
    assert lines[0][2]["last_success_s_ago"] is None and lines[1][2]["last_success_s_ago"] is None
