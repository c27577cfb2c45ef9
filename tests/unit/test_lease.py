"""The pure parts of the sweeper election: the watch scope instances agree on, and how often they renew."""

from __future__ import annotations

from watcher.lease import scope_of, tick_seconds


def test_the_scope_is_the_api_origin_path_and_filters_in_a_stable_form() -> None:
    a = scope_of("https://APP.flora.ai/api/v1/", ("ws_b", "ws_a"), None, "tech_1")
    assert a == "https://app.flora.ai/api/v1|ws=ws_a,ws_b|prj=*|tech=tech_1"
    assert scope_of("https://app.flora.ai/api/v1", ["ws_a", "ws_b"], None, ("tech_1",)) == a
    assert scope_of("http://127.0.0.1:8080/api/v1") == "http://127.0.0.1:8080/api/v1|ws=*|prj=*|tech=*"
    assert scope_of("https://app.flora.ai/api/v1", None, "prj_1") != scope_of("https://app.flora.ai/api/v1")


def test_instances_watching_different_resources_elect_their_own_sweeper() -> None:
    both = scope_of("https://app.flora.ai/api/v1", resources=("technique-runs", "generations"))
    assert both == "https://app.flora.ai/api/v1|ws=*|prj=*|tech=*|res=generations,technique-runs"
    assert scope_of("https://app.flora.ai/api/v1", resources=["generations", "technique-runs"]) == both
    assert scope_of("https://app.flora.ai/api/v1", resources=("technique-runs",)) != both


def test_instances_renew_at_least_three_times_per_lease_and_once_per_interval() -> None:
    assert tick_seconds(10, 5) == 10 / 3
    assert tick_seconds(10, 0.2) == 0.2
    assert tick_seconds(0.01, 0.01) == 0.05
