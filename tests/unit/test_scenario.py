"""The simulator's pure core: run progression, indexes, cursors, wire shapes and fault decisions.

No event loop, no network: time is a manual clock passed in as ``now_ms``.
"""

from __future__ import annotations

import email.utils
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import FakeClock
from watcher.simulator import Faults, Simulator
from watcher.simulator import faults as fl
from watcher.simulator import scenario as sc

T0 = 1_764_400_000_000
CCTV = sc.TECHNIQUES_BY_KEY["cctv-cam"]


def make_run(rng: random.Random, scenario: sc.Scenario, *, created_at: int = T0, pending: int = 1_000,
             running: int = 3_000, outcome: str | None = "completed", technique: sc.TechniqueInfo = CCTV,
             project_id: str = sc.PROJECTS[0], workspace_id: str = sc.WORKSPACE_ID) -> sc.SimRun:
    run = sc.build_run(
        rng, seq=scenario.next_seq, now_ms=created_at, technique=technique, project_id=project_id,
        workspace_id=workspace_id, created_at=created_at, pending_ms=pending, running_ms=running,
        outcome=outcome, fail_ratio=0.5, error_code=None, poll_url=None,
    )
    scenario.add(run)
    return run


# ------------------------------------------------------------------------------------------------ progression


def test_a_run_moves_pending_running_then_terminal_on_its_own_clock() -> None:
    rng, scenario = random.Random(1), sc.Scenario()
    run = make_run(rng, scenario, pending=1_000, running=4_000)
    seen = []
    for t in (0, 999, 1_000, 3_000, 4_999, 5_000, 60_000):
        scenario.advance(T0 + t, rng)
        seen.append((scenario.status_of(run.run_id), run.progress_at(scenario.now_ms)))
    assert [s for s, _ in seen] == ["pending", "pending", "running", "running", "running", "completed",
                                    "completed"]
    assert [p for _, p in seen] == [0.0, 0.0, 0.0, 50.0, 99.9, 100.0, 100.0]


def test_a_failed_run_reports_progress_100_completed_at_and_an_error() -> None:
    rng, scenario = random.Random(2), sc.Scenario()
    run = make_run(rng, scenario, outcome="failed")
    scenario.advance(T0 + 10_000, rng)
    body = sc.single_run(run, scenario.now_ms, api_base="http://h/api/v1")
    assert body["status"] == "failed" and body["progress"] == 100.0
    assert body["completed_at"] == T0 + 4_000
    assert body["error_message"] == sc.ERROR_MESSAGES[body["error_code"]]
    assert body["outputs"] == []


def test_an_error_code_alone_makes_a_failed_run_with_a_message() -> None:
    run = sc.build_run(random.Random(3), seq=0, now_ms=T0, technique=CCTV, project_id="prj_x",
                       workspace_id="ws_x", created_at=None, pending_ms=0, running_ms=0, outcome=None,
                       fail_ratio=0.0, error_code="LLM_REFUSAL", poll_url=None)
    assert run.outcome == "failed" and run.error_message == sc.ERROR_MESSAGES["LLM_REFUSAL"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-5_000, max_value=20_000), min_size=1, max_size=30))
def test_statuses_only_move_forward_even_when_the_clock_goes_back(times: list[int]) -> None:
    rng, scenario = random.Random(4), sc.Scenario()
    runs = [make_run(rng, scenario, created_at=T0 + i * 500, pending=700, running=1_300 * i, outcome=None)
            for i in range(6)]
    rank = {"pending": 0, "running": 1, "completed": 2, "failed": 2}
    last = {r.run_id: 0 for r in runs}
    for t in times:
        scenario.advance(T0 + t, rng)
        for r in runs:
            now = rank[scenario.status_of(r.run_id)]
            assert now >= last[r.run_id]
            last[r.run_id] = now


def test_every_terminal_transition_is_recorded_exactly_once() -> None:
    rng, scenario = random.Random(5), sc.Scenario()
    runs = [make_run(rng, scenario, created_at=T0 + i, running=100 * i, outcome=None) for i in range(50)]
    for t in range(0, 10_000, 777):
        scenario.advance(T0 + t, rng)
    transitions = scenario.transitions()
    assert sorted(t.run_id for t in transitions) == sorted(r.run_id for r in runs)
    assert [t.completed_at for t in transitions] == sorted(t.completed_at for t in transitions)
    by_id = {r.run_id: r for r in runs}
    assert all(by_id[t.run_id].outcome == t.status and by_id[t.run_id].completed_at == t.completed_at
               for t in transitions)
    later = scenario.transitions(since_ms=T0 + 3_000)
    assert later and all(t.completed_at >= T0 + 3_000 for t in later)


