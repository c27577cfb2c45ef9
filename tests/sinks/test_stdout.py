"""Stdout sink: one readable line or one JSON line per event, flushed; a closed pipe is permanent."""

from __future__ import annotations

import io
import json

import pytest

from tests.sinks.helpers import make_event
from watcher.errors import DeliveryError, Reason
from watcher.sinks.registry import sink_config
from watcher.sinks.stdout import StdoutSink


class Flushed(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed_at: list[int] = []

    def flush(self) -> None:
        self.flushed_at.append(len(self.getvalue()))


async def test_text_format_prints_one_readable_line_per_event() -> None:
    stream = Flushed()
    sink = StdoutSink(sink_config(name="console", type="stdout", format="text"), stream=stream)
    await sink.send(make_event())
    await sink.send(make_event("run.completed"))
    out = stream.getvalue().splitlines()
    assert out == [
        "❌ run.failed · CCTV Cam · run_abc123 · GPU_PROVIDER_ERROR: The provider failed to complete the "
        "generation. · 9.0s · $0.05 · https://media.flora.ai/output.png",
        "✅ run.completed · CCTV Cam · run_abc123 · 9.0s · $0.05 · https://media.flora.ai/output.png",
    ]
    assert stream.flushed_at == [len(out[0]) + 1, len(stream.getvalue())]


async def test_json_format_prints_json_lines() -> None:
    stream = Flushed()
    sink = StdoutSink(sink_config(name="console", type="stdout", format="json"), stream=stream)
    event = make_event(error_message="line one\nline two")
    await sink.send(event)
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line) == event.to_dict()
    assert line == json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False)


async def test_writes_to_the_real_stdout_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    sink = StdoutSink(sink_config(name="console", type="stdout"))
    await sink.send(make_event("run.started"))
    assert capsys.readouterr().out.startswith("▶ run.started · CCTV Cam · run_abc123")


async def test_a_terminal_escape_in_api_text_is_not_printed() -> None:
    stream = Flushed()
    sink = StdoutSink(sink_config(name="console", type="stdout"), stream=stream)
    await sink.send(make_event(technique={"technique_id": "t", "name": "Cam\x1b]0;pwned\x07\u202e"}))
    assert "\x1b" not in stream.getvalue() and "\u202e" not in stream.getvalue()


async def test_a_broken_pipe_is_permanent() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    sink = StdoutSink(sink_config(name="console", type="stdout"), stream=Broken())
    with pytest.raises(DeliveryError) as err:
        await sink.send(make_event())
    assert (err.value.retryable, err.value.reason) == (False, Reason.IO_ERROR)
