"""Google Chat sink: text within 4096, threads per run/project, inert mentions, pacing."""

from __future__ import annotations

import json

from tests.fakes import FakeClock
from tests.sinks.helpers import Receiver, hostile_event, make_event
from watcher.render import ZWSP, ulen
from watcher.secret import Secret
from watcher.sinks.google_chat import GoogleChatSink, with_reply_option
from watcher.sinks.registry import sink_config

URL_PATH = "/v1/spaces/AAAA/messages?key=KEY123&token=abc%3Ddef"


def gchat(receiver: Receiver, clock: FakeClock | None = None, **kw) -> GoogleChatSink:
    cfg = sink_config(name="gc", type="google_chat", url=Secret(receiver.url(URL_PATH)), **kw)
    return GoogleChatSink(cfg, clock=clock or FakeClock())


async def test_text_message_threaded_per_run(receiver: Receiver) -> None:
    sink = gchat(receiver)
    await sink.send(make_event())
    await sink.close()
    req = receiver.requests[0]
    assert req.query == {"key": "KEY123", "token": "abc=def",
                         "messageReplyOption": "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"}
    payload = json.loads(req.body)
    assert payload["thread"] == {"threadKey": "flora-run-run_abc123"}
    assert payload["text"].startswith("❌ *Run failed*: CCTV Cam\nRun: `run_abc123`")
    assert "<https://media.flora.ai/output.png|output" in payload["text"]


async def test_thread_per_project_and_none(receiver: Receiver) -> None:
    for mode, expected in (("project", {"threadKey": "flora-project-prj_abc123"}), ("none", None)):
        sink = gchat(receiver, thread=mode)
        await sink.send(make_event())
        await sink.close()
        req = receiver.requests[-1]
        assert json.loads(req.body).get("thread") == expected
        assert ("messageReplyOption" in req.query) == (expected is not None)


async def test_text_within_limit_and_mentions_inert(receiver: Receiver) -> None:
    sink = gchat(receiver)
    await sink.send(hostile_event())
    await sink.close()
    text = json.loads(receiver.requests[0].body)["text"]
    assert ulen(text) <= 4_096
    assert "…(truncated)" in text
    assert "<users/all>" not in text and f"<{ZWSP}users/all>" in text
    assert "@everyone" not in text and "*bold*" not in text


def test_reply_option_keeps_the_url_query_as_is() -> None:
    assert with_reply_option("https://c.example/m?key=a&token=b%3D") == (
        "https://c.example/m?key=a&token=b%3D&messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD")
    assert with_reply_option("https://c.example/m").endswith("/m?messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD")


async def test_paced_to_one_message_per_second(receiver: Receiver) -> None:
    clock = FakeClock()
    sink = gchat(receiver, clock)
    await sink.send(make_event(run_id="run_1"))
    clock.advance(0.25)
    await sink.send(make_event(run_id="run_2"))
    await sink.close()
    assert clock.sleeps == [0.75]