# ------------------------------------------------------------------------------------------------ indexes

run_specs = st.tuples(
    st.integers(min_value=0, max_value=5_000),  # created_at offset (ties likely)
    st.integers(min_value=0, max_value=3_000),  # pending
    st.integers(min_value=0, max_value=3_000),  # running
    st.sampled_from(["completed", "failed"]),
    st.sampled_from(sc.TECHNIQUES),
    st.sampled_from(sc.PROJECTS),
    st.sampled_from([sc.WORKSPACE_ID, "ws_other"]),
)
queries = st.builds(
    sc.ListQuery,
    status=st.none() | st.sampled_from(sc.STATUSES),
    workspace_id=st.none() | st.sampled_from([sc.WORKSPACE_ID, "ws_other", "ws_none"]),
    project_id=st.none() | st.sampled_from(sc.PROJECTS),
    technique_id=st.none() | st.sampled_from([t.technique_id for t in sc.TECHNIQUES] + ["cctv-cam"]),
    offset=st.integers(min_value=0, max_value=60),
    limit=st.integers(min_value=1, max_value=100),
)


def naive_page(runs: list[sc.SimRun], now_ms: int, q: sc.ListQuery) -> tuple[list[str], int]:
    """What a page must be, computed the slow obvious way."""
    ordered = sorted(runs, key=lambda r: (r.created_at, r.seq), reverse=True)
    hits = [
        r for r in ordered
        if (q.status is None or r.status_at(now_ms) == q.status)
        and (q.workspace_id is None or r.workspace_id == q.workspace_id)
        and (q.project_id is None or r.project_id == q.project_id)
        and (q.technique_id is None or q.technique_id in (r.technique.technique_id, r.technique.slug))
    ]
    return [r.run_id for r in hits[q.offset:q.offset + q.limit]], len(hits)


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.tuples(st.lists(run_specs, max_size=12), st.integers(min_value=0, max_value=4_000)),
                     min_size=1, max_size=6),
    checks=st.lists(queries, min_size=1, max_size=5),
)
def test_index_pages_agree_with_a_brute_force_sort_and_filter(batches, checks) -> None:
    rng, scenario = random.Random(6), sc.Scenario()
    now = T0
    for specs, step in batches:
        for offset, pending, running, outcome, tech, project, ws in specs:
            make_run(rng, scenario, created_at=T0 + offset, pending=pending, running=running, outcome=outcome,
                     technique=tech, project_id=project, workspace_id=ws)
        now += step
        scenario.advance(now, rng)
        for q in checks:
            page, total = scenario.page(q)
            assert ([r.run_id for r in page], total) == naive_page(list(scenario.runs.values()), now, q)


def test_listing_10k_runs_is_fast_enough_for_benchmarks() -> None:
    """A page of an unfiltered or status-filtered listing must not grow with the number of runs."""
    import time

    rng, scenario = random.Random(7), sc.Scenario()
    for i in range(10_000):
        make_run(rng, scenario, created_at=T0 + i * 10, pending=500, running=rng.randint(1_000, 90_000),
                 outcome=None)
    scenario.advance(T0 + 100_000, rng)
    start = time.process_time()  # CPU time: another busy process cannot fail this
    for i in range(200):
        scenario.page(sc.ListQuery(status="running", offset=i * 5, limit=100))
        scenario.page(sc.ListQuery(offset=9_000, limit=100))
    assert time.process_time() - start < 0.5


# ------------------------------------------------------------------------------------------------ queries


@given(st.integers(min_value=0, max_value=10**12))
def test_cursor_round_trip(offset: int) -> None:
    assert sc.decode_cursor(sc.encode_cursor(offset)) == offset


def test_cursor_matches_floras_documented_example() -> None:
    assert sc.encode_cursor(20) == "eyJvZmZzZXQiOjIwfQ"
    assert sc.decode_cursor("eyJvZmZzZXQiOjIwfQ==") == 20


@pytest.mark.parametrize("bad", ["!!!", "eyJmb28iOjF9", "bnVsbA", "eyJvZmZzZXQiOi0xfQ",
                                 "eyJvZmZzZXQiOiIxIn0"])
def test_malformed_cursors_are_input_errors(bad: str) -> None:
    with pytest.raises(sc.InputError) as err:
        sc.decode_cursor(bad)
    assert err.value.envelope()["error"]["fields"][0]["field"] == "cursor"


