"""The pure parts of supervision and of waiting out a state store: the backoff of a restart and of a store
retry (capped, jittered, never zero), and when a restart's backoff starts over."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from watcher.outage import STORE_RETRY_MAX_S, OutageState, decide, store_retry_s
from watcher.policy import retry_delay
from watcher.supervisor import RESTART_FIRST_S, RESTART_MAX_S, STABLE_S, describe, next_attempt


@given(st.integers(min_value=0, max_value=500), st.floats(min_value=0, max_value=1))
def test_a_restart_waits_between_half_and_all_of_a_doubling_capped_ceiling(attempt: int, rand: float) -> None:
    delay = retry_delay(attempt, rand, first=RESTART_FIRST_S, cap=RESTART_MAX_S)
    ceiling = min(RESTART_MAX_S, RESTART_FIRST_S * 2**min(attempt, 62))
    assert ceiling / 2 <= delay <= ceiling  # never 0: a task that dies at once cannot spin


def test_the_store_is_tried_again_within_five_seconds() -> None:
    assert [store_retry_s(n, 1.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, STORE_RETRY_MAX_S, STORE_RETRY_MAX_S]
    assert store_retry_s(0, 0.0) == 0.25


def test_a_task_that_ran_for_a_while_before_it_crashed_restarts_after_the_shortest_wait() -> None:
    assert next_attempt(-1, 0.1) == 0  # the first crash
    assert next_attempt(0, 0.1) == 1 and next_attempt(4, 3.0) == 5  # crashing again soon: wait longer
    assert next_attempt(4, STABLE_S) == 0  # it ran a minute: a new problem, start over


def test_describe_names_the_error_in_one_line() -> None:
    assert describe(None) == "ended unexpectedly"
    assert describe(KeyError("k")) == "KeyError: 'k'"
    assert describe(RuntimeError("line one\nline two")) == "RuntimeError: line one"
    assert describe(RuntimeError()) == "RuntimeError"


def test_a_state_store_outage_is_told_in_store_lines() -> None:
    state, line = decide(OutageState(), ok=False, now_ms=0, error="sweep: connection refused", subject="store",
                         counted="failures")
    assert line is not None and line.event == "store.unavailable"
    state, line = decide(state, ok=False, now_ms=61_000, error="x", subject="store", counted="failures")
    assert line is not None and line.event == "store.still_unavailable" and line.fields["failures"] == 2
    _, line = decide(state, ok=True, now_ms=62_000, subject="store", counted="failures")
    assert line is not None and (line.event, line.fields) == ("store.recovered", {"outage_s": 62, "failures": 2})
