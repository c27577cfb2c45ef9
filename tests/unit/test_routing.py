"""routing.matches: per-sink event types and match globs. Pure, no event loop."""

from __future__ import annotations

import pytest

from tests.sinks.helpers import make_event
from watcher.config import SinkConfig
from watcher.routing import event_field, matches, route
from watcher.sinks.registry import sink_config


def sink(events=("run.completed", "run.failed"), **match) -> SinkConfig:
    return sink_config(name="s", type="stdout", events=tuple(events), match={k: tuple(v) for k, v in match.items()})


def test_event_type_must_be_subscribed() -> None:
    assert matches(sink(), make_event("run.failed"))
    assert not matches(sink(events=("run.failed",)), make_event("run.completed"))
    assert not matches(sink(), make_event("run.started"))


@pytest.mark.parametrize(("match", "expected"), [
    ({"error_code": ["GPU_*"]}, True),
    ({"error_code": ["gpu_*"]}, False),  # case-sensitive
    ({"error_code": ["LLM_*", "GPU_PROVIDER_?RROR"]}, True),  # any glob of the list
    ({"project_id": ["prj_abc123"], "workspace_id": ["ws_*"]}, True),
    ({"project_id": ["prj_abc123"], "workspace_id": ["ws_other"]}, False),  # every key must match
    ({"technique_id": ["tech_abcd*"]}, True),
    ({"technique": ["CCTV*"]}, True),
    ({"technique": ["[A-C]CTV Cam"]}, True),
    ({"technique": ["Other"]}, False),
])
def test_match_globs(match: dict, expected: bool) -> None:
    assert matches(sink(**match), make_event("run.failed")) is expected


def test_a_null_field_never_matches_even_a_star() -> None:
    completed = make_event("run.completed")  # error_code is null
    assert not matches(sink(error_code=["*"]), completed)
    no_technique = make_event("run.failed", technique=None)
    assert not matches(sink(technique=["*"]), no_technique)
    assert not matches(sink(technique_id=["*"]), no_technique)
    assert event_field(no_technique, "technique") is None


def test_route_keeps_configuration_order() -> None:
    sinks = [sink_config(name="b", type="stdout"), sink_config(name="a", type="stdout", events=("run.failed",)),
             sink_config(name="c", type="stdout", match={"error_code": ("X*",)})]
    assert route(sinks, make_event("run.failed")) == ["b", "a"]
    assert route(sinks, make_event("run.completed")) == ["b"]
