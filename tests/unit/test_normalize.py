"""normalize.py: tolerant parsing of run objects, list pages and error bodies (flora-api.md §6, §8)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.errors import BadResponseError
from watcher.model import Output, Run, Technique
from watcher.normalize import ListPage, parse_error_body, parse_list_page, parse_run, to_ms

SNAKE = {
    "run_id": "run_abc123",
    "technique_run_id": "run_abc123",
    "status": "failed",
    "progress": 100,
    "created_at": 1764399990000,
    "started_at": 1764399991000,
    "completed_at": 1764400000000,
    "workspace_id": "ws_abc123",
    "project_id": "prj_abc123",
    "technique": {"technique_id": "tech_abcd1234", "name": "CCTV Cam"},
    "charged_cost": 0.05,
    "error_code": "GPU_PROVIDER_ERROR",
    "error_message": "The provider failed to complete the generation.",
    "outputs": [{"output_id": "output_1", "type": "imageUrl", "url": "https://media.flora.ai/output.png"}],
    "poll_url": "https://app.flora.ai/api/v1/techniques/cctv-cam/runs/run_abc123",
}

CAMEL = {
    "runId": "run_abc123",
    "techniqueRunId": "run_abc123",
    "status": "FAILED",
    "progress": 100,
    "createdAt": 1764399990,  # seconds: the same instants as SNAKE's milliseconds
    "startedAt": 1764399991,
    "completedAt": 1764400000,
    "workspaceId": "ws_abc123",
    "projectId": "prj_abc123",
    "technique": {"techniqueId": "tech_abcd1234", "name": "CCTV Cam"},
    "chargedCost": 0.05,
    "errorCode": "GPU_PROVIDER_ERROR",
    "errorMessage": "The provider failed to complete the generation.",
    "outputs": [{"outputId": "output_1", "type": "imageUrl", "url": "https://media.flora.ai/output.png"}],
    "pollUrl": "https://app.flora.ai/api/v1/techniques/cctv-cam/runs/run_abc123",
}


# ------------------------------------------------------------------------------------------ to_ms


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1764399990, 1764399990000),  # seconds
        (1764399990123, 1764399990123),  # milliseconds
        (1764399990.5, 1764399990500),  # fractional seconds
        (1764399990123.0, 1764399990123),
        ("1764399990", 1764399990000),  # numeric strings
        (" 1764399990123 ", 1764399990123),
        ("2025-11-29T07:06:30Z", 1764399990000),  # ISO-8601
        ("2025-11-29T08:06:30+01:00", 1764399990000),
        ("2025-11-29T07:06:30.123", 1764399990123),  # naive → UTC
        (0, 0),  # the docs' examples use 0
    ],
)
def test_to_ms_accepts_seconds_milliseconds_and_iso(value: object, expected: int) -> None:
    assert to_ms(value) == expected


@pytest.mark.parametrize(
    "value",
    [None, True, False, -5, float("nan"), float("inf"), "", "soon", "12abc", [1], {"t": 1}, 10**20, "1e400",
     10**400],
)
def test_to_ms_rejects_everything_else(value: object) -> None:
    assert to_ms(value) is None


@given(st.integers(min_value=10**9, max_value=4 * 10**9))
def test_seconds_and_milliseconds_normalise_to_the_same_instant(seconds: int) -> None:
    assert to_ms(seconds) == to_ms(seconds * 1000) == to_ms(str(seconds)) == seconds * 1000


# ------------------------------------------------------------------------------------------ parse_run


def test_snake_case_run_parses_every_field() -> None:
    run = parse_run(SNAKE)
    assert run == Run(
        run_id="run_abc123",
        status="failed",
        progress=100.0,
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


def test_camel_case_and_seconds_parse_equal_to_snake_case() -> None:
    assert parse_run(CAMEL) == parse_run(SNAKE)


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"technique_run_id": "run_t", "status": "pending"}, "run_t"),
        ({"techniqueRunId": "run_t", "status": "pending"}, "run_t"),
        ({"generation_id": "run_g", "status": "pending"}, "run_g"),
        ({"id": "run_i", "status": "pending"}, "run_i"),
        ({"run_id": "run_r", "id": "other", "status": "pending"}, "run_r"),
        ({"run_id": 42, "runId": "run_camel", "status": "pending"}, "run_camel"),  # wrong type skipped
    ],
)
def test_run_id_comes_from_any_documented_name_with_id_last(obj: dict, expected: str) -> None:
    assert parse_run(obj).run_id == expected


def test_minimal_run_leaves_optional_fields_empty() -> None:
    run = parse_run({"run_id": "run_1", "status": "pending", "extra": {"nested": [1, 2]}, "limit": 5})
    assert run == Run(run_id="run_1", status="pending")
    assert run.outputs == ()


def test_null_optional_fields_become_none() -> None:
    obj = {k: None for k in SNAKE} | {"run_id": "run_1", "status": "running"}
    assert parse_run(obj) == Run(run_id="run_1", status="running")


def test_status_is_lower_cased_and_unknown_statuses_are_kept() -> None:
    assert parse_run({"run_id": "r", "status": " Running "}).status == "running"
    run = parse_run({"run_id": "r", "status": "Queued"})
    assert run.status == "queued"
    assert not run.terminal and not run.active


@pytest.mark.parametrize(
    "obj",
    [
        {"status": "running"},  # no id
        {"run_id": "", "status": "running"},
        {"run_id": None, "id": 7, "status": "running"},
        {"run_id": "run_1"},  # no status
        {"run_id": "run_1", "status": ""},
        {"run_id": "run_1", "status": 3},
        [{"run_id": "run_1", "status": "running"}],  # not an object
        "run_1",
        None,
    ],
)
def test_unusable_runs_raise_bad_response(obj: object) -> None:
    with pytest.raises(BadResponseError):
        parse_run(obj)


def test_defaults_fill_in_what_the_caller_knows() -> None:
    run = parse_run({"poll_url": "https://x/runs/run_9"}, default_run_id="run_9", default_status="pending")
    assert (run.run_id, run.status, run.poll_url) == ("run_9", "pending", "https://x/runs/run_9")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (42, 42.0),
        (12.5, 12.5),
        ("50", 50.0),
        (150, 150.0),
        (-3, -3.0),
        (True, None),
        ("half", None),
        ([], None),
        (10**400, None),  # beyond any float: not a crash
    ],
)
def test_progress_is_a_raw_float_or_none(raw: object, expected: float | None) -> None:
    assert parse_run({"run_id": "r", "status": "running", "progress": raw}).progress == expected


@pytest.mark.parametrize(
    ("raw", "expected"), [(0, 0.0), (0.873, 0.873), ("1.5", 1.5), (-0.1, None), ("free", None), (False, None)]
)
def test_charged_cost_is_a_non_negative_number_or_none(raw: object, expected: float | None) -> None:
    assert parse_run({"run_id": "r", "status": "completed", "charged_cost": raw}).charged_cost == expected


def test_strings_of_the_wrong_type_become_none() -> None:
    run = parse_run(
        {
            "run_id": "r",
            "status": "failed",
            "error_code": 500,
            "error_message": {"text": "x"},
            "poll_url": ["u"],
            "project_id": 1,
            "workspace_id": True,
            "technique": 12,
            "outputs": {"output_id": "o"},
        }
    )
    assert run == Run(run_id="r", status="failed")


def test_outputs_skip_non_objects_and_keep_partial_ones() -> None:
    run = parse_run(
        {"run_id": "r", "status": "completed", "outputs": ["x", None, {"type": "text", "url": "hi"}]}
    )
    assert run.outputs == (Output(None, "text", "hi"),)


def test_technique_from_bare_slug_or_top_level_id() -> None:
    assert parse_run({"run_id": "r", "status": "x", "technique": "cctv-cam"}).technique == Technique(
        "cctv-cam", None
    )
    assert parse_run({"run_id": "r", "status": "x", "techniqueId": "tech_1"}).technique_id == "tech_1"


def test_error_fields_from_a_nested_error_object() -> None:
    run = parse_run(
        {"run_id": "r", "status": "failed", "error": {"code": "model_timeout", "message": "slow"}}
    )
    assert (run.error_code, run.error_message) == ("model_timeout", "slow")


def test_run_type_from_ticket_type() -> None:
    assert parse_run({"run_id": "r", "status": "pending", "type": "generation"}).run_type == "generation"
    assert parse_run({"run_id": "r", "status": "pending", "type": "imageUrl"}).run_type == "technique"


# ------------------------------------------------------------------------------------------ hypothesis

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
KNOWN_KEYS = sorted(
    set(SNAKE)
    | set(CAMEL)
    | {"id", "generation_id", "error", "type", "run_type", "runType", "techniqueId", "technique_name"}
)
run_like = st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=len(KNOWN_KEYS))


@settings(max_examples=300)
@given(json_values | run_like)
def test_parse_run_raises_nothing_but_bad_response(obj: object) -> None:
    try:
        run = parse_run(obj)
    except BadResponseError:
        return
    assert run.run_id and run.status == run.status.lower()
    assert run.progress is None or math.isfinite(run.progress)
    assert run.charged_cost is None or run.charged_cost >= 0
    for stamp in (run.created_at, run.started_at, run.completed_at):
        assert stamp is None or (isinstance(stamp, int) and stamp >= 0)
    json.dumps(run.to_dict())  # always JSON-safe


@settings(max_examples=200)
@given(
    st.dictionaries(st.sampled_from(["technique_runs", "data", "meta", "items"]), json_values) | json_values
)
def test_parse_list_page_raises_nothing_but_bad_response(obj: object) -> None:
    try:
        page = parse_list_page(obj)
    except BadResponseError:
        return
    assert page.next_cursor is None or (isinstance(page.next_cursor, str) and page.next_cursor)


camel_of = {
    "run_id": "runId",
    "created_at": "createdAt",
    "started_at": "startedAt",
    "completed_at": "completedAt",
    "project_id": "projectId",
    "workspace_id": "workspaceId",
    "charged_cost": "chargedCost",
    "error_code": "errorCode",
    "error_message": "errorMessage",
    "poll_url": "pollUrl",
}
optional_text = st.none() | st.text(min_size=1, max_size=10)
stamps = st.none() | st.integers(min_value=10**9, max_value=4 * 10**9)


@given(
    run_id=st.text(min_size=1, max_size=10),
    status=st.sampled_from(["pending", "running", "completed", "failed", "weird"]),
    progress=st.none() | st.floats(min_value=0, max_value=100),
    created_at=stamps,
    started_at=stamps,
    completed_at=stamps,
    project_id=optional_text,
    workspace_id=optional_text,
    charged_cost=st.none() | st.floats(min_value=0, max_value=10),
    error_code=optional_text,
    error_message=optional_text,
    poll_url=optional_text,
)
def test_snake_and_camel_forms_of_the_same_run_parse_equal(**fields: object) -> None:
    snake = {k: v for k, v in fields.items() if v is not None}
    camel = {camel_of.get(k, k): v for k, v in snake.items()}
    for key in ("created_at", "started_at", "completed_at"):  # camel side in seconds, snake in ms
        if key in snake:
            snake[key] = snake[key] * 1000
    assert parse_run(snake) == parse_run(camel)


@given(st.binary(max_size=300))
def test_parse_error_body_never_raises(body: bytes) -> None:
    _code, message = parse_error_body(body)
    assert message is None or (len(message) <= 200 and "\n" not in message)


# ------------------------------------------------------------------------------------------ pages


def test_list_page_with_meta() -> None:
    page = parse_list_page(
        {
            "technique_runs": [SNAKE, {"run_id": "run_2", "status": "running"}],
            "meta": {"next_cursor": "eyJvZmZzZXQiOjIwfQ", "total_estimate": 250, "limit": 100},
        }
    )
    assert [r.run_id for r in page.runs] == ["run_abc123", "run_2"]
    assert (page.next_cursor, page.total_estimate, page.skipped) == ("eyJvZmZzZXQiOjIwfQ", 250, 0)


@pytest.mark.parametrize("key", ["technique_runs", "techniqueRuns", "generations", "data", "items"])
def test_list_page_accepts_every_list_key(key: str) -> None:
    expected = parse_run(SNAKE, default_run_type="generation" if key == "generations" else None)
    assert parse_list_page({key: [SNAKE]}).runs == (expected,)


GENERATION = {
    "generation_id": "run_gen1", "run_id": "run_gen1", "project_id": "prj_a", "workspace_id": "ws_a",
    "status": "running", "progress": 40, "created_at": 1764399990000, "model": {"model_id": "flux-pro"},
    "poll_url": "https://app.flora.ai/api/v1/runs/run_gen1",
}  # fmt: skip


def test_generations_page_items_are_generation_runs_with_their_model() -> None:
    page = parse_list_page({"generations": [GENERATION], "meta": {"next_cursor": None}})
    (run,) = page.runs
    assert (run.run_id, run.run_type, run.model_id, run.technique) == ("run_gen1", "generation", "flux-pro", None)
    assert run.to_dict()["model"] == {"model_id": "flux-pro"}
    assert Run.from_dict(run.to_dict()) == run


@pytest.mark.parametrize(
    ("obj", "run_type", "model_id"),
    [
        ({"generation_id": "run_g", "status": "pending"}, "generation", None),  # generation_id alone says so
        ({"generationId": "run_g", "status": "pending", "model": "sdxl"}, "generation", "sdxl"),
        ({"run_id": "run_g", "status": "pending", "model": {"model_id": None}}, "technique", None),
        ({"run_id": "run_g", "status": "pending", "type": "generation", "model": {"modelId": "m"}}, "generation", "m"),
        ({"run_id": "run_g", "status": "pending", "run_type": "technique", "generation_id": "run_g"},
         "technique", None),
    ],
)
def test_run_type_and_model_from_any_shape(obj: dict, run_type: str, model_id: str | None) -> None:
    run = parse_run(obj)
    assert (run.run_type, run.model_id) == (run_type, model_id)


def test_a_generation_polled_by_id_keeps_its_model_from_the_listing() -> None:
    listed = parse_list_page({"generations": [GENERATION]}).runs[0]
    polled = parse_run({"run_id": "run_gen1", "status": "completed", "progress": 100})
    merged = polled.merged_with(listed)
    assert (merged.run_type, merged.model_id, merged.project_id) == ("generation", "flux-pro", "prj_a")


@pytest.mark.parametrize("meta", [{}, {"next_cursor": None}, {"next_cursor": ""}, None, "nope"])
def test_absent_null_or_empty_cursor_means_last_page(meta: object) -> None:
    obj: dict = {"technique_runs": []}
    if meta is not None:
        obj["meta"] = meta
    assert parse_list_page(obj).next_cursor is None


def test_camel_case_meta() -> None:
    page = parse_list_page({"techniqueRuns": [CAMEL], "meta": {"nextCursor": "c2", "totalEstimate": 3}})
    assert (page.next_cursor, page.total_estimate) == ("c2", 3)


@pytest.mark.parametrize("estimate", [-1, 2.5, "10", True, None, 10**400])
def test_odd_total_estimates_become_none(estimate: object) -> None:
    assert parse_list_page({"data": [], "meta": {"total_estimate": estimate}}).total_estimate is None


def test_unparseable_items_are_skipped_and_counted() -> None:
    page = parse_list_page(
        {"technique_runs": [SNAKE, {"status": "running"}, "garbage", None, {"run_id": "x"}]}
    )
    assert page == ListPage(runs=(parse_run(SNAKE),), next_cursor=None, total_estimate=None, skipped=4)


@pytest.mark.parametrize("obj", [[], None, "x", {"technique_runs": None}, {"meta": {}}, {"data": {"a": 1}}])
def test_a_body_without_a_list_is_a_bad_response(obj: object) -> None:
    with pytest.raises(BadResponseError):
        parse_list_page(obj)


# ------------------------------------------------------------------------------------------ error bodies


def test_flora_error_envelope() -> None:
    body = json.dumps({"error": {"code": "invalid_api_key", "message": "The API key is invalid."}}).encode()
    assert parse_error_body(body) == ("invalid_api_key", "The API key is invalid.")


def test_validation_fields_are_summarised() -> None:
    body = json.dumps(
        {
            "error": {
                "code": "input_validation_error",
                "message": "Invalid input",
                "fields": [{"field": "limit", "message": "must be at most 100"}],
            }
        }
    ).encode()
    assert parse_error_body(body) == ("input_validation_error", "Invalid input (limit: must be at most 100)")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", (None, None)),
        (b"   \n", (None, None)),
        (b"<html><body><h1>502 Bad Gateway</h1></body></html>", (None, "502 Bad Gateway")),
        (b'{"error": "Unauthorized"}', (None, "Unauthorized")),
        (b'{"code": "not_found", "message": "No such run"}', ("not_found", "No such run")),
        (b'["odd"]', (None, '["odd"]')),
        (b"upstream\r\nreset\x00", (None, "upstream reset")),
    ],
)
def test_odd_error_bodies(body: bytes, expected: tuple) -> None:
    assert parse_error_body(body) == expected


def test_long_error_bodies_are_cut_short() -> None:
    code, message = parse_error_body(b"x" * 5000)
    assert code is None and message is not None and len(message) <= 200
