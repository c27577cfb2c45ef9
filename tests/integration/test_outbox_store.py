"""The outbox methods the dispatcher relies on (issue 10), on both state store back ends: claims that keep the
events of a run in order, the probe's claim, the group commit of outcomes, make_due, sink pauses."""

from __future__ import annotations

from tests.integration import test_store as store_tests
from tests.integration.test_store import T0, commit_events, make_event
from watcher.store_api import Outcome

store = store_tests.store  # the same fixtures: SQLite and PostgreSQL
db_path = store_tests.db_path


def ids(deliveries) -> list[str]:
    return [d.event_id for d in deliveries]


def test_a_runs_later_event_waits_until_the_earlier_one_is_settled(store) -> None:
    started = make_event("run_a", "run.started")
    failed = make_event("run_a", "run.failed")
    other = make_event("run_b", "run.completed")
    commit_events(store, (started, ["ops"]), (failed, ["ops"]), (other, ["ops"]))
    due = store.due_deliveries("ops", T0)
    assert ids(due) == [started.id, other.id]  # not the run's second event while its first is pending
    assert {d.run_id for d in due} == {"run_a", "run_b"}
    first = due[0]
    store.record_outcomes([Outcome(first.id, "ops", "retry", T0 + 1, status=503, error="HTTP 503",
                                   next_attempt_ms=T0 + 5_000, health=False)])
    assert ids(store.due_deliveries("ops", T0 + 10)) == [other.id]  # still blocked by the retrying first event
    store.record_outcomes([Outcome(first.id, "ops", "delivered", T0 + 5_000, status=200, health=True)])
    assert ids(store.due_deliveries("ops", T0 + 5_000)) == [failed.id, other.id]


def test_record_outcomes_commits_many_outcomes_and_the_sinks_health_at_once(store) -> None:
    events = [make_event(f"run_{i}") for i in range(4)]
    commit_events(store, *[(e, ["ops", "chat"]) for e in events])
    ops = store.due_deliveries("ops", T0)
    chat = store.due_deliveries("chat", T0)
    store.record_outcomes([
        Outcome(ops[0].id, "ops", "delivered", T0 + 1, status=200, health=True),
        Outcome(ops[1].id, "ops", "retry", T0 + 2, status=500, error="HTTP 500", next_attempt_ms=T0 + 60_000,
                health=False),
        Outcome(ops[2].id, "ops", "dead", T0 + 3, status=404, error="HTTP 404", health=False),
        Outcome(ops[3].id, "ops", "delivered", T0 + 4, status=200, health=True),
        Outcome(chat[0].id, "chat", "retry", T0 + 5, status=503, error="HTTP 503", next_attempt_ms=T0 + 9,
                health=False),
        Outcome(chat[1].id, "chat", "dead", T0 + 6, error="sink disabled", attempted=False),
    ])
    summary = store.summary()["sinks"]
    assert (summary["ops"]["delivered"], summary["ops"]["pending"], summary["ops"]["dead"]) == (2, 1, 1)
    assert summary["ops"]["consecutive_failures"] == 0 and summary["ops"]["last_success_ms"] == T0 + 4
    assert summary["chat"]["consecutive_failures"] == 1 and summary["chat"]["last_error"] == "HTTP 503"
    (dead,) = store.list_deliveries(failed=True, sink="chat")
    assert dead.attempts == 0 and dead.last_error == "sink disabled"  # not attempted: not counted
    (retrying,) = [d for d in store.list_deliveries(failed=False, sink="ops")]
    assert (retrying.attempts, retrying.next_attempt_ms, retrying.last_status) == (1, T0 + 60_000, 500)


def test_the_probe_make_due_and_next_due_after(store) -> None:
    a, b = make_event("run_a"), make_event("run_b")
    commit_events(store, (a, ["ops"]), (b, ["ops"]))
    da, db = store.due_deliveries("ops", T0)
    store.record_outcomes([
        Outcome(da.id, "ops", "retry", T0, error="HTTP 503", next_attempt_ms=T0 + 300_000, health=False),
        Outcome(db.id, "ops", "retry", T0, error="HTTP 503", next_attempt_ms=T0 + 20_000, health=False),
    ])
    assert store.due_deliveries("ops", T0 + 1_000) == []
    assert store.next_due_ms("ops") == T0 + 20_000
    assert store.next_due_ms("ops", T0 + 20_000) == T0 + 300_000
    probe = store.oldest_pending("ops")
    assert probe is not None and probe.event_id == a.id  # the oldest, due or not
    assert store.make_due("ops", T0 + 2_000) == 2
    assert ids(store.due_deliveries("ops", T0 + 2_000)) == [a.id, b.id]
    assert store.oldest_pending("nobody") is None


def test_a_sink_pause_is_kept_for_other_processes_and_shown_in_the_summary(store) -> None:
    assert store.sink_pauses() == {}
    store.set_sink_pause("ops", since_ms=T0, next_probe_ms=T0 + 5_000)
    assert store.sink_pauses() == {"ops": (T0, T0 + 5_000)}
    entry = store.summary()["sinks"]["ops"]  # `status` and `deliveries` read it from here
    assert (entry["paused_since_ms"], entry["next_probe_ms"]) == (T0, T0 + 5_000)
    store.set_sink_pause("ops", since_ms=None, next_probe_ms=None)
    assert store.sink_pauses() == {}


def test_a_claim_after_a_cursor_reads_only_what_came_later(store) -> None:
    a, b, c = make_event("run_a"), make_event("run_b"), make_event("run_c")
    commit_events(store, (a, ["chat"]), (b, ["chat"]))
    held = store.due_deliveries("chat", T0)
    cursor = max((d.next_attempt_ms, d.id) for d in held)
    assert store.due_deliveries("chat", T0, after=cursor) == []
    commit_events(store, (c, ["chat"]))
    assert ids(store.due_deliveries("chat", T0, after=cursor)) == [c.id]
