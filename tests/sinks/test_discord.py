"""Discord sink: content + embed within Discord's limits, no mentions, bucket pacing, retry_after."""

from __future__ import annotations

import json

import pytest

from tests.fakes import FakeClock
from tests.sinks.helpers import Receiver, hostile_event, make_event
from watcher.errors import DeliveryError, Reason
from watcher.render import ulen
from watcher.secret import Secret
from watcher.sinks.discord import DiscordSink, embed_length
from watcher.sinks.registry import sink_config


def discord(receiver: Receiver, clock: FakeClock | None = None, **kw) -> DiscordSink:
    max_wait = kw.pop("max_wait", 30.0)
    cfg = sink_config(name="dc", type="discord", url=Secret(receiver.url("/api/webhooks/1/tok")), **kw)
    return DiscordSink(cfg, clock=clock or FakeClock(), max_wait=max_wait)


async def test_payload_is_within_discord_limits_and_mentions_nobody(receiver: Receiver) -> None:
    sink = discord(receiver)
    await sink.send(hostile_event())
    await sink.close()
    payload = json.loads(receiver.requests[0].body)
    assert receiver.requests[0].query.get("wait") == "true"  # a 2xx then means the message was posted
    assert payload["allowed_mentions"] == {"parse": []}
    assert ulen(payload["content"]) <= 2_000
    (embed,) = payload["embeds"]
    assert ulen(embed["title"]) <= 256
    assert ulen(embed["description"]) <= 4_096
    assert len(embed["fields"]) <= 25
    assert all(ulen(f["name"]) <= 256 and 0 < ulen(f["value"]) <= 1_024 for f in embed["fields"])
    assert embed_length(embed) <= 6_000
    assert embed["description"].endswith("…(truncated)\n```")
    everything = json.dumps(payload, ensure_ascii=False)
    assert "@everyone" not in everything and "@here" not in everything
    for text in (payload["content"], embed["title"]):
        assert "\\*bold\\*" in text and "\\_it\\_" in text and "\\<!channel\\>" in text and "\\[x\\]" in text


async def test_an_empty_bucket_waits_for_reset_after_before_sending(receiver: Receiver) -> None:
    receiver.answer(204, b"", headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "1.5"})
    clock = FakeClock()
    sink = discord(receiver, clock)
    await sink.send(make_event(run_id="run_1"))
    await sink.send(make_event(run_id="run_2"))
    await sink.close()
    assert len(receiver.requests) == 2
    assert clock.sleeps == [1.5]


async def test_a_bucket_with_room_does_not_wait(receiver: Receiver) -> None:
    receiver.answer(204, b"", headers={"X-RateLimit-Remaining": "4", "X-RateLimit-Reset-After": "2"})
    clock = FakeClock()
    sink = discord(receiver, clock)
    await sink.send(make_event(run_id="run_1"))
    await sink.send(make_event(run_id="run_2"))
    await sink.close()
    assert clock.sleeps == []


async def test_a_long_bucket_wait_is_handed_back_to_the_dispatcher(receiver: Receiver) -> None:
    receiver.answer(204, b"", headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "120"})
    clock = FakeClock()
    sink = discord(receiver, clock, max_wait=30.0)
    await sink.send(make_event(run_id="run_1"))
    with pytest.raises(DeliveryError) as err:
        await sink.send(make_event(run_id="run_2"))
    await sink.close()
    assert (err.value.retryable, err.value.reason) == (True, Reason.RATE_LIMITED)
    assert err.value.retry_after == pytest.approx(120)
    assert clock.sleeps == [] and len(receiver.requests) == 1


async def test_429_retry_after_from_the_json_body_is_honoured(receiver: Receiver) -> None:
    body = json.dumps({"message": "You are being rate limited.", "retry_after": 3.5, "global": False})
    receiver.answer(429, body, headers={"Content-Type": "application/json"})
    sink = discord(receiver)
    with pytest.raises(DeliveryError) as err:
        await sink.send(make_event())
    await sink.close()
    assert (err.value.retryable, err.value.reason, err.value.retry_after) == (True, Reason.RATE_LIMITED, 3.5)
