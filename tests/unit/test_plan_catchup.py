"""The pure parts of the catch-up (plan.py): the parts a window reads, what a batch commit stores of them, and
the progress `status` and the log report."""

from __future__ import annotations

import pytest

from watcher import plan
from watcher.plan import NEW_RUN_MARGIN_MS, Filters, Segment


def test_without_an_unfinished_window_one_part_reads_down_to_the_floor() -> None:
    assert plan.window_parts([], 1_000) == [Segment(floor=1_000)]
    assert plan.window_parts([], None) == [Segment(floor=None)]


def test_an_unfinished_window_is_finished_after_the_runs_created_since() -> None:
    stored = [Segment(floor=500, top=9_000_000, cursor="c2", read=2_000, expected=5_000)]
    parts = plan.window_parts(stored, 500)
    # first the runs created since the unfinished window's newest run (less the margin), then the rest of it
    assert parts == [Segment(floor=9_000_000 - NEW_RUN_MARGIN_MS), stored[0]]
    parts[1].read += 100
    assert stored[0].read == 2_000  # the parts are copies: what was committed stays as committed


def test_a_stored_part_without_a_newest_run_keeps_the_given_floor() -> None:
    stored = [Segment(floor=500, cursor="c1")]
    assert plan.window_parts(stored, 500)[0] == Segment(floor=500)


def test_a_commit_stores_the_parts_begun_and_not_finished() -> None:
    head, begun, resumed = Segment(floor=1), Segment(floor=2, top=10), Segment(floor=3, cursor="x")
    assert plan.left_to_read([head, begun, resumed]) == [begun, resumed]
    assert plan.left_to_read([head]) == []


def test_stored_parts_round_trip_and_nothing_stores_as_empty() -> None:
    parts = [Segment(floor=1, top=2, cursor="eyJvZmZzZXQiOjIwfQ", read=300, expected=None),
             Segment(floor=None, top=None, cursor=None)]
    assert plan.parse_catchup(plan.dump_catchup(parts)) == parts
    assert plan.dump_catchup([]) == "" and plan.parse_catchup("") == [] and plan.parse_catchup(None) == []


@pytest.mark.parametrize("raw", ['{"floor": 1}', '[{"floor": "x"}]', '[{"cursor": 5}]', "[1]", '[{"read": true}]',
                                 "not json"])
def test_an_unreadable_catchup_state_is_refused(raw: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        plan.parse_catchup(raw)


def test_expected_runs_come_from_the_growth_of_total_estimate() -> None:
    assert plan.expected_new(60_500, 500) == 60_000
    assert plan.expected_new(400, 500) == 0  # runs deleted meanwhile: never negative
    assert plan.expected_new(None, 500) is None and plan.expected_new(60_500, None) is None


def test_progress_sums_the_parts_and_knows_the_remaining_only_where_told() -> None:
    assert plan.segments_progress([Segment(floor=1, read=200, expected=500), Segment(floor=1, read=50)]) == (250, 300)
    assert plan.segments_progress([Segment(floor=1, read=50)]) == (50, None)
    assert plan.segments_progress([Segment(floor=1, read=700, expected=500)]) == (700, 0)


def test_catchup_progress_reads_the_meta_and_ignores_what_it_cannot_read() -> None:
    assert plan.catchup_progress({}) is None
    assert plan.catchup_progress({"catchup:*|*|*": ""}) is None
    assert plan.catchup_progress({"catchup:a": '[{"floor": 1, "top": 9, "cursor": "x", "read": 200, "expected": 500}]',
                                  "catchup:b": '[{"floor": 1, "top": 9, "cursor": "x", "read": 50}]',
                                  "catchup:c": "not json",
                                  "high_watermark_ms:*|*|*": "5"}) == {"runs_read": 250, "estimated_remaining": 300}


def test_each_listing_has_its_own_catchup_key() -> None:
    tech, gen = Filters(), Filters(resource="generations")
    assert plan.catchup_key(tech) == "catchup:*|*|*"
    assert plan.catchup_key(gen) == "catchup:generations:*|*|*" != plan.catchup_key(tech)
    assert plan.total_key(tech) == "listing_total:*|*|*"
