"""The live run table, rendered to a recording console and read as text."""

from __future__ import annotations

import io

from rich.console import Console

from watcher.liveview import LiveView, clean, format_duration
from watcher.model import Event, Run, Technique, event_id

NOW = 1_764_400_000_000
CCTV = Technique("tech_abcd1234", "CCTV Cam")


def text_of(view: LiveView, now_ms: int = NOW, width: int = 100) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(view.render(now_ms))
    return console.export_text()


def row(text: str, run_id: str) -> str:
    [line] = [line for line in text.splitlines() if run_id in line]
    return line


def failed_event(run_id: str = "run_f", **data) -> Event:
    body = {
        "run_id": run_id, "status": "failed", "technique": CCTV.to_dict(),
        "error_code": "GPU_PROVIDER_ERROR",
        "error_message": "The provider failed to complete the generation.",
        "started_at": NOW - 9_000, "completed_at": NOW - 1_000, "late": False,
    }
    body.update(data)
    return Event(event_id(run_id, "run.failed"), "run.failed", NOW, body)


def test_active_runs_show_status_progress_technique_and_elapsed():
    view = LiveView()
    view.update([
        Run("run_pending", "pending", created_at=NOW - 3_000, technique=CCTV),
        Run("run_busy", "running", progress=40, created_at=NOW - 100_000, started_at=NOW - 65_000,
            technique=CCTV),
        Run("run_done", "completed", progress=100, created_at=NOW - 50_000, started_at=NOW - 48_000,
            completed_at=NOW - 8_000, technique=CCTV),
    ], NOW)
    text = text_of(view)
    assert "2 active" in text
    busy = row(text, "run_busy")
    assert "running" in busy and "CCTV Cam" in busy and "40%" in busy and "1m 05s" in busy
    assert "3.0s" in row(text, "run_pending")
    assert "100%" in row(text, "run_done") and "40.0s" in row(text, "run_done")
    # Active runs come first, running before pending.
    lines = text.splitlines()
    order = [next(i for i, line in enumerate(lines) if r in line)
             for r in ("run_busy", "run_pending", "run_done")]
    assert order == sorted(order)


def test_elapsed_time_moves_with_now():
    view = LiveView()
    view.update([Run("run_a", "running", started_at=NOW - 5_000)], NOW)
    assert "5.0s" in row(text_of(view, NOW), "run_a")
    assert "2m 05s" in row(text_of(view, NOW + 120_000), "run_a")


def test_rows_are_capped_with_a_count_of_the_rest():
    view = LiveView(max_rows=3)
    view.update([Run(f"run_{i}", "running", created_at=NOW - i) for i in range(7)], NOW)
    text = text_of(view)
    assert sum("run_" in line for line in text.splitlines()) == 3
    assert "… and 4 more" in text


def test_events_show_outcome_error_and_only_the_latest():
    view = LiveView(max_events=2)
    view.add_event(failed_event("run_old"))
    view.add_event(Event(event_id("run_ok", "run.completed"), "run.completed", NOW,
                         {"run_id": "run_ok", "status": "completed", "technique": None, "late": True}))
    view.add_event(failed_event("run_new"))
    text = text_of(view, width=140)
    assert "run_old" not in text
    assert "✅" in row(text, "run_ok") and "(late)" in row(text, "run_ok")
    line = row(text, "run_new")
    assert line.startswith("❌")
    assert "GPU_PROVIDER_ERROR: The provider failed to complete the generation." in line
    assert "8.0s" in line
    assert "3 events" in text
    # Narrow terminals cut an event line short instead of wrapping it.
    narrow = row(text_of(view, width=60), "run_new")
    assert narrow.endswith("…") and len(narrow) <= 60


def test_api_text_cannot_inject_markup_or_escape_sequences():
    evil = Technique("tech_x", "[bold red]boom[/] \x1b[2J\x07")
    view = LiveView()
    view.update([Run("run_x", "running", technique=evil)], NOW)
    view.add_event(failed_event("run_y", error_message="line one\nline two \x1b]0;title\x07"))
    console = Console(record=True, width=120, file=io.StringIO(), force_terminal=True)
    console.print(view.render(NOW))
    text = console.export_text()
    assert "[bold red]boom[/]" in text
    assert "\x1b" not in text and "\x07" not in text
    assert "line one line two" in row(text, "run_y")


def test_empty_view_says_so():
    assert "no runs yet" in text_of(LiveView())


def test_live_context_draws_on_a_console():
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False)
    with LiveView(console=console) as view:
        view.update([Run("run_live", "running", progress=10)], NOW)
    assert "run_live" in out.getvalue()


def test_helpers():
    assert format_duration(None) == "—"
    assert format_duration(42_000) == "42.0s"
    assert format_duration(7_380_000) == "2h 03m"
    assert clean("a" * 100, 10) == "a" * 9 + "…"
