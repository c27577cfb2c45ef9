"""Standard output: ``format = "text"`` → one readable line per event (``render.text_line``);
``"json"`` → JSON Lines (the event's compact JSON). Each line is flushed. A closed pipe is permanent.

Keys: ``format`` (text | json; default text)."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TextIO

from watcher.errors import ConfigError, DeliveryError, Reason
from watcher.model import Event
from watcher.render import event_body, text_line
from watcher.sinks.spec import SendResult, SinkConfig, SinkType, Table

FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class StdoutOptions:
    format: str = "text"  # "text" | "json"


def parse(t: Table) -> StdoutOptions:
    return StdoutOptions(format=t.choice("format", FORMATS, "text"))


class StdoutSink:
    def __init__(self, cfg: SinkConfig[StdoutOptions], *, stream: TextIO | None = None) -> None:
        if cfg.options.format not in FORMATS:
            raise ConfigError(cfg.key("format"), f"must be one of {', '.join(FORMATS)}")
        self.name = cfg.name
        self.config = cfg
        self._stream = stream  # None: sys.stdout at write time
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<StdoutSink {self.name!r} {self.config.options.format}>"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def render(self, event: Event, body: bytes | None = None) -> str:
        if self.config.options.format == "json":
            return (body if body is not None and b"\n" not in body else event_body(event)).decode("utf-8")
        return text_line(event)

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


SINK = SinkType(name="stdout", keys=("format",), options=StdoutOptions, parse=parse,
                build=lambda cfg, ctx: StdoutSink(cfg), describe=lambda cfg: [cfg.options.format])
