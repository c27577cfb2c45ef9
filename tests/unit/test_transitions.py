"""transitions.detect: the case table for every (tracked, observed) status pair, the first-start and `late`
rules, event shape, and hypothesis properties over arbitrary observation sequences. No event loop."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from watcher.model import ALL_EVENT_TYPES, Event, Output, Run, Technique, TrackedRun, event_id
from watcher.transitions import TABLE, Context, Decision, Phase, build_event, detect, final, phase_of

FIRST_START = 1_000_000
NEW_AFTER = 5_000_000
PROCESS_START = 9_000_000
NOW = 10_000_000
NEW = 6_000_000  # created after NEW_AFTER: a run the watcher has not had a chance to see yet
OLD = 4_000_000  # created before NEW_AFTER: a run already settled by earlier sweeps

ALL = frozenset(ALL_EVENT_TYPES)
TERMINAL_ONLY = frozenset({"run.completed", "run.failed"})
CONTRACT_DATA_KEYS = {
    "run_id", "run_type", "workspace_id", "project_id", "technique", "model", "status", "previous_status",
    "error_code", "error_message", "progress", "charged_cost", "created_at", "started_at", "completed_at",
    "outputs", "poll_url", "stalled_for", "late",
}  # fmt: skip


def ctx(**kw) -> Context:
    base = dict(
        now_ms=NOW,
        first_start_ms=FIRST_START,
        new_after_ms=NEW_AFTER,
        process_start_ms=PROCESS_START,
        first_sweep=False,
        enabled=ALL,
    )
    base.update(kw)
    return Context(**base)


def run(status: str, **kw) -> Run:
    completed_at = NOW - 1000 if status in ("completed", "failed") else None
    base = dict(
        run_id="run_1", status=status, created_at=NEW, started_at=NEW + 1000, completed_at=completed_at
    )
    base.update(kw)
    return Run(**base)


def tracked(status: str, **kw) -> TrackedRun:
    return TrackedRun(
        run=run(status, **kw),
        first_seen_ms=NEW + 10,
        last_change_ms=NEW + 20,
        poll_attempt=3,
        next_poll_ms=NOW + 5,
    )


# ------------------------------------------------------------------------------------------- case table

U = "queued"  # a status outside the API's enum
U2 = "paused"

# (tracked status or None, observed status, status tracked afterwards, events, reason, changed)
CASES = [
    (None, "pending", "pending", [], "new_active", True),
    (None, "running", "running", [("run.started", None)], "new_active", True),
    (None, "completed", "completed", [("run.completed", None)], "new_terminal", True),
    (None, "failed", "failed", [("run.failed", None)], "new_terminal", True),
    (None, U, U, [], "unknown_status", True),
    ("pending", "pending", "pending", [], "unchanged", False),
    ("pending", "running", "running", [("run.started", "pending")], "started", True),
    ("pending", "completed", "completed", [("run.completed", "pending")], "terminal", True),
    ("pending", "failed", "failed", [("run.failed", "pending")], "terminal", True),
    ("pending", U, "pending", [], "unknown_status", False),
    ("running", "pending", "running", [], "stale", False),
    ("running", "running", "running", [], "unchanged", False),
    ("running", "completed", "completed", [("run.completed", "running")], "terminal", True),
    ("running", "failed", "failed", [("run.failed", "running")], "terminal", True),
    ("running", U, "running", [], "unknown_status", False),
    *[("completed", obs, "completed", [], "terminal_final", False) for obs in ("pending", "running", U)],
    ("completed", "completed", "completed", [], "terminal_final", False),
    ("completed", "failed", "completed", [], "terminal_final", False),
    *[("failed", obs, "failed", [], "terminal_final", False) for obs in ("pending", "running", U)],
    ("failed", "failed", "failed", [], "terminal_final", False),
    ("failed", "completed", "failed", [], "terminal_final", False),
    (U, "pending", "pending", [], "advanced", True),
    (U, "running", "running", [("run.started", U)], "started", True),
    (U, "completed", "completed", [("run.completed", U)], "terminal", True),
    (U, "failed", "failed", [("run.failed", U)], "terminal", True),
    (U, U, U, [], "unknown_status", False),
    (U, U2, U2, [], "unknown_status", True),
]


@pytest.mark.parametrize(("prev", "observed", "after", "events", "reason", "changed"), CASES)
def test_case_table(prev, observed, after, events, reason, changed):
    before = tracked(prev) if prev is not None else None
    d = detect(before, run(observed), ctx())
    assert d.tracked is not None and d.tracked.status == after
    assert [(e.type, e.data["previous_status"]) for e in d.events] == events
    assert d.reason == reason
    assert d.changed is changed
    for e in d.events:
        assert e.id == event_id("run_1", e.type)
        assert e.data["status"] == observed
        assert e.created_at == NOW


def test_table_covers_every_pair_of_phases():
    assert set(TABLE) == {(p, o) for p in Phase for o in Phase if o is not Phase.NONE}


@pytest.mark.parametrize(
    ("status", "phase"),
    [("pending", Phase.PENDING), ("running", Phase.RUNNING), ("completed", Phase.TERMINAL),
     ("failed", Phase.TERMINAL), ("cancelled", Phase.UNKNOWN), ("", Phase.UNKNOWN), (None, Phase.NONE)],
)  # fmt: skip
def test_phase_of(status, phase):
    assert phase_of(status) is phase


@pytest.mark.parametrize(
    ("prev", "observed"),
    [("running", "pending"), ("pending", U), ("running", U), ("completed", "running"), ("failed", U)],
)
def test_ignored_reads_leave_no_trace(prev, observed):
    """Stale reads, unknown statuses over known ones and anything after terminal keep the exact old state."""
    before = tracked(prev)
    d = detect(before, run(observed, progress=99.0, error_code="X"), ctx())
    assert d.tracked is before
    assert d.events == ()


# -------------------------------------------------------------------------------- first start, new runs


@pytest.mark.parametrize(
    ("created_at", "new_after_ms", "emits"),
    [
        (NEW, NEW_AFTER, True),  # created and finished between two sweeps
        (NEW_AFTER + 1, NEW_AFTER, True),
        (NEW_AFTER, NEW_AFTER, False),  # at the watermark: an earlier sweep could have seen it
        (OLD, NEW_AFTER, False),  # older than the watermark: already settled
        (NEW, None, False),  # the very first sweep: no flood on first start
        (None, NEW_AFTER, False),  # creation time unknown: cannot prove it is new
        (FIRST_START - 1, FIRST_START - 10, False),  # created before the watcher ever started
        (FIRST_START, FIRST_START - 10, True),
    ],
)
@pytest.mark.parametrize("status", ["completed", "failed"])
def test_first_seen_terminal(created_at, new_after_ms, emits, status):
    d = detect(None, run(status, created_at=created_at), ctx(new_after_ms=new_after_ms))
    assert d.tracked is not None and d.tracked.status == status  # tracked either way: repeats are recognised
    assert [e.type for e in d.events] == ([f"run.{status}"] if emits else [])
    assert d.reason == ("new_terminal" if emits else "old_terminal")
    assert detect(d.tracked, run(status, created_at=created_at), ctx()).events == ()


@pytest.mark.parametrize(
    ("created_at", "new_after_ms", "emits"),
    [
        (NEW, NEW_AFTER, True),
        (OLD, NEW_AFTER, False),  # already running before: no run.started
        (FIRST_START, None, True),  # first sweep ever, created after the first start
        (FIRST_START - 1, None, False),  # running before the watcher started
        (None, None, False),
        (None, NEW_AFTER, False),
        (FIRST_START - 1, FIRST_START - 10, False),
    ],
)
def test_first_seen_running(created_at, new_after_ms, emits):
    d = detect(None, run("running", created_at=created_at), ctx(new_after_ms=new_after_ms))
    assert d.tracked is not None and d.tracked.status == "running"
    assert [e.type for e in d.events] == (["run.started"] if emits else [])


def test_first_seen_active_is_tracked_with_local_times():
    d = detect(None, run("pending"), ctx())
    assert d.tracked == TrackedRun(run=run("pending"), first_seen_ms=NOW, last_change_ms=NOW, stuck_since_ms=NOW)


@pytest.mark.parametrize("status", ["pending", "running"])
def test_old_active_run_on_first_start_reports_its_completion(status):
    """An old run in flight at the very first start gets no event then, but exactly one when it ends."""
    first = ctx(first_start_ms=NOW, new_after_ms=None, first_sweep=True, process_start_ms=NOW)
    d = detect(None, run(status, created_at=OLD), first)
    assert d.events == ()
    later = ctx(now_ms=NOW + 5000, first_start_ms=NOW, new_after_ms=OLD, process_start_ms=NOW)
    d2 = detect(d.tracked, run("failed", created_at=OLD, completed_at=NOW + 4000), later)
    assert [(e.type, e.data["previous_status"], e.data["late"]) for e in d2.events] == [
        ("run.failed", status, False)
    ]


# ----------------------------------------------------------------------------------------- enabled


def test_terminal_without_enabled_event_type_still_becomes_terminal():
    enabled = frozenset({"run.failed"})
    d = detect(tracked("running"), run("completed"), ctx(enabled=enabled))
    assert d.events == ()
    assert d.tracked is not None and d.tracked.terminal and d.changed
    assert detect(d.tracked, run("failed"), ctx(enabled=enabled)).events == ()


@pytest.mark.parametrize("prev", [None, "pending"])
def test_run_started_only_when_enabled(prev):
    before = tracked(prev) if prev else None
    d = detect(before, run("running"), ctx(enabled=TERMINAL_ONLY))
    assert d.events == ()
    assert d.tracked is not None and d.tracked.status == "running"


# ------------------------------------------------------------------------------------------ merging


def test_single_run_read_keeps_identity_fields_from_the_listing():
    listed = tracked(
        "running",
        workspace_id="ws_1",
        project_id="prj_1",
        technique=Technique("tech_1", "CCTV Cam"),
        poll_url="https://app.flora.ai/api/v1/techniques/cctv/runs/run_1",
    )
    polled = Run(run_id="run_1", status="failed", progress=100.0, completed_at=NOW - 5, error_code="GPU_ERR")
    d = detect(listed, polled, ctx())
    assert d.tracked is not None
    assert d.tracked.run.technique == Technique("tech_1", "CCTV Cam")
    assert d.tracked.run.created_at == NEW
    (event,) = d.events
    assert event.data["workspace_id"] == "ws_1"
    assert event.data["project_id"] == "prj_1"
    assert event.data["technique"] == {"technique_id": "tech_1", "name": "CCTV Cam"}
    assert event.data["error_code"] == "GPU_ERR"
    assert event.data["poll_url"].endswith("/runs/run_1")


def test_same_status_updates_the_observation_only():
    before = tracked("running", progress=10.0)
    d = detect(before, run("running", progress=55.5), ctx())
    assert d.tracked is not None
    assert d.tracked.run.progress == 55.5
    assert (d.tracked.first_seen_ms, d.tracked.last_change_ms) == (
        before.first_seen_ms,
        before.last_change_ms,
    )
    assert (d.tracked.poll_attempt, d.tracked.next_poll_ms) == (3, NOW + 5)
    assert not d.changed and d.events == ()


def test_status_change_resets_poll_attempt():
    d = detect(tracked("pending"), run("running"), ctx())
    assert d.tracked is not None
    assert (d.tracked.poll_attempt, d.tracked.next_poll_ms, d.tracked.last_change_ms) == (0, NOW + 5, NOW)
    assert d.tracked.first_seen_ms == NEW + 10
    done = detect(d.tracked, run("completed"), ctx())
    assert done.tracked is not None
    assert (done.tracked.poll_attempt, done.tracked.next_poll_ms) == (0, None)


def test_mismatched_run_ids_are_a_programming_error():
    with pytest.raises(ValueError, match="run_1"):
        detect(tracked("running"), run("completed", run_id="run_2"), ctx())


# ------------------------------------------------------------------------------------------- late


@pytest.mark.parametrize(
    ("completed_at", "first_sweep", "late"),
    [
        (PROCESS_START - 1, False, True),  # finished while the watcher was stopped
        (PROCESS_START - 1, True, True),
        (PROCESS_START, True, False),
        (NOW, True, False),
        (None, True, True),  # unknown time, first sweep of this process: it may have happened while stopped
        (None, False, False),
    ],
)
def test_late_terminal(completed_at, first_sweep, late):
    d = detect(tracked("running"), run("completed", completed_at=completed_at), ctx(first_sweep=first_sweep))
    assert [e.data["late"] for e in d.events] == [late]
    d = detect(None, run("failed", completed_at=completed_at), ctx(first_sweep=first_sweep))
    assert [e.data["late"] for e in d.events] == [late]


@pytest.mark.parametrize(
    ("started_at", "first_sweep", "late"),
    [
        (PROCESS_START - 1, False, True),
        (PROCESS_START, True, False),
        (None, True, True),
        (None, False, False),
    ],
)
def test_late_started(started_at, first_sweep, late):
    d = detect(
        tracked("pending", started_at=None),
        run("running", started_at=started_at),
        ctx(first_sweep=first_sweep),
    )
    assert [e.data["late"] for e in d.events] == [late]


# ----------------------------------------------------------------------------------------- events


def full_run(**kw) -> Run:
    base = dict(
        run_id="run_abc123",
        status="failed",
        progress=100,
        created_at=1764399990000,
        started_at=1764399991000,
        completed_at=1764400000000,
        workspace_id="ws_abc123",
        project_id="prj_abc123",
        technique=Technique("tech_abcd1234", "CCTV Cam"),
        charged_cost=0.05,
        error_code="GPU_PROVIDER_ERROR",
        error_message="The provider failed to complete the generation.",
        outputs=(Output("output_1", "imageUrl", "https://media.flora.ai/output.png"),),
        poll_url="https://app.flora.ai/api/v1/techniques/cctv-cam/runs/run_abc123",
    )
    base.update(kw)
    return Run(**base)


def test_event_matches_the_contract_example():
    event = build_event("run.failed", full_run(), "running", now_ms=1764400000123, late=False)
    body = event.to_dict()
    assert set(body) == {"id", "type", "api_version", "created_at", "data"}
    assert set(body["data"]) == CONTRACT_DATA_KEYS
    assert body["type"] == "run.failed"
    assert body["api_version"] == "flora-watcher.v1"
    assert body["created_at"] == 1764400000123
    assert body["id"] == event_id("run_abc123", "run.failed")
    assert body["data"] == {
        "run_id": "run_abc123", "run_type": "technique",
        "workspace_id": "ws_abc123", "project_id": "prj_abc123",
        "technique": {"technique_id": "tech_abcd1234", "name": "CCTV Cam"}, "model": None,
        "status": "failed", "previous_status": "running",
        "error_code": "GPU_PROVIDER_ERROR",
        "error_message": "The provider failed to complete the generation.",
        "progress": 100, "charged_cost": 0.05,
        "created_at": 1764399990000, "started_at": 1764399991000, "completed_at": 1764400000000,
        "outputs": [{"output_id": "output_1", "type": "imageUrl", "url": "https://media.flora.ai/output.png"}],
        "poll_url": "https://app.flora.ai/api/v1/techniques/cctv-cam/runs/run_abc123",
        "stalled_for": None, "late": False,
    }  # fmt: skip
    assert json.loads(json.dumps(body, allow_nan=False)) == body
    assert Event.from_dict(json.loads(json.dumps(body))).to_dict() == body


def test_missing_fields_are_null_or_empty_with_one_shape():
    bare = Run(run_id="run_x", status="completed")
    for event_type, status in (("run.completed", "completed"), ("run.failed", "failed")):
        data = build_event(event_type, replace(bare, status=status), None, now_ms=1, late=True).to_dict()[
            "data"
        ]
        assert set(data) == CONTRACT_DATA_KEYS
        assert data["outputs"] == []
        assert data["technique"] is None
        assert data["error_code"] is None and data["error_message"] is None
        assert data["previous_status"] is None
        json.dumps(data, allow_nan=False)


@pytest.mark.parametrize(
    ("progress", "shown"),
    [(150.0, 100), (-3.0, 0), (42.5, 42.5), (None, None), (float("nan"), None), (float("inf"), None)],
)
def test_progress_is_clamped(progress, shown):
    data = build_event(
        "run.completed", full_run(status="completed", progress=progress), "running", now_ms=1, late=False
    )
    assert data.data["progress"] == shown
    json.dumps(data.to_dict(), allow_nan=False)


def test_event_id_depends_only_on_run_and_type():
    a = build_event("run.completed", full_run(status="completed"), "running", now_ms=1, late=False)
    b = build_event("run.completed", Run(run_id="run_abc123", status="completed"), None, now_ms=99, late=True)
    c = build_event("run.failed", full_run(), "running", now_ms=1, late=False)
    d = build_event(
        "run.completed", full_run(run_id="run_other", status="completed"), "running", now_ms=1, late=False
    )
    assert a.id == b.id
    assert len({a.id, c.id, d.id}) == 3


# -------------------------------------------------------------------------------------- properties

STATUSES = ["pending", "running", "completed", "failed", "queued", "cancelling"]
RANK = {"pending": 0, "running": 1, "completed": 2, "failed": 2}

times = st.none() | st.integers(0, 20_000_000)


@st.composite
def observations(draw, created_at):
    return Run(
        run_id="run_p",
        status=draw(st.sampled_from(STATUSES)),
        progress=draw(st.none() | st.floats(allow_nan=True, allow_infinity=True)),
        created_at=created_at,
        started_at=draw(times),
        completed_at=draw(times),
        workspace_id=draw(st.none() | st.just("ws_1")),
        technique=draw(st.none() | st.just(Technique("tech_1", "T"))),
        error_code=draw(st.sampled_from([None, "GPU_PROVIDER_ERROR", ""])),
        outputs=draw(st.sampled_from([(), (Output("o1", "imageUrl", "https://x.test/o.png"),)])),
    )


@st.composite
def contexts(draw, step: int, first_start: int, process_start: int, enabled: frozenset[str]):
    return Context(
        now_ms=process_start + step * 1000,
        first_start_ms=first_start,
        new_after_ms=draw(st.none() | st.integers(0, 20_000_000)),
        process_start_ms=process_start,
        first_sweep=step == 0,
        enabled=enabled,
    )


@st.composite
def histories(draw, enabled=ALL):
    created_at = draw(times)
    first_start = draw(st.integers(0, 10_000_000))
    process_start = draw(st.integers(first_start, 15_000_000))
    n = draw(st.integers(1, 12))
    obs = [draw(observations(created_at)) for _ in range(n)]
    ctxs = [draw(contexts(i, first_start, process_start, enabled)) for i in range(n)]
    return list(zip(obs, ctxs, strict=True))


def fold(history) -> list[tuple[TrackedRun | None, Run, Context, Decision]]:
    steps, prev = [], None
    for observed, c in history:
        d = detect(prev, observed, c)
        steps.append((prev, observed, c, d))
        prev = d.tracked
    return steps


def check_one_terminal_event(steps) -> None:
    """At most one terminal event; exactly one when a terminal read follows a tracked active state."""
    terminal = [e for *_, d in steps for e in d.events if e.type in ("run.completed", "run.failed")]
    assert len(terminal) <= 1
    active_then_terminal = any(
        d.tracked is not None
        and d.tracked.run.active
        and any(obs.terminal for _, obs, _, _ in steps[i + 1 :])
        for i, (*_, d) in enumerate(steps)
    )
    if active_then_terminal:
        assert len(terminal) == 1
    assert len([e for *_, d in steps for e in d.events if e.type == "run.started"]) <= 1


def check_terminal_is_final(steps) -> None:
    for i, (*_, d) in enumerate(steps):
        if d.tracked is not None and d.tracked.terminal:
            for prev, _, _, later in steps[i + 1 :]:
                assert later.tracked is prev
                assert later.events == ()
            return


def check_stale_and_unknown_reads_do_nothing(steps) -> None:
    for prev, observed, _, d in steps:
        if prev is None:
            continue
        known_prev = prev.status in RANK
        if observed.status not in RANK:
            assert d.events == ()
            if known_prev:
                assert d.tracked is prev
        elif known_prev and RANK[observed.status] < RANK[prev.status]:
            assert d.events == ()
            assert d.tracked is prev


def check_event_ids_late_and_shape(steps) -> None:
    for prev, _, c, d in steps:
        for e in d.events:
            assert e.id == event_id("run_p", e.type)
            assert e.created_at == c.now_ms
            when = e.data["started_at"] if e.type == "run.started" else e.data["completed_at"]
            assert e.data["late"] is (c.first_sweep if when is None else when < c.process_start_ms)
            assert e.data["previous_status"] == (prev.status if prev is not None else None)
            assert set(e.data) == CONTRACT_DATA_KEYS
            p = e.data["progress"]
            assert p is None or 0 <= p <= 100
            json.dumps(e.to_dict(), allow_nan=False)


def check_first_seen_terminal_only_when_new(steps) -> None:
    (_, observed, c, d), *_ = steps
    if observed.terminal:
        is_new = (
            c.new_after_ms is not None
            and observed.created_at is not None
            and observed.created_at > c.new_after_ms
            and observed.created_at >= c.first_start_ms
        )
        assert len(d.events) == (1 if is_new else 0)
        assert d.tracked is not None and d.tracked.terminal


@settings(max_examples=400, deadline=None)
@given(histories())
def test_any_observation_sequence(history):
    """Random order, repetition, stale reads, unknown statuses, changing sweep contexts."""
    steps = fold(history)
    check_one_terminal_event(steps)
    check_terminal_is_final(steps)
    check_stale_and_unknown_reads_do_nothing(steps)
    check_event_ids_late_and_shape(steps)
    check_first_seen_terminal_only_when_new(steps)


@settings(max_examples=100, deadline=None)
@given(histories(enabled=frozenset()))
def test_nothing_enabled_nothing_emitted_but_state_still_moves(history):
    steps = fold(history)
    assert all(d.events == () for *_, d in steps)
    if any(obs.terminal for _, obs, _, _ in steps):
        assert steps[-1][3].tracked is not None and steps[-1][3].tracked.terminal


@given(
    prev_status=st.sampled_from(["pending", "running", "completed", "failed", "weird"]),
    observed_status=st.sampled_from(["pending", "running", "completed", "failed", "weird"]),
    progress=st.none() | st.floats(0, 100),
    first_sweep=st.booleans(),
    stalled_after_ms=st.sampled_from([0, 1, 60_000]),
)
def test_final_means_detect_keeps_the_run_and_emits_nothing(prev_status, observed_status, progress, first_sweep,
                                                           stalled_after_ms) -> None:
    prev = tracked(prev_status)
    decision = detect(prev, run(observed_status, progress=progress),
                      ctx(first_sweep=first_sweep, stalled_after_ms=stalled_after_ms))
    assert final(prev) == (prev_status in ("completed", "failed"))
    if final(prev):
        assert decision.tracked is prev and decision.events == () and not decision.changed
    assert not final(None)
