"""signing.py: Standard Webhooks (checked with the reference library) and FLORA signatures. Pure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks import Webhook

from watcher.signing import (
    flora_headers,
    signature_headers,
    signing_keys,
    standard_headers,
    standard_key,
    standard_signature,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"id":"evt_1","type":"run.failed"}'


def test_standard_signature_matches_the_reference_implementation() -> None:
    now = int(time.time())
    headers = standard_headers("evt_1", now, BODY, [standard_key(SECRET)])
    assert Webhook(SECRET).verify(BODY, headers) == {"id": "evt_1", "type": "run.failed"}
    assert headers["webhook-id"] == "evt_1" and headers["webhook-timestamp"] == str(now)


def test_standard_signature_known_answer() -> None:
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    mac = hmac.new(key, b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330." + b'{"test": 2432232314}', hashlib.sha256)
    assert standard_signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == (
        "v1," + base64.b64encode(mac.digest()).decode())


def test_several_secrets_give_several_signatures() -> None:
    other = "whsec_" + base64.b64encode(b"another key of 32 bytes........").decode()
    headers = standard_headers("evt_1", int(time.time()), BODY, signing_keys("standard", [SECRET, other]))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, other):
        Webhook(secret).verify(BODY, headers)


def test_unpadded_and_unprefixed_secrets_decode_like_the_reference() -> None:
    raw = base64.b64encode(b"0123456789").decode()  # "MDEyMzQ1Njc4OQ=="
    assert standard_key("whsec_" + raw.rstrip("=")) == b"0123456789"
    assert standard_key(raw) == b"0123456789"


@pytest.mark.parametrize("bad", ["whsec_", "whsec_!!!!", "whsec_abc def"])
def test_invalid_standard_secrets_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        standard_key(bad)
    assert bad not in str(err.value) or bad == "whsec_"


def test_flora_signature_is_hex_hmac_of_t_dot_body_keyed_with_the_whole_secret() -> None:
    headers = flora_headers("evt_1", "run.failed", 1764400000, BODY, signing_keys("flora", [SECRET]))
    expected = hmac.new(SECRET.encode(), b"1764400000." + BODY, hashlib.sha256).hexdigest()
    assert headers == {"Flora-Signature": f"t=1764400000,v1={expected}", "Flora-Webhook-Id": "evt_1",
                       "Flora-Event": "run.failed"}


def test_flora_rotation_lists_every_v1() -> None:
    headers = signature_headers("flora", event_id="evt_1", event_type="run.failed", timestamp=5, body=BODY,
                                keys=signing_keys("flora", ["a-secret", "b-secret"]))
    t, v1a, v1b = headers["Flora-Signature"].split(",")
    assert t == "t=5" and v1a.startswith("v1=") and v1b.startswith("v1=") and v1a != v1b


def test_no_secret_no_signature_headers() -> None:
    assert signature_headers("standard", event_id="e", event_type="run.failed", timestamp=1, body=BODY,
                             keys=()) == {}
