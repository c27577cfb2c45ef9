"""The live view and console logs tell each thing once (issue 14): no delivery.done above the table, no stray
status=None, each event once, one started marker."""

from __future__ import annotations

import io
import logging

import pytest
import structlog
from rich.console import Console

from tests.sinks.helpers import make_event
from watcher import logs
from watcher.liveview import EVENT_ICONS, LiveView, LiveViewObserver, event_line
from watcher.render import MARKERS


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config(), logs._handler)
    yield
    logs.hide_info_events(())
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    structlog.configure(**saved[2])
    logs._handler = saved[3]


def text_of(view: LiveView) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(view.render(0))
    return console.export_text()


def test_one_started_marker_everywhere() -> None:
    assert EVENT_ICONS["run.started"] == MARKERS["run.started"] == "▶"
    assert event_line(make_event("run.started")).plain.startswith("▶ ")


def test_with_a_stdout_sink_the_table_does_not_list_the_events_again() -> None:
    view = LiveView(list_events=False)
    view.add_event(make_event("run.failed"))
    assert "Recent events" not in text_of(view) and "1 event" in text_of(view)
    listing = LiveView()
    listing.add_event(make_event("run.failed"))
    assert "Recent events" in text_of(listing)


def test_deliveries_are_counted_in_the_title() -> None:
    observer = LiveViewObserver(LiveView())
    for outcome in ("delivered", "delivered", "retry"):
        observer.on_delivery("console", outcome)
    assert "deliveries: 2 delivered, 1 retry" in " ".join(text_of(observer.view).split())


def test_info_delivery_lines_are_hidden_while_the_view_is_drawn_and_warnings_are_not() -> None:
    buf = io.StringIO()
    logs.configure(fmt="json", stream=buf)
    log = logs.get_logger("watcher.dispatcher")
    view = LiveView(console=Console(file=io.StringIO(), force_terminal=True))
    view.start()
    try:
        log.info("delivery.done", sink="console")
        log.warning("delivery.dead_lettered", sink="console")
        log.info("sweep.finished")
    finally:
        view.stop()
    log.info("delivery.done", sink="after")
    events = [line.split('"event": "')[1].split('"')[0] for line in buf.getvalue().splitlines()]
    assert events == ["delivery.dead_lettered", "sweep.finished", "delivery.done"]


def test_console_lines_leave_out_none_fields_and_json_keeps_them() -> None:
    console = io.StringIO()
    logs.configure(fmt="console", stream=console)
    logs.get_logger("x").info("delivery.done", sink="journal", status=None, attempts=1)
    assert "status" not in console.getvalue() and "attempts=1" in console.getvalue()
    js = io.StringIO()
    logs.configure(fmt="json", stream=js)
    logs.get_logger("x").info("delivery.done", sink="journal", status=None)
    assert '"status": null' in js.getvalue()