@pytest.mark.parametrize("limit", ["0", "101", "-3", "abc", "2.5"])
def test_limit_outside_1_to_100_is_rejected_with_fields(limit: str) -> None:
    with pytest.raises(sc.InputError) as err:
        sc.parse_list_query({"limit": limit})
    envelope = err.value.envelope()
    assert envelope["error"]["code"] == "input_validation_error"
    assert envelope["error"]["fields"][0]["field"] == "limit"


def test_query_defaults_and_filters() -> None:
    q = sc.parse_list_query({"project_id": "prj_a", "status": "running", "unknown": "ignored"})
    assert (q.limit, q.offset, q.status, q.project_id) == (20, 0, "running", "prj_a")
    with pytest.raises(sc.InputError):
        sc.parse_list_query({"status": "done"})


def test_next_cursor_is_null_on_the_last_page() -> None:
    q = sc.ListQuery(offset=40, limit=20)
    assert sc.decode_cursor(sc.next_cursor(q, 20, 100)) == 60
    assert sc.next_cursor(q, 20, 60) is None
    assert sc.next_cursor(q, 0, 100) is None


# ------------------------------------------------------------------------------------------------ shapes


def test_list_items_carry_identity_fields_and_single_runs_do_not() -> None:
    rng, scenario = random.Random(8), sc.Scenario()
    run = make_run(rng, scenario)
    scenario.advance(T0 + 60_000, rng)
    item = sc.list_item(run, scenario.now_ms, api_base="http://127.0.0.1:9/api/v1")
    single = sc.single_run(run, scenario.now_ms, api_base="http://127.0.0.1:9/api/v1")
    assert item["technique_run_id"] == item["run_id"] == run.run_id
    assert item["technique"] == {"technique_id": CCTV.technique_id, "name": "CCTV Cam"}
    assert {"project_id", "workspace_id"} <= item.keys()
    assert not {"technique", "technique_run_id", "project_id", "workspace_id"} & single.keys()
    assert single["poll_url"] == f"http://127.0.0.1:9/api/v1/techniques/cctv-cam/runs/{run.run_id}"
    assert single["outputs"] == [{"output_id": "output_1", "type": "imageUrl",
                                  "url": f"{sc.MEDIA_BASE}/{run.run_id}/output_1.png"}]


def test_pending_runs_omit_what_does_not_apply_or_send_nulls_on_request() -> None:
    rng, scenario = random.Random(9), sc.Scenario()
    run = make_run(rng, scenario)
    scenario.advance(T0, rng)
    body = sc.single_run(run, T0, api_base="x")
    assert body["status"] == "pending" and "started_at" not in body and "charged_cost" not in body
    nulls = sc.single_run(run, T0, api_base="x", nulls=True)
    assert nulls["started_at"] is None and nulls["error_code"] is None


def test_charged_cost_appears_only_after_its_delay() -> None:
    rng, scenario = random.Random(10), sc.Scenario()
    run = make_run(rng, scenario)
    done = run.completed_at
    assert "charged_cost" not in sc.single_run(run, done + 499, api_base="x", cost_delay_ms=500)
    assert sc.single_run(run, done + 500, api_base="x", cost_delay_ms=500)["charged_cost"] == CCTV.price_usd


def test_text_outputs_carry_their_content_in_url() -> None:
    text = sc.TECHNIQUES_BY_KEY["caption-writer"]
    outputs = sc.make_outputs("run_x", text)
    assert outputs[0][1] == "text" and "run_x" in outputs[0][2] and not outputs[0][2].startswith("http")


def test_camel_case_and_seconds_rewrites() -> None:
    rng, scenario = random.Random(11), sc.Scenario()
    run = make_run(rng, scenario)
    item = sc.list_item(run, T0 + 60_000, api_base="x")
    camel = fl.rewrite_run(item, Faults(camel_case=True, seconds_timestamps=True))
    assert {"runId", "techniqueRunId", "createdAt", "startedAt", "completedAt", "chargedCost", "pollUrl",
            "projectId", "workspaceId"} <= camel.keys()
    assert camel["technique"] == {"techniqueId": CCTV.technique_id, "name": "CCTV Cam"}
    assert camel["outputs"][0]["outputId"] == "output_1"
    assert camel["createdAt"] == T0 // 1000


# ------------------------------------------------------------------------------------------------ generator


def test_generator_creates_runs_lazily_at_its_rate_and_reaches_a_steady_state() -> None:
    rng, scenario = random.Random(12), sc.Scenario()
    scenario.set_generator(sc.GeneratorSpec(rate=14, start_ms=T0, duration_ms=(20_000, 120_000)))
    scenario.advance(T0 + 300_000, rng)
    assert len(scenario.runs) == 14 * 300 + 1
    created = sorted(r.created_at for r in scenario.runs.values())
    assert created[0] == T0 and created[-1] <= T0 + 300_000
    active = scenario.counts()["pending"] + scenario.counts()["running"]
    assert 800 < active < 1_150  # about rate x mean duration (14/s x 70 s)


