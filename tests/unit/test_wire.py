"""``normalize.parse_list_body`` (list pages decoded to typed Structs in C, ``wire``) gives exactly what
``parse_list_page(json.loads(body))`` gives, for documented pages and for every quirk ``normalize`` tolerates: the
quirky items (or pages) go through ``parse_run`` instead, and which path an item took never shows."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.errors import BadResponseError
from watcher.model import Run
from watcher.normalize import ListPage, RunMemo, parse_list_body, parse_list_page
from watcher.simulator import scenario as sc

# Mostly the documented shape and types, with the quirks normalize tolerates mixed in.
ids = st.sampled_from(["run_a", "run_b", "run_c", ""])
texts = st.sampled_from(["", "x", "tech_1", "Cam", "prj_1", "ws_1", "https://h/p", "imageUrl", "generation",
                         "technique", "action", "  Running ", "RUNNING", "queued"])
stamps = st.sampled_from([0, 1_764_399_000, 1_764_399_000_123, 1_764_399_000.5, 1e11, 99_999_999_999,
                          10**20, -5, 1_764_399_000_123.0])
numbers = st.integers(-10, 200) | st.floats(-10, 200, allow_nan=False) | st.sampled_from([-0.0, 0, 2**60, 10**30])
quirks = st.none() | st.booleans() | st.sampled_from(["12", "2025-11-29T07:06:30Z", "", [], {}, [1], "NaN"])
nested_tech = st.fixed_dictionaries({}, optional={"technique_id": texts | quirks, "name": texts | quirks,
                                                  "techniqueId": texts, "id": texts, "slug": texts})
nested_model = st.fixed_dictionaries({}, optional={"model_id": texts | quirks, "name": texts, "modelId": texts,
                                                   "id": texts})
output = st.fixed_dictionaries({}, optional={"output_id": texts | quirks, "type": texts, "url": texts,
                                             "outputId": texts, "id": texts})
error = st.fixed_dictionaries({}, optional={"code": texts | quirks, "message": texts})
TYPED = {
    "run_id": ids, "technique_run_id": ids, "generation_id": ids,
    "status": st.sampled_from(["pending", "running", "completed", "failed", "Queued", " running", ""]),
    "progress": numbers, "created_at": stamps, "started_at": stamps, "completed_at": stamps,
    "workspace_id": texts, "project_id": texts, "technique": nested_tech | texts, "technique_id": texts,
    "technique_name": texts, "charged_cost": numbers, "error_code": texts, "error_message": texts,
    "error": error | texts, "outputs": st.lists(output, max_size=2), "poll_url": texts, "run_type": texts,
    "type": texts, "model": nested_model | texts, "model_id": texts,
}
OTHER_NAMES = ["runId", "techniqueRunId", "generationId", "id", "createdAt", "startedAt", "completedAt",
               "workspaceId", "projectId", "techniqueId", "techniqueName", "chargedCost", "errorCode",
               "errorMessage", "pollUrl", "runType", "modelId"]


@st.composite
def items(draw):
    item = draw(st.fixed_dictionaries({"run_id": ids, "status": TYPED["status"]},
                                      optional={k: v for k, v in TYPED.items() if k not in ("run_id", "status")}))
    if draw(st.integers(0, 5)) == 0:  # now and then a quirk: a value of another type, or another key name
        key = draw(st.sampled_from(sorted(TYPED)))
        item[key] = draw(quirks | numbers | texts)
    if draw(st.integers(0, 7)) == 0:
        item[draw(st.sampled_from(OTHER_NAMES))] = draw(texts | numbers | st.none())
    if draw(st.integers(0, 7)) == 0:
        item["unknown_field"] = draw(texts | numbers | quirks)  # ignored by both
    if draw(st.integers(0, 15)) == 0:
        return draw(quirks | texts)  # not an object at all
    return item


@st.composite
def pages(draw):
    key = draw(st.sampled_from(["technique_runs", "technique_runs", "generations", "data", "techniqueRuns"]))
    body: dict = {key: draw(st.lists(items(), max_size=4))}
    meta = draw(st.none() | st.fixed_dictionaries({}, optional={
        "next_cursor": st.sampled_from(["", "c1", None, 5, True]), "total_estimate": st.sampled_from(
            [None, 0, 12, -1, 2.5, "10", True, 10**400]), "nextCursor": st.just("c2"), "limit": st.just(5)}))
    if meta is not None:
        body["meta"] = meta
    if draw(st.integers(0, 9)) == 0:
        body["next_cursor"] = "top"
    return body


def encoded(body: object) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


def same(a: ListPage | str, b: ListPage | str) -> bool:
    """Equal, and equal as JSON (0.0 and -0.0, 1 and True, told apart)."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a == b and [repr(r.to_dict()) for r in a.runs] == [repr(r.to_dict()) for r in b.runs]


