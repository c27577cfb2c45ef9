"""The status page's data (watcher/web/status.py): pure, no loop."""

from __future__ import annotations

from watcher.model import Event, Model, Run, Technique
from watcher.store_api import SinkState
from watcher.web import status

NOW = 1_764_400_000_000


def test_outputs_keep_only_http_urls_and_texts() -> None:
    shown = status.outputs([
        {"output_id": "a", "type": "imageUrl", "url": "https://cdn.example/a.png"},
        {"output_id": "b", "type": "videoUrl", "url": "https://cdn.example/b.mp4"},
        {"output_id": "c", "type": "imageUrl", "url": "javascript:alert(1)"},
        {"output_id": "d", "type": "imageUrl", "url": "data:image/png;base64,AAAA"},
        {"output_id": "e", "type": "text", "url": "<b>hello</b>"},
        {"output_id": "f", "type": "model3d", "url": "https://cdn.example/f.glb"},
        "junk",
    ])
    assert shown == [
        {"kind": "image", "label": "a", "url": "https://cdn.example/a.png"},
        {"kind": "video", "label": "b", "url": "https://cdn.example/b.mp4"},
        {"kind": "text", "label": "e", "text": "<b>hello</b>"},
        {"kind": "link", "label": "f", "url": "https://cdn.example/f.glb"},
    ]


def test_active_runs_oldest_first_with_progress_clamped() -> None:
    runs = [
        Run("run_new", "running", progress=250, created_at=NOW - 1_000, technique=Technique("t", "CCTV Cam")),
        Run("run_old", "pending", created_at=NOW - 60_000),
        Run("run_done", "completed", created_at=NOW - 90_000),
    ]
    shown = status.active_runs(runs, NOW)
    assert [r["run_id"] for r in shown] == ["run_old", "run_new"]
    assert shown[1]["progress"] == 100.0 and shown[1]["technique"] == "CCTV Cam" and shown[1]["age_ms"] == 1_000
    assert shown[0]["progress"] is None and shown[0]["technique"] is None


def test_recent_event_keeps_untrusted_text_as_text_and_cuts_it() -> None:
    hostile = "<img src=x onerror=alert(1)>"
    event = Event("evt_1", "run.failed", NOW, {
        "run_id": "run_1", "technique": {"name": hostile}, "error_code": "X", "error_message": hostile * 100,
        "late": True, "outputs": None, "model": None,
    })
    shown = status.recent_event(event)
    assert shown["technique"] == hostile
    assert shown["error_message"].startswith(hostile) and len(shown["error_message"]) == status.TEXT_MAX
    assert shown["late"] is True and shown["outputs"] == []


def test_generation_runs_show_their_model() -> None:
    run = Run("run_g", "running", run_type="generation", model=Model("flux-pro"), created_at=NOW)
    assert status.active_runs([run], NOW)[0]["model"] == "flux-pro"
    event = Event("evt_2", "run.completed", NOW, {"run_id": "run_2", "technique": None,
                                                  "model": {"model_id": "flux-pro"}})
    assert status.recent_event(event)["model"] == "flux-pro"


def test_sinks_show_health_counts_and_no_url_or_secret() -> None:
    states = {
        "ops": SinkState("ops", last_failure_ms=NOW, consecutive_failures=3,
                         last_error="POST https://hooks.example/T0/B1/sekrit failed: 500 token=sekrit"),
        "gone": SinkState("gone", disabled_reason="410 Gone from https://hooks.example/x"),
    }
    shown = status.sinks({"ops": "slack", "journal": "file"}, {"ops": {"pending": 4, "dead": 1}, "gone": {}},
                         states, lambda text: text.replace("sekrit", "<secret>"))
    by_name = {s["name"]: s for s in shown}
    assert list(by_name) == ["gone", "journal", "ops"]
    assert by_name["ops"]["health"] == "failing" and by_name["ops"]["pending"] == 4 and by_name["ops"]["dead"] == 1
    assert by_name["ops"]["last_error"] == "POST <url> failed: 500 token=<secret>"
    assert by_name["gone"]["health"] == "disabled" and by_name["gone"]["configured"] is False
    assert by_name["gone"]["disabled_reason"] == "410 Gone from <url>"
    assert by_name["journal"]["health"] == "idle"
    assert "hooks.example" not in repr(shown) and "sekrit" not in repr(shown)


def test_failure_groups_most_frequent_first() -> None:
    assert status.failure_groups({"B": 1, None: 2, "A": 1, "Z": 0}) == [
        {"error_code": None, "count": 2}, {"error_code": "A", "count": 1}, {"error_code": "B", "count": 1},
    ]


def test_a_stalled_run_says_for_how_long() -> None:
    event = Event("evt_3", "run.stalled", NOW, {"run_id": "run_3", "status": "running", "stalled_for": 1_800_000})
    assert status.recent_event(event)["stalled_for"] == 1_800_000


def test_the_document_lists_at_most_the_oldest_active_runs_and_counts_them_all() -> None:
    runs = [Run(f"run_{i:04d}", "running", created_at=NOW - i) for i in range(status.ACTIVE_MAX + 5)]
    doc = status.build(now_ms=NOW, version="x", runs=runs, events=[], failures={}, sinks_=[])
    assert doc["active_total"] == status.ACTIVE_MAX + 5
    assert len(doc["active_runs"]) == status.ACTIVE_MAX
    assert doc["active_runs"][0]["run_id"] == f"run_{status.ACTIVE_MAX + 4:04d}"  # the oldest first
