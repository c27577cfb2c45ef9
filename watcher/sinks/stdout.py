"""Standard output: ``format = "text"`` → one readable line per event (``render.text_line``);
``"json"`` → JSON Lines (the event's compact JSON). Each line is flushed. A closed pipe is permanent."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from watcher.config import SinkConfig
from watcher.errors import ConfigError, DeliveryError, Reason
from watcher.model import Event
from watcher.render import check_template, event_body, text_line
from watcher.sinks.base import SendResult

FORMATS = ("text", "json")


class StdoutSink:
    def __init__(self, cfg: SinkConfig, *, stream: TextIO | None = None) -> None:
        if cfg.format not in FORMATS:
            raise ConfigError(f"sinks.{cfg.name}.format", f"must be one of {', '.join(FORMATS)}")
        if cfg.template is not None:
            try:
                check_template(cfg.template)
            except ValueError as exc:
                raise ConfigError(f"sinks.{cfg.name}.template", str(exc)) from None
        self.name = cfg.name
        self.config = cfg
        self._stream = stream  # None: sys.stdout at write time
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<StdoutSink {self.name!r} {self.config.format}>"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def render(self, event: Event, body: bytes | None = None) -> str:
        if self.config.format == "json":
            return (body if body is not None and b"\n" not in body else event_body(event)).decode("utf-8")
        return text_line(event, template=self.config.template)

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        line = self.render(event, body) + "\n"
        failure: DeliveryError | None = None
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, line)
            except BrokenPipeError:
                failure = DeliveryError("standard output is closed (broken pipe)", retryable=False,
                                        reason=Reason.IO_ERROR)
            except ValueError:  # write to a closed file object
                failure = DeliveryError("standard output is closed", retryable=False, reason=Reason.IO_ERROR)
            except OSError as exc:
                reason = (exc.strerror or type(exc).__name__).lower()
                failure = DeliveryError(f"cannot write to standard output: {reason}", retryable=True,
                                        reason=Reason.IO_ERROR)
        if failure is not None:
            raise failure
        return SendResult(detail="printed")

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            stream.write(text)
        except UnicodeEncodeError:
            encoding = getattr(stream, "encoding", None) or "utf-8"
            stream.write(text.encode(encoding, "replace").decode(encoding))
        stream.flush()
