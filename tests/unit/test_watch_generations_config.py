"""[watch] resources and stalled_after, and sink ``match`` on model_id and run_type (issue 13). No event loop."""

from __future__ import annotations

import pytest

from watcher.config import parse
from watcher.errors import ConfigError
from watcher.model import Model, Run, Technique
from watcher.routing import event_field, route
from watcher.sinks.registry import REGISTRY
from watcher.transitions import build_event

ENV = {"FLORA_API_KEY": "sk_test_x", "HOME": "/home/op"}


def cfg(text: str):
    return parse(text, env=ENV, read_file=lambda p: "", sink_types=REGISTRY)


def test_defaults_watch_both_resources_and_report_stuck_runs_after_30_minutes():
    watch = cfg("").watch
    assert watch.resources == ("technique-runs", "generations")
    assert watch.stalled_after == 1800.0
    assert "run.stalled" in watch.events


@pytest.mark.parametrize(("text", "resources"), [
    ('resources = ["technique-runs"]', ("technique-runs",)),
    ('resources = "generations"', ("generations",)),
    ('resources = ["generations", "technique-runs", "generations"]', ("generations", "technique-runs")),
])
def test_resources(text, resources):
    assert cfg(f"[watch]\n{text}\n").watch.resources == resources


@pytest.mark.parametrize(("text", "message"), [
    ('resources = ["technique-run"]',
     "watch.resources[0]: unknown resource 'technique-run'; choose from technique-runs, generations "
     "(did you mean 'technique-runs'?)"),
    ("resources = []", "watch.resources: must not be an empty array (leave the key out instead)"),
    ("stalled_after = -1", "watch.stalled_after: must be at least 0, got -1"),
    ('stalled_after = "30m"', "watch.stalled_after: must be a number, got a string"),
])
def test_bad_values_name_the_key(text, message):
    with pytest.raises(ConfigError) as info:
        cfg(f"[watch]\n{text}\n")
    assert str(info.value) == message


def test_stalled_after_zero_disables():
    assert cfg("[watch]\nstalled_after = 0\n").watch.stalled_after == 0.0


GEN = Run(run_id="run_g", status="failed", run_type="generation", model=Model("flux-1.1-pro"), error_code="X")
TECH = Run(run_id="run_t", status="failed", technique=Technique("tech_1", "CCTV Cam"), error_code="X")


def test_sinks_match_model_id_and_run_type():
    config = cfg('''
[[sinks]]
name = "flux"
type = "stdout"
match = { model_id = "flux-*" }

[[sinks]]
name = "gens"
type = "stdout"
match = { run_type = "generation" }

[[sinks]]
name = "techs"
type = "stdout"
match = { run_type = "technique", technique = "CCTV*" }
''')
    gen = build_event("run.failed", GEN, "running", now_ms=1, late=False)
    tech = build_event("run.failed", TECH, "running", now_ms=1, late=False)
    assert route(config.sinks, gen) == ["flux", "gens"]
    assert route(config.sinks, tech) == ["techs"]
    assert (event_field(gen, "technique_id"), event_field(tech, "model_id")) == (None, None)
    assert gen.data["technique"] is None and gen.data["model"] == {"model_id": "flux-1.1-pro"}
