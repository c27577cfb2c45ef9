"""``RunMemo`` parses a listing's items to exactly what ``parse_run`` gives, only cheaper; ``Run.merged_with``
and ``Run.with_progress`` take their fast paths without changing a result."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.errors import BadResponseError
from watcher.model import Model, Output, Run, Technique
from watcher.normalize import RunMemo, parse_list_page, parse_run
from watcher.simulator import scenario as sc

# Values a sloppy API may send, booleans and numbers that compare equal to them among them (True == 1 == 1.0).
scalars = st.none() | st.booleans() | st.sampled_from([0, 1, 0.0, 1.0, -0.0, 50, 50.0, "1", "", "x"]) | st.integers(
    min_value=10**9, max_value=4 * 10**12) | st.floats(allow_nan=True) | st.text(max_size=6)
nested = st.dictionaries(st.sampled_from(["technique_id", "name", "id", "code", "message", "url", "type"]),
                         scalars, max_size=3)
value = scalars | nested | st.lists(nested, max_size=2)
KEYS = ["run_id", "runId", "id", "generation_id", "status", "progress", "created_at", "createdAt", "started_at",
        "completed_at", "charged_cost", "error_code", "error_message", "error", "outputs", "poll_url",
        "technique", "technique_id", "project_id", "workspace_id", "model", "run_type", "type"]
items = st.fixed_dictionaries(
    {"run_id": st.sampled_from(["r1", "r2"]), "status": st.sampled_from(["running", "completed", "RUNNING", "x"])},
    optional={k: value for k in KEYS if k not in ("run_id", "status")},
)


def parsed(item: object, run_type: str | None) -> Run | str:
    try:
        return parse_run(item, default_run_type=run_type)
    except BadResponseError as exc:
        return f"error: {exc}"


def memo_parsed(memo: RunMemo, item: object, run_type: str | None) -> Run | str:
    try:
        return memo.parse(item, run_type)
    except BadResponseError as exc:
        return f"error: {exc}"


def same(a: Run | str, b: Run | str) -> bool:
    """Equal, and equal as the JSON a receiver gets (so 0.0 and -0.0, 1 and True, are told apart)."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a == b and repr(a.to_dict()) == repr(b.to_dict())


@settings(max_examples=400)
@given(st.lists(st.tuples(items, st.sampled_from([None, "technique", "generation"])), min_size=1, max_size=8),
       st.data())
def test_memo_parses_every_item_as_parse_run_does(sequence, data) -> None:
    memo = RunMemo()
    for item, run_type in sequence:
        # now and then the same item again, or the same with only its progress moved: the memo's fast paths
        for variant in (item, dict(item), {**item, "progress": data.draw(scalars)}):
            assert same(memo_parsed(memo, variant, run_type), parsed(variant, run_type))


def simulator_page(runs: list[sc.SimRun], now_ms: int) -> dict:
    base = "http://127.0.0.1:1/api/v1"
    return {"technique_runs": [sc.list_item(r, now_ms, api_base=base) for r in runs], "meta": {"next_cursor": None}}


def test_a_listing_shown_again_is_parsed_from_memory_with_the_same_result() -> None:
    import random

    rng = random.Random(3)
    start = 1_700_000_000_000
    runs = [sc.build_run(rng, seq=i, now_ms=start, technique=rng.choice(sc.TECHNIQUES), project_id="p",
                         workspace_id=sc.WORKSPACE_ID, created_at=start + i, pending_ms=(0, 1_000),
                         running_ms=(5_000, 60_000), outcome=None, fail_ratio=0.3, error_code=None, poll_url=None)
            for i in range(200)]
    memo = RunMemo()
    for now in (start + 2_000, start + 7_000, start + 12_000, start + 70_000, start + 75_000):
        doc = simulator_page(runs, now)
        with_memo = parse_list_page(doc, default_run_type="technique", memo=memo)
        assert with_memo == parse_list_page(doc, default_run_type="technique")
    # Most of the later listings came from memory: finished runs unchanged, running ones with a new progress.
    assert memo.hits > 500
    assert len(memo) == 200
    memo.retain({"nothing"})
    assert len(memo) == 0


def test_an_item_with_a_boolean_is_never_taken_from_memory() -> None:
    memo = RunMemo()
    assert memo.parse({"run_id": "r", "status": "running", "progress": 1}).progress == 1.0
    assert memo.parse({"run_id": "r", "status": "running", "progress": True}).progress is None  # == 1, not equal JSON
    assert memo.parse({"run_id": "r", "status": "running", "created_at": 1}).created_at == 1000
    assert memo.parse({"run_id": "r", "status": "running", "created_at": True}).created_at is None


runs = st.builds(
    Run,
    run_id=st.just("r"),
    status=st.sampled_from(["pending", "running", "completed", "failed"]),
    progress=st.none() | st.floats(0, 100),
    created_at=st.none() | st.integers(0, 10),
    started_at=st.none() | st.integers(0, 10),
    completed_at=st.none() | st.integers(0, 10),
    workspace_id=st.none() | st.sampled_from(["", "w1", "w2"]),
    project_id=st.none() | st.sampled_from(["", "p1"]),
    technique=st.none() | st.builds(Technique, technique_id=st.sampled_from(["t", None]), name=st.just("n")),
    charged_cost=st.none() | st.floats(0, 5),
    error_code=st.none() | st.just("E"),
    error_message=st.none() | st.just("m"),
    outputs=st.sampled_from([(), (Output("o", "image", "u"),)]),
    poll_url=st.none() | st.sampled_from(["", "http://x/1"]),
    run_type=st.sampled_from(["technique", "generation"]),
    model=st.none() | st.builds(Model, model_id=st.sampled_from(["m", None])),
)


def merged_slowly(new: Run, older: Run) -> Run:
    """``merged_with`` as it was written before its fast path: every field chosen one by one."""
    return Run(
        run_id=new.run_id, status=new.status,
        progress=new.progress if new.progress is not None else older.progress,
        created_at=new.created_at if new.created_at is not None else older.created_at,
        started_at=new.started_at if new.started_at is not None else older.started_at,
        completed_at=new.completed_at if new.completed_at is not None else older.completed_at,
        workspace_id=new.workspace_id or older.workspace_id, project_id=new.project_id or older.project_id,
        technique=new.technique or older.technique,
        charged_cost=new.charged_cost if new.charged_cost is not None else older.charged_cost,
        error_code=new.error_code if new.error_code is not None else older.error_code,
        error_message=new.error_message if new.error_message is not None else older.error_message,
        outputs=new.outputs or older.outputs, poll_url=new.poll_url or older.poll_url,
        run_type=older.run_type if older.run_type == "generation" else new.run_type, model=new.model or older.model,
    )


@settings(max_examples=500)
@given(runs, runs)
def test_merged_with_gives_what_merging_field_by_field_gives(new: Run, older: Run) -> None:
    merged = new.merged_with(older)
    assert merged == merged_slowly(new, older)
    assert merged.to_dict() == merged_slowly(new, older).to_dict()


@given(runs, st.none() | st.floats(0, 100))
def test_with_progress_is_replace(run: Run, progress: float | None) -> None:
    assert run.with_progress(progress) == Run(**{**msgspec.structs.asdict(run), "progress": progress})
