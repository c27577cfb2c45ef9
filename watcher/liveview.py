"""A live terminal view for ``run`` and ``demo`` on a TTY (rich): runs with progress bars, and recent events.

Shell module, but ``render(now_ms)`` is a plain function of what was handed in, so tests render it to a
recording ``Console`` and read the text. The daemon uses the view only when stdout is a terminal; otherwise
it logs plain lines.

Text that came from the API (technique names, error messages, ids) is shown as literal text — never parsed as
rich markup — and stripped of control characters, so a run cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

import collections
import datetime
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from watcher import logs
from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.model import EventType, Run, RunStatus, TrackedRun
from watcher.observer import Observer, Report, State
from watcher.render import MARKERS, format_duration

STATUS_STYLES: dict[str, str] = {
    RunStatus.PENDING: "yellow",
    RunStatus.RUNNING: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "bold red",
}
EVENT_ICONS = MARKERS  # one marker per event type, the same as the sinks' messages (▶ started, one form)
# Active runs first (running before pending), then the rest.
_STATUS_ORDER: dict[str, int] = {RunStatus.RUNNING: 0, RunStatus.PENDING: 1}
MAX_REFRESH_PER_SECOND = 4.0
HIDDEN_WHILE_LIVE = frozenset({"delivery.done"})  # info lines the table stands for (its deliveries count)
LIVE_KEEP_ENDED_MS = 60_000  # a finished run stays on screen this long


def clean(text: object, limit: int = 80) -> str:
    """API text made safe for one terminal line: control characters removed, at most ``limit`` chars."""
    s = "".join(" " if ch in "\t\n\r" else ch for ch in str(text) if ch in "\t\n\r"
                or unicodedata.category(ch) not in ("Cc", "Cf"))
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def run_elapsed_ms(run: Run, now_ms: int) -> int | None:
    """Time since the run started (or was created), up to its completion if it has ended."""
    start = run.started_at if run.started_at is not None else run.created_at
    if start is None:
        return None
    end = run.completed_at if run.terminal and run.completed_at is not None else now_ms
    return max(0, end - start)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _run_sort_key(run: Run) -> tuple[int, int]:
    order = _STATUS_ORDER.get(run.status, 2)
    when = run.completed_at if order == 2 and run.completed_at is not None else (run.created_at or 0)
    return order, -when


def _technique_label(technique: Any) -> str:
    if isinstance(technique, dict):
        return clean(technique.get("name") or technique.get("technique_id") or technique.get("model_id") or "—", 30)
    if technique is not None:
        return clean(technique.name or technique.technique_id or "—", 30)
    return "—"


def _model_label(run: Run) -> str:
    """A generation's model id where a technique run shows its technique."""
    return clean(run.model_id, 30) if run.model_id else "—"


def _progress_cell(run: Run) -> RenderableType:
    if run.status == RunStatus.COMPLETED:
        pct: float | None = 100.0
    elif run.progress is not None:
        pct = min(100.0, max(0.0, float(run.progress)))
    else:
        pct = None
    bar = ProgressBar(total=100, completed=pct or 0, width=20, pulse=pct is None and run.active)
    label = Text(" —  " if pct is None else f"{pct:3.0f}%", style="dim" if pct is None else "")
    grid = Table.grid(padding=(0, 1))
    grid.add_row(bar, label)
    return grid


def event_line(event: Any) -> Text:
    """One ✅/❌ line for an event (``model.Event`` or its dict form)."""
    d = event.to_dict() if hasattr(event, "to_dict") else event
    data = d.get("data") or {}
    icon = EVENT_ICONS.get(d.get("type"), "•")
    when = datetime.datetime.fromtimestamp(d.get("created_at", 0) / 1000).strftime("%H:%M:%S")
    line = Text(no_wrap=True, overflow="ellipsis")  # one line per event keeps the view's height steady
    line.append(f"{icon} ")
    line.append(when, style="dim")
    line.append(" ")
    line.append(clean(d.get("type", "?"), 20), style=STATUS_STYLES.get(str(data.get("status")), ""))
    line.append(" ")
    line.append(clean(data.get("run_id", "?"), 40), style="bold")
    line.append(f" {_technique_label(data.get('technique') or data.get('model'))}")  # a generation: its model
    started = data.get("started_at") or data.get("created_at")
    if data.get("completed_at") is not None and started is not None:
        line.append(f" {format_duration(data['completed_at'] - started)}", style="dim")
    if d.get("type") == EventType.FAILED:
        code = clean(data.get("error_code") or "no error code", 40)
        line.append(f" {code}", style="red")
        if data.get("error_message"):
            line.append(f": {clean(data['error_message'], 80)}")
    if data.get("late"):
        line.append(" (late)", style="yellow")
    return line


