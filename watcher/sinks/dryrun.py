"""``run --dry-run``'s only sink: prints every event as one text line on stdout and sends nothing.

Not a configurable sink type (no ``[[sinks]]`` entry can name it): the daemon puts it in place of every
configured sink when ``--dry-run`` is given, routed to the events ``[watch].events`` enables.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from watcher.model import Event
from watcher.render import text_line
from watcher.sinks import stdout
from watcher.sinks.spec import SendResult, SinkConfig

NAME = "dry-run"


def dry_run_config(events: Iterable[str]) -> SinkConfig[stdout.StdoutOptions]:
    """The routing entry of the dry-run sink: every enabled event type, no filters."""
    return stdout.SINK.configure(NAME, events=tuple(events))


class DryRunSink:
    """``--dry-run``: renders every event to ``stream`` (stdout) and sends nothing."""

    def __init__(self, stream: TextIO | None = None, *, events: Iterable[str] = ()) -> None:
        self.name = NAME
        self.config = dry_run_config(events)
        self.stream = stream

    async def start(self) -> None:
        return None

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        print(f"[dry-run] {text_line(event)}", file=self.stream or sys.stdout, flush=True)
        return SendResult(status=None, detail="printed")

    async def close(self) -> None:
        return None
