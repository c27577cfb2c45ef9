"""The exact bytes each chat sink sends, single and grouped, held against a golden file.

The golden file (``golden/chat_payloads.json``) was written from main before the chat payloads moved from
``render.py`` into their sink modules (issue 21); a change to it is a change users see in their channels, so it
is made on purpose: ``FLORA_UPDATE_GOLDEN=1 python -m pytest tests/sinks/test_chat_golden.py -n 0`` rewrites it,
and the diff shows every message that changed. Pure: the sinks render; nothing is sent.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.sinks.helpers import HOSTILE_MESSAGE, HOSTILE_TECHNIQUE, hostile_event, make_event
from watcher.config import SinkConfig
from watcher.model import Event, Model, Run, Technique
from watcher.secret import Secret
from watcher.sinks.discord import DiscordSink
from watcher.sinks.google_chat import GoogleChatSink
from watcher.sinks.http import ChatSink
from watcher.sinks.registry import sink_config
from watcher.sinks.slack import SlackSink
from watcher.sinks.teams import TeamsSink
from watcher.transitions import build_event

GOLDEN = Path(__file__).parent / "golden" / "chat_payloads.json"
URL = "https://media.flora.ai/out.png?sig=a&b=c"
HOOK = "https://chat.example/hook?key=k"
TEMPLATE = "{marker} {title} {technique} ({run_id}): {error_code} {error_message} {output_url} {duration} {cost}"
HOSTILE_CODES = ("GPU_*ERR*", "<!channel> :boom: @everyone", "<b>bold</b> **x** _y_ ~z~ `c` [l](https://e.x)",
                 "@here <@123> <users/all> # h\n- i")


def link(i: int = 0) -> dict[str, Any]:
    return {"output_id": f"o{i}", "type": "imageUrl", "url": f"{URL}&n={i}"}


def singles() -> Iterator[tuple[str, Event]]:
    yield "completed", make_event("run.completed")
    yield "failed", make_event("run.failed")
    yield "started", make_event("run.started", status="running", previous_status="pending", completed_at=None,
                                charged_cost=None, outputs=[])
    yield "stalled", build_event(
        "run.stalled", Run(run_id="run_s", status="running", progress=40.0, technique=Technique("tech_1", "CCTV Cam"),
                           created_at=1_000, started_at=2_000),
        "running", now_ms=10_000_000, late=False, stalled_for=1_860_000)
    yield "generation", build_event(
        "run.failed", Run(run_id="run_g", status="failed", run_type="generation", model=Model("flux-1.1-pro"),
                          error_code="X", started_at=1_000, completed_at=9_000),
        "running", now_ms=10_000, late=False)
    yield "bare_late", make_event("run.failed", error_code=None, error_message=None, technique=None, late=True,
                                  started_at=None, charged_cost=None, outputs=[])
    yield "hostile", hostile_event()
    yield "hostile_completed", hostile_event("run.completed")
    yield "outputs", make_event("run.completed", outputs=[
        *(link(i) for i in range(12)),
        {"output_id": "t", "type": "text", "url": "a caption :tada: with <!here> and *stars*"},
        {"output_id": HOSTILE_TECHNIQUE[:40], "type": "text", "url": HOSTILE_MESSAGE[:500]},
        {"output_id": "bad", "type": "imageUrl", "url": "javascript:alert(1)"},
    ])
    yield "long", make_event("run.failed", technique={"technique_id": "t", "name": "Tëchnïque 😀 " * 400},
                             error_message=("line one\nline two\r\n\t" + "😀é<>&*_" * 3000),
                             error_code="E" * 300, project_id="prj_" + "p" * 300,
                             outputs=[{"output_id": "x" * 300, "type": "text", "url": "y" * 3000}] * 3)
    yield "controls", make_event("run.failed", technique={"technique_id": "t", "name": "a\x1b[31mb\u202ec\u2066d"},
                                 error_message="x\x00y\u2028z\x85w", error_code="C\u202eODE")
    for i, code in enumerate(HOSTILE_CODES):
        yield f"hostile_code_{i}", make_event("run.failed", error_code=code, error_message=code,
                                              technique={"technique_id": "t", "name": code})


def groups() -> Iterator[tuple[str, list[Event]]]:
    def failures(n: int, code: str | None = "INSUFFICIENT_CREDITS", **kw: Any) -> list[Event]:
        return [make_event("run.failed", run_id=f"run_{i:04d}", error_code=code, outputs=[link(i)], **kw)
                for i in range(n)]

    yield "two", failures(2)
    yield "sixty", failures(60)
    yield "no_code", failures(3, code=None)
    yield "huge", [hostile_event() for _ in range(3)] + failures(400)
    yield "long_techniques", failures(150, technique={"technique_id": "t", "name": "T" * 80})
    hostile_codes = failures(3, code="<!channel> :boom: @everyone")
    yield "mixed_types", [*hostile_codes, make_event("run.completed", run_id="run_ok")]
    yield "completed", [make_event("run.completed", run_id=f"run_c{i}", outputs=[], started_at=None,
                                   created_at=None) for i in range(5)]
    yield "other_projects", [make_event("run.failed", run_id=f"run_p{i}", project_id=f"prj_{i}") for i in range(3)]
    for i, code in enumerate(HOSTILE_CODES):
        yield f"hostile_code_{i}", failures(4, code=code, technique={"technique_id": "t", "name": code},
                                            error_message=code)


def sinks() -> Iterator[tuple[str, ChatSink]]:
    def cfg(sink_type: str, **kw: Any) -> SinkConfig:
        return sink_config(name=f"golden-{sink_type}", type=sink_type, url=Secret(HOOK), **kw)

    yield "slack", SlackSink(cfg("slack"))
    yield "slack_template", SlackSink(cfg("slack", template=TEMPLATE))
    yield "discord", DiscordSink(cfg("discord"))
    yield "discord_template", DiscordSink(cfg("discord", template=TEMPLATE))
    yield "teams", TeamsSink(cfg("teams"))
    yield "teams_template", TeamsSink(cfg("teams", template=TEMPLATE))
    for mode in ("run", "project", "none"):
        yield f"google_chat_{mode}", GoogleChatSink(cfg("google_chat", thread=mode))
    yield "google_chat_template", GoogleChatSink(cfg("google_chat", template=TEMPLATE))


FULL_MAX = 2_000  # bodies up to this many characters are kept whole; longer ones as head, length and digest


def wire(payload: dict[str, Any]) -> str | dict[str, Any]:
    """The body as ``ChatSink`` sends it; a long one as its first ``FULL_MAX`` characters, its length and the
    SHA-256 of its UTF-8 bytes (the golden file stays small, and a change still shows where it starts)."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    if len(body) <= FULL_MAX:
        return body
    return {"head": body[:FULL_MAX], "length": len(body),
            "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest()}


def rendered() -> dict[str, dict[str, Any]]:
    """Every (sink, event or group) → the target URL and the body, as sent."""
    out: dict[str, dict[str, Any]] = {}
    for sink_name, sink in sinks():
        threads_only = sink_name in ("google_chat_project", "google_chat_none")  # only the thread differs
        for name, event in singles():
            if threads_only and name not in ("failed", "generation"):
                continue
            out[f"{sink_name}/single/{name}"] = {"target": sink.target(event), "body": wire(sink.payload(event))}
        if sink_name.endswith("_template"):
            continue  # a group message has no template
        for name, events in groups():
            if threads_only and name not in ("two", "other_projects"):
                continue
            out[f"{sink_name}/group/{name}"] = {"target": sink.group_target(events),
                                                "body": wire(sink.group_payload(events))}
    return out


def test_chat_payloads_match_the_golden_file() -> None:
    got = rendered()
    if os.environ.get("FLORA_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert sorted(got) == sorted(want), "cases added or removed: rewrite the golden file on purpose"
    changed = [key for key in sorted(want) if got[key] != want[key]]
    assert not changed, f"{len(changed)} messages changed, first {changed[0]}:\n got {got[changed[0]]}\nwant " \
                        f"{want[changed[0]]}"
