"""plan: one listing per (resource, filter combination), and pruning per run type. No event loop."""

from __future__ import annotations

from watcher import plan
from watcher.model import Run, TrackedRun

GEN = "generations"
TECH = "technique-runs"


def test_listings_cover_both_resources_and_technique_ids_only_for_technique_runs():
    got = plan.listings(["ws_1"], ["prj_a", "prj_b"], ["tech_x"])
    assert [(f.resource, f.project_id, f.technique_id) for f in got] == [
        (TECH, "prj_a", "tech_x"), (TECH, "prj_b", "tech_x"), (GEN, "prj_a", None), (GEN, "prj_b", None),
    ]
    assert plan.listings([], [], [], [GEN]) == [plan.Filters(resource=GEN)]
    assert plan.listings([], [], [], [TECH]) == plan.filter_combinations([], [], [])


def test_keys_of_technique_listings_are_unchanged_and_generations_have_their_own():
    assert plan.Filters(project_id="prj_a").key == "*|prj_a|*"
    assert plan.Filters(project_id="prj_a", resource=GEN).key == "generations:*|prj_a|*"
    assert plan.Filters(resource=GEN).as_params() == {}


def test_a_listing_admits_only_its_own_run_type():
    gen = Run(run_id="run_g", status="running", run_type="generation", project_id="prj_a")
    tech = Run(run_id="run_t", status="running", project_id="prj_a")
    assert plan.Filters(resource=GEN).admits(gen) and not plan.Filters(resource=GEN).admits(tech)
    assert plan.Filters().admits(tech) and not plan.Filters().admits(gen)
    assert not plan.Filters(project_id="prj_b", resource=GEN).admits(gen)


def tracked(run_id: str, created_at: int, run_type: str = "technique") -> TrackedRun:
    return TrackedRun(Run(run_id=run_id, status="completed", created_at=created_at, run_type=run_type), 0, 0)


def test_pruning_floors_per_run_type_so_an_unavailable_resource_holds_nothing_back():
    filters = plan.listings([], [], [])
    floors = plan.prune_floors(filters, {filters[0].key: 100_000})  # generations never listed yet
    assert floors == {"technique": 100_000 - plan.NEW_RUN_MARGIN_MS, "generation": None}
    runs = {t.run_id: t for t in (tracked("old_t", 10_000), tracked("new_t", 90_000),
                                  tracked("old_g", 10_000, "generation"))}
    assert sorted(plan.prunable(runs, floors)) == ["old_g", "old_t"]
    assert sorted(plan.prunable(runs, 80_000)) == ["old_g", "old_t"]  # one floor for all, as before
    both = plan.prune_floors([*filters, plan.Filters(project_id="p")], {filters[0].key: 100_000, "*|p|*": 50_000})
    assert both["technique"] == 50_000 - plan.NEW_RUN_MARGIN_MS
