"""Webhook sink against a real local receiver: exact body, headers, both signature schemes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

import pytest
from standardwebhooks import Webhook

from tests.fakes import FakeClock
from tests.sinks.helpers import Receiver, make_event
from watcher import __version__
from watcher.errors import ConfigError, DeliveryError, Reason
from watcher.secret import Secret
from watcher.sinks.registry import sink_config
from watcher.sinks.webhook import WebhookSink


def whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def webhook(receiver: Receiver, clock: FakeClock | None = None, **kw) -> WebhookSink:
    cfg = sink_config(name="ops", type="webhook", url=Secret(receiver.url()), **kw)
    return WebhookSink(cfg, clock=clock or FakeClock())


def flora_verify(secret: str, body: bytes, headers: dict[str, str], *, now_s: int, tolerance: int = 300) -> bool:
    """flora-api.md §5, written from the spec: HMAC-SHA256 keyed with the whole secret string over
    "{t}.{raw body}", lower-case hex, constant-time against every v1, timestamp within the tolerance."""
    header = {k.lower(): v for k, v in headers.items()}["flora-signature"]
    t, v1s = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            t = value
        elif key == "v1":
            v1s.append(value)
    if t is None or abs(now_s - int(t)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for v in v1s)


async def test_posts_the_exact_event_json_with_contract_headers(receiver: Receiver) -> None:
    event = make_event("run.completed", technique={"technique_id": "t", "name": "Café ☕"})
    sink = webhook(receiver, headers={"X-Team": Secret("alpha"), "Authorization": Secret("Bearer tok")})
    await sink.start()
    result = await sink.send(event)
    await sink.close()

    req = receiver.requests[0]
    assert req.method == "POST" and req.path == "/hook"
    expected = json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
    assert req.body == expected
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"] == f"flora-watcher/{__version__}"
    assert req.headers["X-Team"] == "alpha" and req.headers["Authorization"] == "Bearer tok"
    assert "webhook-signature" not in {k.lower() for k in req.headers}  # unsigned without a secret
    assert result.status == 200 and result.detail == "ok"


async def test_pre_serialised_body_is_sent_byte_for_byte(receiver: Receiver) -> None:
    event = make_event()
    stored = b'{"id":"%s","type":"run.failed","kept":"as stored"}' % event.id.encode()
    sink = webhook(receiver)
    await sink.send(event, body=stored)
    await sink.close()
    assert receiver.requests[0].body == stored


async def test_standard_webhooks_signature_verifies_with_the_reference_library(receiver: Receiver) -> None:
    secret = whsec()
    clock = FakeClock()
    import time

    clock.set_now_ms(time.time_ns() // 1_000_000)  # the reference verifier checks the age against real time
    sink = webhook(receiver, clock, secrets=(Secret(secret),))
    event = make_event()
    await sink.send(event)
    await sink.close()
    req = receiver.requests[0]
    payload = Webhook(secret).verify(req.body, req.headers)
    assert payload["id"] == event.id
    assert req.headers["webhook-id"] == event.id
    assert req.headers["webhook-timestamp"] == str(clock.now_ms() // 1000)


async def test_rotation_sends_one_signature_per_secret_each_verifiable(receiver: Receiver) -> None:
    import time

    old, new = whsec(), whsec()
    clock = FakeClock(0.0, epoch_ms=time.time_ns() // 1_000_000)
    sink = webhook(receiver, clock, secrets=(Secret(new), Secret(old)))
    await sink.send(make_event())
    await sink.close()
    req = receiver.requests[0]
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):  # a receiver holding either secret accepts the delivery
        Webhook(secret).verify(req.body, req.headers)


async def test_retries_keep_the_id_and_re_sign_with_the_send_time(receiver: Receiver) -> None:
    clock = FakeClock()
    sink = webhook(receiver, clock, secrets=(Secret(whsec()),))
    event = make_event()
    await sink.send(event)
    clock.advance(90)
    await sink.send(event)
    await sink.close()
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event.id
    assert int(second.headers["webhook-timestamp"]) == int(first.headers["webhook-timestamp"]) + 90
    assert first.body == second.body


async def test_flora_signature_verifies_per_flora_api_spec(receiver: Receiver) -> None:
    secret, other = "whsec_" + "k" * 32, "whsec_rotated-" + "z" * 20
    clock = FakeClock()
    sink = webhook(receiver, clock, secrets=(Secret(secret), Secret(other)), signature="flora")
    event = make_event()
    await sink.send(event)
    await sink.close()
    req = receiver.requests[0]
    now_s = clock.now_ms() // 1000
    assert req.headers["Flora-Signature"].startswith(f"t={now_s},v1=")
    assert req.headers["Flora-Signature"].count("v1=") == 2
    assert req.headers["Flora-Webhook-Id"] == event.id
    assert req.headers["Flora-Event"] == "run.failed"
    assert flora_verify(secret, req.body, req.headers, now_s=now_s)
    assert flora_verify(other, req.body, req.headers, now_s=now_s)
    assert not flora_verify("whsec_wrong", req.body, req.headers, now_s=now_s)
    assert not flora_verify(secret, req.body + b" ", req.headers, now_s=now_s)
    assert "webhook-signature" not in {k.lower() for k in req.headers}


def test_an_invalid_standard_secret_is_a_config_error_that_does_not_print_it() -> None:
    cfg = sink_config(name="ops", type="webhook", url=Secret("https://example.com/h"),
                     secrets=(Secret("whsec_not base64!!"),), where="sinks[0]")
    with pytest.raises(ConfigError) as err:
        WebhookSink(cfg)
    assert err.value.key == "sinks[0].secret"
    assert "not base64" not in str(err.value)


async def test_a_receiver_echoing_the_secret_url_is_scrubbed(receiver: Receiver) -> None:
    token = "T0KEN-abcdefghijklmnop"
    receiver.answer(404, f"Cannot POST /hooks/{token}")
    cfg = sink_config(name="ops", type="webhook", url=Secret(receiver.url(f"/hooks/{token}")))
    sink = WebhookSink(cfg, clock=FakeClock())
    with pytest.raises(DeliveryError) as err:
        await sink.send(make_event())
    await sink.close()
    assert token not in err.value.message
    assert err.value.reason == Reason.CLIENT_ERROR and err.value.status == 404


def doc_functions() -> dict:
    """The receiver snippets of docs/sinks.md, executed: the documentation must verify real requests."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "sinks.md").read_text()
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        exec(compile(block, "docs/sinks.md", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("scheme", ["standard", "flora"])
async def test_the_documented_receiver_code_verifies_real_deliveries(scheme: str, receiver: Receiver) -> None:
    import time

    verify = doc_functions()[f"verify_{scheme}"]
    secret, old = whsec(), whsec()
    real_now = FakeClock(0.0, epoch_ms=time.time_ns() // 1_000_000)
    sink = webhook(receiver, real_now, secrets=(Secret(secret), Secret(old)), signature=scheme)
    await sink.send(make_event())
    await sink.close()
    req = receiver.requests[0]
    assert verify(secret, req.headers, req.body) and verify(old, req.headers, req.body)
    assert not verify(whsec(), req.headers, req.body)
    assert not verify(secret, req.headers, req.body.replace(b"run_abc123", b"run_abc124"))


@pytest.mark.parametrize("name", ["content-type", "Webhook-Signature", "Flora-Event"])
def test_headers_the_sink_sets_cannot_be_overridden(name: str) -> None:
    cfg = sink_config(name="ops", type="webhook", url=Secret("https://example.com/h"), headers={name: Secret("x")},
                     where="sinks[3]")
    with pytest.raises(ConfigError) as err:
        WebhookSink(cfg)
    assert err.value.key == f"sinks[3].headers.{name}"
