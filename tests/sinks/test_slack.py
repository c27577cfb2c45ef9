"""Slack sink: Block Kit payload within Slack's limits, inert API text, ~1 message/s pacing."""

from __future__ import annotations

import json

import pytest

from tests.fakes import FakeClock
from tests.sinks.helpers import HOSTILE_TECHNIQUE, Receiver, hostile_event, make_event
from watcher.errors import ConfigError
from watcher.render import TRUNCATED, ZWSP, ulen
from watcher.secret import Secret
from watcher.sinks.registry import sink_config
from watcher.sinks.slack import SlackSink


def slack(receiver: Receiver, clock: FakeClock | None = None, **kw) -> SlackSink:
    cfg = sink_config(name="team", type="slack", url=Secret(receiver.url("/services/T0/B0/X")), **kw)
    return SlackSink(cfg, clock=clock or FakeClock())


def mrkdwn_texts(payload: dict) -> list[str]:
    texts = [payload["text"]]
    for block in payload.get("blocks", []):
        if "text" in block and block["text"]["type"] == "mrkdwn":
            texts.append(block["text"]["text"])
        texts += [f["text"] for f in block.get("fields", [])]
        texts += [e["text"] for e in block.get("elements", []) if e.get("type") == "mrkdwn"]
    return texts


async def test_posts_a_block_kit_message_within_slack_limits(receiver: Receiver) -> None:
    sink = slack(receiver)
    await sink.send(hostile_event())
    await sink.close()
    req = receiver.requests[0]
    assert req.headers["Content-Type"] == "application/json"
    payload = json.loads(req.body)
    assert ulen(payload["text"]) <= 40_000
    blocks = payload["blocks"]
    assert 0 < len(blocks) <= 50
    header = blocks[0]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert header["text"]["text"] == "❌ Run failed" and ulen(header["text"]["text"]) <= 150
    for block in blocks:
        if block["type"] == "section":
            assert ulen(block.get("text", {}).get("text", "")) <= 3_000
            assert len(block.get("fields", [])) <= 10
            assert all(ulen(f["text"]) <= 2_000 for f in block.get("fields", []))
    error_block = next(b for b in blocks if b.get("text", {}).get("text", "").startswith("*Error message*"))
    assert error_block["text"]["text"].endswith(TRUNCATED + "```")  # the 10,000-character message was cut


async def test_api_text_can_neither_mention_nor_format(receiver: Receiver) -> None:
    sink = slack(receiver)
    await sink.send(hostile_event())
    await sink.close()
    payload = json.loads(receiver.requests[0].body)
    for text in mrkdwn_texts(payload):
        assert "<!channel>" not in text and "<users/all>" not in text and "<@123>" not in text
        assert "@everyone" not in text and "@here" not in text
        assert "*bold*" not in text and "_it_" not in text and "~s~" not in text
    technique_field = payload["blocks"][1]["fields"][0]["text"]
    assert technique_field.startswith("*Technique*\n")
    assert f"{ZWSP}*{ZWSP}bold{ZWSP}*{ZWSP}" in technique_field
    assert "&lt;!channel&gt;" in technique_field
    assert HOSTILE_TECHNIQUE.replace(ZWSP, "") not in json.dumps(payload)


async def test_outputs_become_links_only_for_http_urls(receiver: Receiver) -> None:
    event = make_event("run.completed", outputs=[
        {"output_id": "img", "type": "imageUrl", "url": "https://media.flora.ai/a.png?x=1&y=<2>"},
        {"output_id": "bad", "type": "imageUrl", "url": "javascript:alert(1)"},
        {"output_id": "txt", "type": "text", "url": "A caption with <!here>"},
    ])
    sink = slack(receiver)
    await sink.send(event)
    await sink.close()
    outputs = next(b["text"]["text"] for b in json.loads(receiver.requests[0].body)["blocks"]
                   if b.get("text", {}).get("text", "").startswith("*Outputs*"))
    assert "<https://media.flora.ai/a.png?x=1&amp;y=%3C2%3E|img (imageUrl)>" in outputs  # & as &amp; in a Slack link
    assert "<javascript:" not in outputs and "javascript:alert(1)" in outputs  # shown as text only
    assert "A caption with &lt;!here&gt;" in outputs


async def test_template_overrides_the_text_with_neutralised_values(receiver: Receiver) -> None:
    sink = slack(receiver, template="{marker} *{technique}* failed: {error_code}")
    await sink.send(make_event(technique={"technique_id": "t", "name": "<!channel> Cam"}))
    await sink.close()
    payload = json.loads(receiver.requests[0].body)
    assert payload == {"text": f"❌ *&lt;!channel&gt; Cam* failed: GPU{ZWSP}_{ZWSP}PROVIDER{ZWSP}_{ZWSP}ERROR"}


def test_a_template_field_that_does_not_exist_is_a_config_error() -> None:
    """A typo would otherwise send an empty message (issue 14)."""
    with pytest.raises(ConfigError) as err:
        SlackSink(sink_config(name="team", type="slack", url=Secret("https://hooks.slack.com/services/T/B/X"),
                             template="{run_idd} failed", where="sinks[0]"))
    assert str(err.value) == "sinks[0].template: unknown field {run_idd} (did you mean {run_id}?)"


async def test_sends_at_most_one_message_per_second(receiver: Receiver) -> None:
    clock = FakeClock()
    sink = slack(receiver, clock)
    for i in range(3):
        await sink.send(make_event(run_id=f"run_{i}"))
    await sink.close()
    assert len(receiver.requests) == 3
    assert clock.sleeps == [1.0, 1.0]  # the 2nd and 3rd waited; the 1st went at once