def test_generator_stops_at_its_stop_time() -> None:
    rng, scenario = random.Random(13), sc.Scenario()
    scenario.set_generator(sc.GeneratorSpec(rate=10, start_ms=T0, stop_ms=T0 + 1_000))
    scenario.advance(T0 + 60_000, rng)
    assert len(scenario.runs) == 11 and scenario.generator is None


# ------------------------------------------------------------------------------------------------ Simulator


def test_simulator_with_a_manual_clock_and_runs_created_in_the_past() -> None:
    clock = FakeClock(0.0, epoch_ms=T0)
    sim = Simulator(seed=1, clock=clock)
    old = sim.create_run(created_at=T0 - 60_000, pending_ms=1_000, running_ms=2_000, outcome="failed",
                         error_code="GPU_PROVIDER_ERROR")
    fresh = sim.create_run(pending_ms=1_000, running_ms=2_000, outcome="completed")
    assert [t["run_id"] for t in sim.transitions()] == [old]
    assert sim.transitions()[0] == {"run_id": old, "status": "failed", "error_code": "GPU_PROVIDER_ERROR",
                                    "completed_at": T0 - 57_000, "kind": "technique"}
    clock.advance(3)
    assert sim.run_truth(fresh)["status"] == "completed"
    assert [t["run_id"] for t in sim.transitions(since_ms=T0)] == [fresh]


def test_create_run_defaults_to_one_second_pending_and_three_running() -> None:
    sim = Simulator(clock=FakeClock(0.0, epoch_ms=T0))
    truth = sim.run_truth(sim.create_run())
    assert truth["started_at"] - truth["created_at"] == 1_000
    assert truth["completed_at"] - truth["started_at"] == 3_000
    assert truth["technique"]["slug"] == "cctv-cam" and truth["workspace_id"] == sc.WORKSPACE_ID


def test_same_seed_same_runs() -> None:
    a = Simulator(seed=42, clock=FakeClock(0.0, epoch_ms=T0)).create_runs(5)
    b = Simulator(seed=42, clock=FakeClock(0.0, epoch_ms=T0)).create_runs(5)
    assert a == b


def test_unknown_technique_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown technique"):
        Simulator(clock=FakeClock(0.0, epoch_ms=T0)).create_run(technique="nope")


# ------------------------------------------------------------------------------------------------ faults


def test_error_burst_fails_the_last_k_of_every_n_requests() -> None:
    faults = Faults(error_burst=(5, 2))
    statuses = [fl.burst_status(faults, i) for i in range(10)]
    assert [s is not None for s in statuses] == [False, False, False, True, True] * 2
    assert set(filter(None, statuses)) <= {500, 502, 503} and len(set(filter(None, statuses))) > 1


def test_shares_of_one_and_zero_are_always_and_never() -> None:
    rng = random.Random(1)
    assert all(fl.plan_request(Faults(rate_limit_share=1.0), i, rng).rate_limited for i in range(20))
    assert all(fl.plan_request(Faults(reset_share=1.0), i, rng).reset for i in range(20))
    assert all(fl.plan_request(Faults(malformed_share=1.0), i, rng).malformed for i in range(20))
    assert all(fl.plan_request(Faults(), i, rng).name is None for i in range(20))


def test_retry_after_header_modes() -> None:
    assert fl.retry_after_headers(Faults(retry_after=2), T0) == {"Retry-After": "2"}
    assert fl.retry_after_headers(Faults(retry_after=None), T0) == {}
    ms = fl.retry_after_headers(Faults(retry_after=1.5, retry_after_mode="ms"), T0)
    assert ms == {"retry-after-ms": "1500"}
    date = fl.retry_after_headers(Faults(retry_after=30, retry_after_mode="http-date"), T0)["Retry-After"]
    assert email.utils.parsedate_to_datetime(date).timestamp() == (T0 + 30_000) / 1000


def test_fault_updates_name_bad_knobs() -> None:
    assert fl.updated(Faults(), {"error_burst": [4, 1]}).error_burst == (4, 1)
    with pytest.raises(ValueError, match="unknown fault knob"):
        fl.updated(Faults(), {"latency": 5})
    with pytest.raises(ValueError, match="rate_limit_share"):
        fl.updated(Faults(), {"rate_limit_share": 2})