class LiveView:
    """The live table. ``update()`` with the current runs, ``add_event()`` per event; use it as a context
    manager (or ``start()``/``stop()``) to draw it at most ``refresh_per_second`` times a second."""

    def __init__(
        self,
        console: Console | None = None,
        max_rows: int = 20,
        *,
        max_events: int = 8,
        refresh_per_second: float = MAX_REFRESH_PER_SECOND,
        clock: Clock = SYSTEM_CLOCK,
        list_events: bool = True,
    ) -> None:
        self.console = console or Console()
        # False when a stdout sink already prints each event above the table: listing it again would show it twice
        self.list_events = list_events
        self._deliveries: collections.Counter[str] = collections.Counter()
        self.max_rows = max_rows
        self._runs: tuple[Run, ...] = ()
        self._events: collections.deque[Text] = collections.deque(maxlen=max_events)
        self._event_count = 0
        self._now_ms = 0
        self._updated_mono = clock.monotonic()
        self._clock = clock
        self._refresh = min(refresh_per_second, MAX_REFRESH_PER_SECOND)
        self._live: Live | None = None

    # ------------------------------------------------------------------------------------------- input

    def update(self, runs: Sequence[Run], now_ms: int) -> None:
        """The runs to show (active ones and recently ended ones) as of ``now_ms``."""
        self._runs = tuple(runs)
        self._now_ms = now_ms
        self._updated_mono = self._clock.monotonic()

    def add_event(self, event: Any) -> None:
        """Add a transition event (``model.Event`` or its dict) to the list under the table."""
        self._events.append(event_line(event))
        self._event_count += 1

    def add_delivery(self, outcome: str) -> None:
        """Count one delivery attempt's outcome (delivered | retry | dead | disabled) for the title line; the
        info-level delivery log lines are not printed while the view is drawn."""
        self._deliveries[outcome] += 1

    # ------------------------------------------------------------------------------------------ output

    def render(self, now_ms: int) -> RenderableType:
        """Everything the view shows at ``now_ms``, as one rich renderable."""
        runs = sorted(self._runs, key=_run_sort_key)
        active = sum(1 for r in runs if r.active)
        title = f"flora-watcher — {active} active, {_plural(self._event_count, 'event')}"
        if self._deliveries:
            title += "; deliveries: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(self._deliveries.items()))
        table = Table(
            title=Text(title, style="bold"),
            title_justify="left",
            expand=False,
            header_style="bold dim",
        )
        table.add_column("Run", no_wrap=True)
        table.add_column("Technique", no_wrap=True, max_width=30)
        table.add_column("Status", no_wrap=True)
        table.add_column("Progress", no_wrap=True)
        table.add_column("Elapsed", justify="right", no_wrap=True)
        for run in runs[: self.max_rows]:
            table.add_row(
                Text(clean(run.run_id, 40)),
                Text(_technique_label(run.technique) if run.technique else _model_label(run)),
                Text(clean(run.status, 20), style=STATUS_STYLES.get(run.status, "magenta")),
                _progress_cell(run),
                Text(format_duration(run_elapsed_ms(run, now_ms))),
            )
        parts: list[RenderableType] = [table]
        hidden = len(runs) - self.max_rows
        if hidden > 0:
            parts.append(Text(f"… and {hidden} more", style="dim"))
        if not runs:
            parts.append(Text("no runs yet", style="dim"))
        if self._events and self.list_events:
            parts.append(Text("Recent events", style="bold"))
            parts.extend(self._events)
        return Group(*parts)

    def _render_now(self) -> RenderableType:
        drift_ms = int((self._clock.monotonic() - self._updated_mono) * 1000)
        return self.render(self._now_ms + max(0, drift_ms))

    # --------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._live is None:
            self._live = Live(
                get_renderable=self._render_now,
                console=self.console,
                refresh_per_second=self._refresh,
                transient=False,
            )
            self._live.start(refresh=True)  # the first frame at once, not a refresh period later
            logs.hide_info_events(HIDDEN_WHILE_LIVE)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            logs.hide_info_events(())

    def __enter__(self) -> LiveView:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def live_runs(tracked: Iterable[TrackedRun], now_ms: int, *, keep_ms: int = LIVE_KEEP_ENDED_MS) -> list[Run]:
    """Pure: the runs the live view shows — every active run, and runs that ended at most ``keep_ms`` ago."""
    shown = []
    for t in tracked:
        if not t.terminal:
            shown.append(t.run)
        elif t.run.completed_at is not None and now_ms - t.run.completed_at <= keep_ms:
            shown.append(t.run)
    return shown


class LiveViewObserver(Observer):
    """The daemon's observer that draws the live table on the terminal (``run``/``demo`` on a TTY).

    Drawn from READY (the first one) until STOPPED (after the delivery drain, so the last events are on screen;
    then the terminal is given back). While it runs, rich redirects sys.stdout and sys.stderr through its
    console, so stdout-sink lines and log lines are printed above the table instead of through it."""

    def __init__(self, view: LiveView | None = None, *, clock: Clock = SYSTEM_CLOCK, list_events: bool = True) -> None:
        self.view = view or LiveView(clock=clock, list_events=list_events)
        self.started = False

    def _show(self, report: Report) -> None:
        self.view.update(live_runs(report.runs.values(), report.now_ms), report.now_ms)

    def on_state(self, state: State, report: Report) -> None:
        if state is State.READY and not self.started:
            self._show(report)
            self.view.start()
            self.started = True
        elif state is State.STOPPED:
            self.view.stop()

    def on_sweep(self, report: Report) -> None:
        for event in report.new_events:
            self.view.add_event(event)
        self._show(report)

    def on_delivery(self, sink: str, outcome: str) -> None:
        self.view.add_delivery(outcome)
