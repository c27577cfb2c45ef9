"""The sweep's scheduling decisions: window depth, whom to poll, what to forget. Pure, no event loop."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from watcher import plan
from watcher.model import Run, Technique, TrackedRun


def tracked(run_id: str, status: str, created_at: int | None, *, next_poll_ms=None, attempt=0) -> TrackedRun:
    run = Run(run_id=run_id, status=status, created_at=created_at, technique=Technique("tech_1", "T"))
    return TrackedRun(run=run, first_seen_ms=0, last_change_ms=0, poll_attempt=attempt, next_poll_ms=next_poll_ms)


def cont(**kw) -> bool:
    base = dict(page_oldest_ms=100_000, next_cursor="c", new_after_ms=None, density_per_ms=0.01, page_size=100,
                unseen_created_desc=[], unseen_count=0)
    base.update(kw)
    if "unseen_created_desc" in kw and "unseen_count" not in kw:
        base["unseen_count"] = len(kw["unseen_created_desc"])
    return plan.should_continue_window(**base)


def test_window_stops_at_the_last_page() -> None:
    assert not cont(next_cursor=None, new_after_ms=10**9)


def test_window_always_reaches_the_previous_sweeps_newest_run() -> None:
    """Runs created and finished between two sweeps are only found by reading down to new_after."""
    assert cont(page_oldest_ms=100_000, new_after_ms=90_000)
    assert not cont(page_oldest_ms=80_000, new_after_ms=90_000)


def test_window_continues_while_pages_settle_at_least_one_tracked_run_each() -> None:
    # density 0.01 runs/ms → a page of 100 spans 10 s. A tracked run 5 s below: within one page.
    assert cont(unseen_created_desc=[95_000])
    # Two runs 15 s below: two pages for two runs — still worth it.
    assert cont(unseen_created_desc=[85_000, 85_000])
    # One run 60 s below: six pages to settle one run a single poll would settle.
    assert not cont(unseen_created_desc=[40_000])


def test_a_dense_cluster_further_down_justifies_the_pages_to_reach_it() -> None:
    cluster = [40_000] * 10  # six pages away, but ten runs settled
    assert cont(unseen_created_desc=cluster)


def test_without_a_density_estimate_one_more_page_is_read() -> None:
    assert cont(density_per_ms=None, unseen_created_desc=[1])


@given(st.lists(st.integers(min_value=0, max_value=99_999), max_size=30), st.floats(min_value=1e-5, max_value=1.0))
def test_window_decision_is_monotone_in_the_tracked_runs_to_settle(created: list[int], dens: float) -> None:
    """Adding a run to settle never turns 'continue' into 'stop'."""
    created.sort(reverse=True)
    before = cont(unseen_created_desc=created, density_per_ms=dens)
    after = cont(unseen_created_desc=sorted([*created, 99_999], reverse=True), density_per_ms=dens)
    assert after or not before


def test_density_needs_a_span() -> None:
    assert plan.density(None, None, 10) is None
    assert plan.density(100, 100, 10) is None
    assert plan.density(1_100, 100, 100) == 0.1


def test_runs_left_unsettled_by_the_listing_are_polled_when_due() -> None:
    runs = {
        "a": tracked("a", "running", 1),  # not seen, never polled → due now
        "b": tracked("b", "running", 2, next_poll_ms=5_000),  # scheduled later
        "c": tracked("c", "running", 3, next_poll_ms=500),  # due
        "d": tracked("d", "completed", 4),  # terminal: never polled
        "e": tracked("e", "running", 5),  # seen in the listing
    }
    due = plan.runs_to_poll(runs, {"e"}, now_ms=1_000)
    assert [t.run_id for t in due] == ["a", "c"]


def test_poll_backoff_grows_without_change_and_resets_on_change() -> None:
    t = tracked("a", "running", 1)
    delays = []
    for _ in range(8):
        t = plan.after_poll(t, changed=False, now_ms=0, rand=0.999, first_s=1.0, cap_s=30.0)
        delays.append(t.next_poll_ms)
    assert delays == sorted(delays)
    assert delays[-1] <= 30_000
    t = plan.after_poll(t, changed=True, now_ms=0, rand=0.999, first_s=1.0, cap_s=30.0)
    assert t.poll_attempt == 0 and t.next_poll_ms <= 1_000


def test_settled_by_listing_clears_the_poll_schedule() -> None:
    t = tracked("a", "running", 1, next_poll_ms=9, attempt=3)
    s = plan.settled_by_listing(t)
    assert s.next_poll_ms is None and s.poll_attempt == 0
    assert plan.settled_by_listing(s) is s


def test_terminal_runs_are_forgotten_once_below_the_new_run_floor() -> None:
    runs = {
        "old": tracked("old", "completed", 1_000),
        "recent": tracked("recent", "failed", 9_000),
        "active": tracked("active", "running", 1_000),
        "undated": tracked("undated", "completed", None),
    }
    assert sorted(plan.prunable(runs, 5_000)) == ["old", "undated"]
    assert sorted(plan.prunable(runs, None)) == ["old", "recent", "undated"]


def test_filter_lists_become_one_listing_per_combination() -> None:
    combos = plan.filter_combinations(["ws_1"], ["prj_a", "prj_b"], [])
    assert [c.as_params() for c in combos] == [
        {"workspace_id": "ws_1", "project_id": "prj_a"},
        {"workspace_id": "ws_1", "project_id": "prj_b"},
    ]
    assert plan.filter_combinations([], [], []) == [plan.Filters()]
    assert len({c.key for c in combos}) == 2


def test_filters_admit_runs_whose_fields_are_unknown() -> None:
    f = plan.Filters(project_id="prj_a")
    assert f.admits(Run("r", "running", project_id="prj_a"))
    assert f.admits(Run("r", "running"))  # a single-run GET carries no project_id
    assert not f.admits(Run("r", "running", project_id="prj_b"))


def test_cadence_does_not_drift_and_does_not_burst() -> None:
    assert plan.next_sweep_at(10.0, 5.0, 11.0) == 15.0
    assert plan.next_sweep_at(10.0, 5.0, 17.0) == 17.0  # a long sweep: the next starts at once, no catch-up


def test_new_run_floor_has_a_margin_below_the_watermark() -> None:
    assert plan.new_after_for(None) is None
    assert plan.new_after_for(100_000) == 100_000 - plan.NEW_RUN_MARGIN_MS


def test_prune_keeps_the_finished_runs_the_next_listing_shows_again() -> None:
    runs = {
        "active_old": tracked("active_old", "running", 2_000),
        "active_new": tracked("active_new", "pending", 8_000),
        "done_before_any_active": tracked("done_before_any_active", "completed", 1_000),
        "done_in_window": tracked("done_in_window", "failed", 3_000),
        "done_recent": tracked("done_recent", "completed", 9_500),  # above the floor: could still look new
        "undated": tracked("undated", "completed", None),
    }
    pruned = plan.prune(runs, {"technique": 9_000})
    assert sorted(pruned.deletes) == ["done_before_any_active", "undated"]
    assert (pruned.oldest_active, pruned.active) == ({"technique": 2_000}, 2)
    # Nothing active: every finished run below the floor goes, as with prunable.
    finished = {k: v for k, v in runs.items() if not k.startswith("active")}
    assert sorted(plan.prune(finished, {"technique": 9_000}).deletes) == sorted(
        plan.prunable(finished, {"technique": 9_000}))


def test_prune_keeps_at_most_one_finished_run_per_active_run_and_at_least_min_keep() -> None:
    runs = {"active": tracked("active", "running", 0)}
    runs.update({f"d{i}": tracked(f"d{i}", "completed", 10 + i) for i in range(10)})
    pruned = plan.prune(runs, {"technique": 100_000}, min_keep=3)
    assert sorted(pruned.deletes) == [f"d{i}" for i in range(7)]  # the 3 newest stay
    assert plan.prune(runs, {"technique": 100_000}, min_keep=20).deletes == []


def test_prune_batch_looks_only_at_the_batch_and_bounds_memory() -> None:
    runs = {"active": tracked("active", "running", 100)}
    runs.update({f"d{i}": tracked(f"d{i}", "completed", 200 + i) for i in range(6)})
    runs["below"] = tracked("below", "completed", 50)  # older than every active run
    last = plan.prune(runs, {"technique": 10_000}, min_keep=2)  # what the last full prune saw: 1 active run
    batch = ["d0", "d1", "d2", "d3", "below", "active", "gone"]
    # Room for 2 * 1 + 2 - 8 tracked = none: the batch's finished runs go, the others are not looked at.
    assert plan.prune_batch(runs, batch, {"technique": 10_000}, last, min_keep=2) == ["d0", "d1", "d2", "d3",
                                                                                      "below"]
    # With room, the batch's finished runs in the listing's reach stay; one below every active run goes.
    assert plan.prune_batch(runs, batch, {"technique": 10_000}, last, min_keep=10) == ["below"]
    # A run that could still look new is never forgotten.
    assert plan.prune_batch(runs, batch, {"technique": 150}, last, min_keep=0) == ["below"]


def test_stall_clock_lag_and_the_unsaved_runs_due() -> None:
    assert plan.stall_clock_lag_ms(1_800_000) == plan.STALL_CLOCK_MAX_LAG_MS == 60_000
    assert plan.stall_clock_lag_ms(100_000) == 10_000
    assert plan.stall_clock_lag_ms(0) == 0
    unsaved = {"a": 1_000, "b": 5_000, "c": 9_000}
    assert plan.unsaved_due(unsaved, 10_000, 5_000) == ["a", "b"]
    assert plan.unsaved_due(unsaved, 10_000, 0) == ["a", "b", "c"]
