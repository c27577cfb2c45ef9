"""Readiness per role (issue 24, item 5): the pure decision behind ``/readyz``, the status page and
``/api/v1/status``, as a table. A standby that heartbeats and delivers is ready; every role is not ready while
shutting down, while its state store is unreachable or while a supervised task is down, and says why."""

from __future__ import annotations

import pytest

from watcher.readiness import STANDBY, STARTING, SWEEPER, Facts, Readiness, decide

NOW = 1_000_000


def facts(**kw) -> Facts:
    base = dict(now_ms=NOW, role=SWEEPER, sweep_window_s=15.0, heartbeat_window_s=10.0)
    return Facts(**{**base, **kw})


CASES = [
    # (facts, ready, reason)
    (facts(last_sweep_ok_ms=NOW - 2_100), True, "last successful sweep 2.1s ago"),
    (facts(), False, "no successful sweep yet"),
    (facts(last_sweep_error="ApiUnavailableError: down"), False, "no successful sweep yet: ApiUnavailableError: down"),
    (facts(last_sweep_ok_ms=NOW - 16_000, last_sweep_error="ApiUnavailableError: down"), False,
     "last successful sweep 16s ago (limit 15s): ApiUnavailableError: down"),
    (facts(last_sweep_ok_ms=NOW - 16_000), False, "last successful sweep 16s ago (limit 15s)"),
    # a standby is ready while its lease heartbeat is fresh, whatever the sweeps (it does not sweep)
    (facts(role=STANDBY, last_heartbeat_ok_ms=NOW - 400), True, "lease heartbeat 0.4s ago, another instance sweeps"),
    (facts(role=STANDBY, last_heartbeat_ok_ms=NOW - 400, last_sweep_ok_ms=None), True,
     "lease heartbeat 0.4s ago, another instance sweeps"),
    (facts(role=STANDBY), False, "no lease heartbeat yet"),
    (facts(role=STANDBY, last_heartbeat_ok_ms=NOW - 11_000), False, "last lease heartbeat 11s ago (limit 10s)"),
    (facts(role=STARTING), False, "opening the state store"),
    # in every role: the store, a task down, shutting down, in that order
    (facts(role=STARTING, store_error="cannot connect: connection refused"), False,
     "state store unreachable: cannot connect: connection refused"),
    (facts(role=STANDBY, last_heartbeat_ok_ms=NOW, store_error="due_deliveries failed: the database system is "
                                                                 "shutting down"),
     False, "state store unreachable: due_deliveries failed: the database system is shutting down"),
    (facts(last_sweep_ok_ms=NOW, tasks_down={"sink:hook": "RuntimeError: bug"}), False,
     "task sink:hook down: RuntimeError: bug"),
    (facts(role=STANDBY, last_heartbeat_ok_ms=NOW, tasks_down={"sink:b": "x", "sink:a": "KeyError: 'k'"}), False,
     "task sink:a down: KeyError: 'k' (and 1 more)"),
    (facts(last_sweep_ok_ms=NOW, tasks_down={"lease": "x"}, store_error="disk full"), False,
     "state store unreachable: disk full"),
    (facts(last_sweep_ok_ms=NOW, stopping=True, store_error="disk full", tasks_down={"lease": "x"}), False,
     "shutting down"),
]


@pytest.mark.parametrize(("f", "ready", "reason"), CASES)
def test_the_decision(f: Facts, ready: bool, reason: str) -> None:
    assert decide(f) == Readiness(ready, f.role, reason)


def test_the_readyz_line_says_ok_or_not_ready_then_the_role() -> None:
    assert decide(facts(last_sweep_ok_ms=NOW - 2_100)).line() == "ok: sweeper, last successful sweep 2.1s ago"
    assert decide(facts(role=STANDBY, store_error="connection refused")).line() == (
        "not ready: standby, state store unreachable: connection refused")