def slow(body: bytes, run_type: str | None, memo: RunMemo | None) -> ListPage | str:
    try:
        return parse_list_page(json.loads(body), default_run_type=run_type, memo=memo)
    except BadResponseError as exc:
        return f"error: {exc}"


def fast(body: bytes, run_type: str | None, memo: RunMemo | None) -> ListPage | str:
    page = parse_list_body(body, default_run_type=run_type, memo=memo)
    return slow(body, run_type, memo) if page is None else page  # (what api._parse_body does)


@settings(max_examples=300, deadline=None)
@given(st.lists(pages(), min_size=1, max_size=4), st.sampled_from([None, "technique", "generation"]), st.data())
def test_the_typed_path_parses_every_page_as_normalize_does(sequence, run_type, data) -> None:
    memo_fast, memo_slow = RunMemo(), RunMemo()
    for body in sequence:
        # a page, the same page again, and again with progress moved: the memos' fast paths
        variants = [body, body]
        runs = body.get("technique_runs") or body.get("generations")
        if isinstance(runs, list):
            moved = [dict(item, progress=data.draw(numbers)) if isinstance(item, dict) else item for item in runs]
            variants.append({**body, ("technique_runs" if "technique_runs" in body else "generations"): moved})
        for variant in variants:
            raw = encoded(variant)
            assert same(fast(raw, run_type, memo_fast), slow(raw, run_type, memo_slow))
            assert same(fast(raw, run_type, None), slow(raw, run_type, None))


def test_a_documented_page_takes_the_typed_path_and_a_quirky_item_alone_leaves_it() -> None:
    runs = [sc.list_item(r, 1_764_399_010_000, api_base="http://h/api/v1") for r in simulated_runs(3)]
    body = {"technique_runs": runs, "meta": {"next_cursor": "c", "total_estimate": 3, "limit": 100}}
    page = parse_list_body(encoded(body), default_run_type="technique")
    assert page is not None and len(page.runs) == 3 and page.next_cursor == "c" and page.total_estimate == 3
    camel = dict(runs[1])
    camel["createdAt"] = camel.pop("created_at") // 1000  # camelCase and seconds: this item goes through parse_run
    body["technique_runs"] = [runs[0], camel, runs[2], "not a run"]
    mixed = parse_list_body(encoded(body), default_run_type="technique")
    assert mixed is not None and same(mixed, parse_list_page(json.loads(encoded(body)), default_run_type="technique"))
    assert mixed.runs[1].created_at == page.runs[1].created_at // 1000 * 1000 and mixed.skipped == 1


@pytest.mark.parametrize("body", [
    b'{"technique_runs": [{"run_id": "r", "status": "running", "progress": NaN}]}',  # json.loads takes NaN
    b'{"techniqueRuns": []}', b'{"data": []}', b'[]', b'{"meta": {}}', b'not json', b'{"technique_runs": 5}',
    b'{"technique_runs": [], "meta": {"nextCursor": "c"}}',
    b"[" * 100_000 + b"]" * 100_000,  # deeper than msgspec goes (a RecursionError inside it, caught)
    b'{"technique_runs": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    b'{"technique_runs": [{"run_id": "r", "status": "running", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}",
])
def test_what_is_not_a_documented_page_is_left_to_normalize(body: bytes) -> None:
    assert parse_list_body(body) is None


def test_an_unchanged_item_is_the_remembered_run_and_a_moved_progress_a_copy() -> None:
    memo = RunMemo()
    item = sc.list_item(simulated_runs(1)[0], 1_764_399_010_000, api_base="http://h/api/v1")
    first = parse_list_body(encoded({"technique_runs": [item]}), memo=memo)
    again = parse_list_body(encoded({"technique_runs": [item]}), memo=memo)
    moved = parse_list_body(encoded({"technique_runs": [dict(item, progress=77.5)]}), memo=memo)
    assert first is not None and again is not None and moved is not None
    assert again.runs[0] is first.runs[0] and memo.hits == 2
    assert moved.runs[0] == Run(**{**_fields(first.runs[0]), "progress": 77.5})


def _fields(run: Run) -> dict:
    return {f: getattr(run, f) for f in run.__struct_fields__}


def simulated_runs(n: int) -> list[sc.SimRun]:
    import random

    rng = random.Random(3)
    return [sc.build_run(rng, seq=i, now_ms=1_764_399_000_000, technique=sc.TECHNIQUES[0], project_id="prj_1",
                         workspace_id="ws_1", created_at=1_764_399_000_000 - 5_000, pending_ms=100, running_ms=60_000,
                         outcome="completed", fail_ratio=0.0, error_code=None, poll_url=None) for i in range(n)]
