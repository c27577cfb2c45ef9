"""run.stalled: the pure rule in transitions (``stall_check`` through ``detect``), case by case and as
hypothesis properties over arbitrary observation sequences with restarts. No event loop."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.model import ALL_EVENT_TYPES, Model, Run, TrackedRun, event_id
from watcher.store_sql import decode_tracked, encode_tracked
from watcher.transitions import Context, detect, quick_observe

FIRST_START = 1_000_000
AFTER = 1_800_000  # stalled_after in ms
T0 = 10_000_000
ALL = frozenset(ALL_EVENT_TYPES)


def ctx(now: int, **kw) -> Context:
    base = dict(now_ms=now, first_start_ms=FIRST_START, new_after_ms=FIRST_START, process_start_ms=T0,
                first_sweep=False, enabled=ALL, stalled_after_ms=AFTER)
    base.update(kw)
    return Context(**base)


def run(status: str = "running", progress: float | None = 40.0, **kw) -> Run:
    base = dict(run_id="run_s", status=status, progress=progress, created_at=T0 - 5_000, started_at=T0 - 4_000)
    base.update(kw)
    return Run(**base)


def seen(status: str = "running", progress: float | None = 40.0, at: int = T0, **kw) -> TrackedRun:
    d = detect(None, run(status, progress, **kw), ctx(at))
    assert d.tracked is not None
    return d.tracked


def stalled_events(d):
    return [e for e in d.events if e.type == "run.stalled"]


@pytest.mark.parametrize("status", ["pending", "running"])
def test_a_run_stuck_longer_than_stalled_after_gets_one_event(status):
    t = seen(status)
    assert detect(t, run(status), ctx(T0 + AFTER)).events == ()  # exactly stalled_after: not yet
    d = detect(t, run(status), ctx(T0 + AFTER + 1))
    (e,) = d.events
    assert (e.type, e.id, d.reason) == ("run.stalled", event_id("run_s", "run.stalled"), "stalled")
    assert e.data["stalled_for"] == AFTER + 1
    assert (e.data["status"], e.data["previous_status"], e.data["progress"]) == (status, status, 40.0)
    assert e.data["late"] is False
    assert d.tracked is not None and d.tracked.stalled
    json.dumps(e.to_dict(), allow_nan=False)
    assert detect(d.tracked, run(status), ctx(T0 + 10 * AFTER)).events == ()  # once per run


def test_progress_change_restarts_the_clock_but_a_status_change_is_needed_for_nothing_else():
    t = seen("running", 10.0)
    t = detect(t, run("running", 20.0), ctx(T0 + AFTER)).tracked
    assert t is not None and t.stuck_since_ms == T0 + AFTER
    assert detect(t, run("running", 20.0), ctx(T0 + 2 * AFTER)).events == ()
    assert [e.data["stalled_for"] for e in detect(t, run("running", 20.0), ctx(T0 + 2 * AFTER + 5)).events] == [
        AFTER + 5
    ]


def test_an_absent_progress_reading_is_not_a_change():
    t = seen("running", 10.0)
    d = detect(t, run("running", None), ctx(T0 + AFTER + 1))
    assert [e.data["progress"] for e in d.events] == [10.0]


def test_a_status_change_restarts_the_clock():
    t = seen("pending", 0.0)
    t = detect(t, run("running", 0.0), ctx(T0 + AFTER - 1)).tracked
    assert detect(t, run("running", 0.0), ctx(T0 + AFTER + 10)).events == ()


def test_its_completion_is_still_reported_after_a_stall():
    t = detect(seen(), run(), ctx(T0 + AFTER + 1)).tracked
    d = detect(t, run("failed", 100.0, completed_at=T0 + AFTER + 2, error_code="X"), ctx(T0 + AFTER + 3))
    assert [e.type for e in d.events] == ["run.failed"]
    assert d.tracked is not None and d.tracked.stalled


@pytest.mark.parametrize(
    ("why", "tracked_kw", "ctx_kw"),
    [
        ("disabled", {}, {"stalled_after_ms": 0}),
        ("not enabled", {}, {"enabled": frozenset({"run.completed", "run.failed"})}),
        ("older than the first start", {"created_at": FIRST_START - 1}, {}),
        ("created at an unknown time", {"created_at": None}, {}),
    ],
)
def test_no_stalled_event(why, tracked_kw, ctx_kw):
    t = seen(**tracked_kw)
    d = detect(t, run(**tracked_kw), ctx(T0 + 5 * AFTER, **ctx_kw))
    assert d.events == (), why
    assert d.tracked is not None and not d.tracked.stalled  # not marked: enabling it later still works


@pytest.mark.parametrize("status", ["queued", "completed", "failed"])
def test_never_for_unknown_or_terminal_runs(status):
    extra = {"completed_at": T0} if status in ("completed", "failed") else {}
    t = seen(status, **extra)
    assert stalled_events(detect(t, run(status, **extra), ctx(T0 + 5 * AFTER))) == []


def test_stall_during_downtime_is_late_and_the_marker_survives_a_restart():
    t = seen(at=T0)
    restarted = ctx(T0 + 3 * AFTER, process_start_ms=T0 + 3 * AFTER - 10, first_sweep=True)
    d = detect(decode_tracked(encode_tracked(t)), run(), restarted)
    assert [(e.type, e.data["late"]) for e in d.events] == [("run.stalled", True)]
    again = ctx(T0 + 9 * AFTER, process_start_ms=T0 + 9 * AFTER - 10, first_sweep=True)
    assert detect(decode_tracked(encode_tracked(d.tracked)), run(), again).events == ()


def test_state_written_before_the_stall_clock_existed_reads_as_last_change():
    legacy = json.loads(encode_tracked(seen()))
    del legacy["stuck_since_ms"], legacy["stalled"]
    t = decode_tracked(json.dumps(legacy))
    assert (t.stuck_since, t.stalled) == (T0, False)


def test_a_generation_stalls_like_a_technique_run():
    t = seen(run_type="generation", model=Model("flux-pro"))
    (e,) = detect(t, run(run_type="generation", model=Model("flux-pro")), ctx(T0 + AFTER + 1)).events
    assert (e.data["run_type"], e.data["model"], e.data["technique"]) == ("generation", {"model_id": "flux-pro"}, None)


# -------------------------------------------------------------------------------------- properties

STATUSES = ["pending", "pending", "running", "running", "running", "completed", "failed", "queued"]
PROGRESS = [None, 0.0, 10.0, 10.0, 50.0]


@st.composite
def stall_histories(draw):
    """Observations of one run at increasing times, with restarts (state round-tripped through the store's
    encoding, a new process start) between some of them."""
    after = draw(st.integers(1, 5_000))
    first_start = draw(st.integers(0, 50_000))
    created_at = draw(st.none() | st.integers(0, 100_000))
    now = draw(st.integers(50_000, 100_000))
    process_start = now
    steps = []
    for i in range(draw(st.integers(1, 25))):
        now += draw(st.integers(0, 2 * after))
        restart = i > 0 and draw(st.booleans()) and draw(st.booleans())
        if restart:
            process_start = now
        status = draw(st.sampled_from(STATUSES))
        obs = Run(run_id="run_p", status=status, progress=draw(st.sampled_from(PROGRESS)), created_at=created_at,
                  started_at=created_at, completed_at=now if status in ("completed", "failed") else None)
        c = Context(now_ms=now, first_start_ms=first_start, new_after_ms=first_start, process_start_ms=process_start,
                    first_sweep=restart or i == 0, enabled=ALL, stalled_after_ms=after)
        steps.append((obs, c, restart))
    return steps


@settings(max_examples=500, deadline=None)
@given(stall_histories())
def test_stalled_properties(history):
    prev: TrackedRun | None = None
    since: int | None = None  # when the tracked status or progress last changed, computed here independently
    stalled = 0
    for observed, c, restart in history:
        if restart and prev is not None:
            prev = decode_tracked(encode_tracked(prev))
        d = detect(prev, observed, c)
        new = d.tracked
        if new is not None and (prev is None or new.status != prev.status or new.run.progress != prev.run.progress):
            since = c.now_ms
        events = stalled_events(d)
        stalled += len(events)
        assert stalled <= 1  # at most one per run, across restarts
        for e in events:
            assert prev is not None and prev.run.active and observed.status == prev.status  # never terminal
            assert observed.created_at is not None and observed.created_at >= c.first_start_ms
            assert e.data["stalled_for"] == c.now_ms - since > c.stalled_after_ms  # progress resets the clock
            assert e.data["late"] is (since + c.stalled_after_ms < c.process_start_ms)
            assert e.id == event_id("run_p", "run.stalled") and e.created_at == c.now_ms
        # ...and exactly when due: a run observed stuck past the threshold, not yet reported, gets it now.
        due = (
            prev is not None and new is not None and d.reason in ("unchanged", "stalled") and new.run.active
            and not prev.stalled and observed.created_at is not None and observed.created_at >= c.first_start_ms
            and since is not None and c.now_ms - since > c.stalled_after_ms
        )
        assert bool(events) is due
        if new is not None:
            assert new.stalled is (stalled == 1)  # the marker is exactly "an event was emitted"
        prev = new


# ------------------------------------------------------------------- the sweep's shortcut: quick_observe


def test_progress_alone_moves_the_stall_clock_without_detect():
    t = seen("running", 40.0)
    moved = quick_observe(t, run("running", 41.0), ctx(T0 + 5_000))
    assert moved is not None and moved.run.progress == 41.0 and moved.stuck_since == T0 + 5_000
    assert moved == detect(t, run("running", 41.0), ctx(T0 + 5_000)).tracked
    assert quick_observe(t, t.run, ctx(T0 + 5_000)) is t  # shown again unchanged: the very state
    assert quick_observe(t, run("running", 40.0), ctx(T0 + 5_000)) is t  # an equal observation too


@pytest.mark.parametrize(
    ("why", "observed", "at"),
    [
        ("status moved", run("completed", 40.0, completed_at=T0 + 1), T0 + 5_000),
        ("another field moved", run("running", 41.0, started_at=T0 - 3_000), T0 + 5_000),
        ("an absent progress reading", run("running", None), T0 + 5_000),
        ("a stall is due", run("running", 40.0), T0 + AFTER + 1),
    ],
)
def test_anything_but_progress_goes_to_detect(why, observed, at):
    assert quick_observe(seen("running", 40.0), observed, ctx(at)) is None, why


def test_a_moved_progress_is_never_a_stall_even_when_one_was_due():
    t = seen("running", 40.0)
    late = T0 + 10 * AFTER
    moved = quick_observe(t, run("running", 41.0), ctx(late))
    assert moved is not None and moved.stuck_since == late and not moved.stalled
    assert detect(t, run("running", 41.0), ctx(late)).events == ()


@settings(max_examples=500, deadline=None)
@given(stall_histories(), st.data())
def test_quick_observe_answers_as_detect_would(history, data):
    """Wherever ``quick_observe`` answers, ``detect`` gives an equal state, no event and no change; and a sweep that
    takes its answer where it has one (``detect`` otherwise) reports each stall exactly as ``detect`` alone."""
    prev: TrackedRun | None = None
    alone: TrackedRun | None = None  # the same history through detect only
    for observed, c, restart in history:
        if restart and prev is not None:
            prev, alone = decode_tracked(encode_tracked(prev)), decode_tracked(encode_tracked(alone))
        if prev is not None and data.draw(st.booleans()):
            observed = prev.run  # the parse memo hands back the very run it remembers for an unchanged item
        d = detect(alone, observed, c)
        quick = quick_observe(prev, observed, c) if prev is not None else None
        if quick is not None:
            assert quick == d.tracked and d.events == () and not d.changed
            prev = quick
        else:
            prev = detect(prev, observed, c).tracked
        assert prev == d.tracked
        alone = d.tracked
