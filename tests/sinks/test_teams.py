"""Teams sink: a Workflows message carrying an Adaptive Card (not a MessageCard), ≤ 28 KB, inert text."""

from __future__ import annotations

import json

from tests.fakes import FakeClock
from tests.sinks.helpers import HOSTILE_TECHNIQUE, Receiver, hostile_event, make_event
from watcher.secret import Secret
from watcher.sinks.registry import sink_config
from watcher.sinks.teams import TEAMS_PAYLOAD_MAX_BYTES, TeamsSink


def teams(receiver: Receiver, **kw) -> TeamsSink:
    cfg = sink_config(name="ms", type="teams", url=Secret(receiver.url("/workflows/x?sig=abc")), **kw)
    return TeamsSink(cfg, clock=FakeClock())


def walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


async def test_posts_an_adaptive_card_in_a_workflows_message(receiver: Receiver) -> None:
    receiver.default.status = 202
    sink = teams(receiver)
    result = await sink.send(make_event())
    await sink.close()
    assert result.status == 202
    payload = json.loads(receiver.requests[0].body)
    assert payload["type"] == "message"
    (attachment,) = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and tuple(map(int, card["version"].split("."))) >= (1, 4)
    assert "MessageCard" not in json.dumps(payload)
    kinds = {n.get("type") for n in walk(card["body"]) if isinstance(n, dict)}
    assert {"TextBlock", "FactSet", "RichTextBlock", "TextRun"} <= kinds
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "output_1 (imageUrl)",
                                "url": "https://media.flora.ai/output.png"}]
    texts = " ".join(n["text"] for n in walk(card) if isinstance(n, dict) and "text" in n)
    for expected in ("❌ Run failed", "CCTV Cam", "run_abc123", "GPU_PROVIDER_ERROR",
                     "The provider failed to complete the generation.", "9.0s", "$0.05"):
        assert expected in texts or expected in json.dumps(card, ensure_ascii=False)


async def test_api_text_only_in_text_runs_and_payload_within_28kb(receiver: Receiver) -> None:
    event = hostile_event()
    event.data["error_message"] = "\U0001d518" * 10_000  # 4 bytes each in UTF-8: forces the size budget
    event.data["outputs"] = [{"output_id": f"o{i}", "type": "text", "url": "t" * 5_000} for i in range(8)]
    sink = teams(receiver)
    await sink.send(event)
    await sink.close()
    raw = receiver.requests[0].body
    assert len(raw) <= TEAMS_PAYLOAD_MAX_BYTES
    card = json.loads(raw)["attachments"][0]["content"]
    for node in walk(card):
        if isinstance(node, dict) and node.get("type") in ("TextBlock",):
            assert HOSTILE_TECHNIQUE not in node["text"]  # markdown-rendering blocks hold only our words
        if isinstance(node, dict) and node.get("type") == "FactSet":
            assert all(HOSTILE_TECHNIQUE not in f["value"] for f in node["facts"])
    runs = [n["text"] for n in walk(card) if isinstance(n, dict) and n.get("type") == "TextRun"]
    assert HOSTILE_TECHNIQUE in runs  # shown literally, where markdown and mentions are not parsed
    assert any(r.endswith("…(truncated)") for r in runs)


async def test_only_http_links_become_actions(receiver: Receiver) -> None:
    event = make_event("run.completed", outputs=[
        {"output_id": f"img{i}", "type": "imageUrl", "url": f"https://media.flora.ai/{i}.png"} for i in range(7)
    ] + [{"output_id": "js", "type": "imageUrl", "url": "javascript:alert(1)"}])
    sink = teams(receiver)
    await sink.send(event)
    await sink.close()
    card = json.loads(receiver.requests[0].body)["attachments"][0]["content"]
    urls = [a["url"] for a in card["actions"]]
    assert len(urls) == 5 and all(u.startswith("https://") for u in urls)
    assert "+2 more outputs" in json.dumps(card)
