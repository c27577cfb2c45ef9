"""signing.py: Standard Webhooks (checked with the reference library) and FLORA signatures. Pure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from standardwebhooks import Webhook

from watcher.signing import (
    Callback,
    CallbackRejected,
    Rejection,
    check_timestamp,
    flora_headers,
    flora_signature,
    parse_callback,
    parse_flora_signature,
    signature_headers,
    signing_keys,
    standard_headers,
    standard_key,
    standard_signature,
    unwrap,
    verify_flora,
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


# ------------------------------------------------------------------------------------------------ receiving

KEY = SECRET.encode()
NOW = 1_764_400_000
ENVELOPE = (b'{"id":"whd_0123456789abcdef01234567","type":"run.failed","api_version":"2026-06-11",'
            b'"created_at":1764399999000,"data":{"run_id":"run_abc","run_type":"technique",'
            b'"workspace_id":"ws_abc","status":"failed","error_code":"GPU_PROVIDER_ERROR",'
            b'"error_message":"The provider failed."}}')


def signed(body: bytes = ENVELOPE, t: int = NOW, keys: tuple[bytes, ...] = (KEY,)) -> str:
    return ",".join([f"t={t}", *(f"v1={flora_signature(k, t, body)}" for k in keys)])


def rejected(reason: Rejection, body: bytes = ENVELOPE, header: str | None = None, *, keys=(KEY,),
             now: float = NOW, tolerance: float = 600) -> CallbackRejected:
    with pytest.raises(CallbackRejected) as err:
        unwrap(body, signed(body) if header is None else header, keys, now_s=now, tolerance_s=tolerance)
    assert err.value.reason is reason, err.value
    assert SECRET not in str(err.value)
    return err.value


def test_a_genuine_callback_unwraps_into_a_typed_value() -> None:
    cb = unwrap(ENVELOPE, signed(), [KEY], now_s=NOW, tolerance_s=600)
    assert cb == Callback(delivery_id="whd_0123456789abcdef01234567", type="run.failed", run_id="run_abc",
                          run_type="technique", workspace_id="ws_abc", status="failed",
                          error_code="GPU_PROVIDER_ERROR", error_message="The provider failed.",
                          created_at=1764399999000, api_version="2026-06-11", timestamp=NOW)
    assert cb.is_run_event


def test_what_our_own_sender_signs_is_what_the_verifier_accepts() -> None:
    headers = flora_headers("whd_1", "run.failed", NOW, ENVELOPE, signing_keys("flora", [SECRET, "whsec_other"]))
    assert verify_flora(ENVELOPE, headers["Flora-Signature"], [KEY], now_s=NOW, tolerance_s=600) == NOW
    assert verify_flora(ENVELOPE, headers["Flora-Signature"], [b"whsec_other"], now_s=NOW, tolerance_s=600) == NOW


@pytest.mark.parametrize("template", [
    "t={t},v1={v}",
    " t = {t} , v1 = {v} ",
    "v1={v},t={t}",
    "T={t},V1={v}",
    "t={t},v0=deadbeef,v1={v},v2=whatever",
    "t={t},v1=not-hex,v1={v}",
    "t={t},v1={V}",  # upper-case hex
    "t={t},,v1={v},",
    "t={t},garbage,v1={v}",
    "t=0{t},v1={v}",  # leading zero: the SDK signs the number, so do we
])
def test_the_header_is_read_tolerantly(template: str) -> None:
    v = flora_signature(KEY, NOW, ENVELOPE)
    header = template.format(t=NOW, v=v, V=v.upper())
    assert verify_flora(ENVELOPE, header, [KEY], now_s=NOW, tolerance_s=600) == NOW


@pytest.mark.parametrize(("header", "reason"), [
    (None, Rejection.UNSIGNED),
    ("", Rejection.UNSIGNED),
    ("   ", Rejection.UNSIGNED),
    ("v1=" + "a" * 64, Rejection.MALFORMED_SIGNATURE),
    (f"t={NOW}", Rejection.MALFORMED_SIGNATURE),
    (f"t={NOW},v1=", Rejection.MALFORMED_SIGNATURE),
    (f"t={NOW},v1=abc", Rejection.MALFORMED_SIGNATURE),
    (f"t={NOW},v1={'g' * 64}", Rejection.MALFORMED_SIGNATURE),
    (f"t=abc,v1={'a' * 64}", Rejection.MALFORMED_SIGNATURE),
    (f"t=-5,v1={'a' * 64}", Rejection.MALFORMED_SIGNATURE),
    (f"t=1.5e9,v1={'a' * 64}", Rejection.MALFORMED_SIGNATURE),
    (f"t=\u0661\u0662,v1={'a' * 64}", Rejection.MALFORMED_SIGNATURE),  # Arabic-Indic digits
    (f"t={NOW},t={NOW},v1={'a' * 64}", Rejection.MALFORMED_SIGNATURE),
    (f"t={NOW}," + ",".join(["v1=" + "a" * 64] * 17), Rejection.MALFORMED_SIGNATURE),
    (f"t={NOW},v1={'a' * 64}" + " " * 5000, Rejection.MALFORMED_SIGNATURE),
    (f"t={NOW},v1={'a' * 64}", Rejection.BAD_SIGNATURE),
    ("garbage", Rejection.MALFORMED_SIGNATURE),
])
def test_bad_headers_are_refused_with_their_reason(header: str | None, reason: Rejection) -> None:
    with pytest.raises(CallbackRejected) as err:
        verify_flora(ENVELOPE, header, [KEY], now_s=NOW, tolerance_s=600)
    assert err.value.reason is reason and reason.status == 401


def test_timestamps_are_checked_both_ways_within_the_tolerance() -> None:
    check_timestamp(NOW - 600, NOW, 600)
    check_timestamp(NOW + 600, NOW, 600)
    with pytest.raises(CallbackRejected) as old:
        check_timestamp(NOW - 601, NOW, 600)
    assert old.value.reason is Rejection.STALE
    with pytest.raises(CallbackRejected) as ahead:
        check_timestamp(NOW + 601, NOW, 600)
    assert ahead.value.reason is Rejection.FUTURE
    check_timestamp(0, NOW, 0)  # 0 disables the check, as in FLORA's SDK


def test_a_stale_callback_is_refused_before_any_hmac() -> None:
    # A stale header with a wrong signature says "stale": the timestamp is checked first (no hashing).
    rejected(Rejection.STALE, header=f"t={NOW - 3600},v1={'a' * 64}")
    rejected(Rejection.STALE, header=signed(t=NOW - 3600))
    rejected(Rejection.FUTURE, header=signed(t=NOW + 3600))


def test_flora_late_retry_after_five_minutes_passes_the_default_tolerance() -> None:
    # FLORA's last retry comes ~6 min after the first attempt with the same t: 600 s takes it, 300 s would not.
    assert unwrap(ENVELOPE, signed(t=NOW), [KEY], now_s=NOW + 10 + 60 + 300, tolerance_s=600).timestamp == NOW
    rejected(Rejection.STALE, now=NOW + 370, tolerance=300)


def test_any_of_several_configured_secrets_verifies() -> None:
    old, new = b"whsec_old", b"whsec_new"
    assert unwrap(ENVELOPE, signed(keys=(old,)), [new, old], now_s=NOW, tolerance_s=600).run_id == "run_abc"
    rejected(Rejection.BAD_SIGNATURE, header=signed(keys=(b"whsec_third",)), keys=(new, old))
    with pytest.raises(ValueError):
        verify_flora(ENVELOPE, signed(), [], now_s=NOW, tolerance_s=600)


@pytest.mark.parametrize(("body", "reason"), [
    (b"", Rejection.NOT_JSON),
    (b"not json", Rejection.NOT_JSON),
    (b"\xff\xfe{}", Rejection.NOT_JSON),
    (b"[" * 100_000, Rejection.NOT_JSON),
    (b"[]", Rejection.BAD_ENVELOPE),
    (b"{}", Rejection.BAD_ENVELOPE),
    (b'{"id":"whd_1","type":"run.failed"}', Rejection.BAD_ENVELOPE),
    (b'{"id":"whd_1","type":"run.failed","data":[]}', Rejection.BAD_ENVELOPE),
    (b'{"id":"whd_1","type":"run.failed","data":{}}', Rejection.BAD_ENVELOPE),
    (b'{"id":"","type":"run.failed","data":{"run_id":"run_1"}}', Rejection.BAD_ENVELOPE),
    (b'{"id":7,"type":"run.failed","data":{"run_id":"run_1"}}', Rejection.BAD_ENVELOPE),
    (b'{"id":"whd_1","data":{"run_id":"run_1"}}', Rejection.BAD_ENVELOPE),
    (b'{"id":"whd_1","type":"run.failed","data":{"run_id":"run\\n1"}}', Rejection.BAD_ENVELOPE),
    (b'{"id":"' + b"w" * 300 + b'","type":"run.failed","data":{"run_id":"run_1"}}', Rejection.BAD_ENVELOPE),
])
def test_signed_bodies_that_are_no_envelope_are_refused_with_400(body: bytes, reason: Rejection) -> None:
    assert rejected(reason, body).reason.status == 400


def test_an_envelope_is_read_leniently_beyond_its_required_fields() -> None:
    body = (b'{"id":"whd_1","type":"run.cancelled","created_at":"soon","extra":1,'
            b'"data":{"run_id":"run_1","status":5,"run_type":null,"outputs":[]}}')
    cb = parse_callback(body)
    assert (cb.delivery_id, cb.type, cb.run_id) == ("whd_1", "run.cancelled", "run_1")
    assert cb.status is cb.run_type is cb.workspace_id is cb.created_at is None
    assert not cb.is_run_event


def test_rejections_name_their_http_status() -> None:
    assert {r: r.status for r in Rejection} == {
        Rejection.METHOD: 405, Rejection.PATH: 404, Rejection.TOO_LARGE: 413, Rejection.SLOW_BODY: 408,
        Rejection.UNSIGNED: 401,
        Rejection.MALFORMED_SIGNATURE: 401, Rejection.STALE: 401, Rejection.FUTURE: 401,
        Rejection.BAD_SIGNATURE: 401, Rejection.NOT_JSON: 400, Rejection.BAD_ENVELOPE: 400,
    }


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_any_change_to_the_body_is_refused(body: bytes, tampered: bytes) -> None:
    assume(tampered != body)
    with pytest.raises(CallbackRejected) as err:
        verify_flora(tampered, signed(body), [KEY], now_s=NOW, tolerance_s=600)
    assert err.value.reason is Rejection.BAD_SIGNATURE


@given(st.binary(min_size=1, max_size=300), st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_one_byte_change_to_the_body_is_refused(body: bytes, at: int, xor: int) -> None:
    at %= len(body)
    tampered = body[:at] + bytes([body[at] ^ xor]) + body[at + 1:]
    with pytest.raises(CallbackRejected) as err:
        verify_flora(tampered, signed(body), [KEY], now_s=NOW, tolerance_s=600)
    assert err.value.reason is Rejection.BAD_SIGNATURE


@given(st.integers(min_value=-600, max_value=600))
def test_any_other_timestamp_is_refused(shift: int) -> None:
    assume(shift != 0)
    v = flora_signature(KEY, NOW, ENVELOPE)
    with pytest.raises(CallbackRejected) as err:
        verify_flora(ENVELOPE, f"t={NOW + shift},v1={v}", [KEY], now_s=NOW, tolerance_s=600)
    assert err.value.reason is Rejection.BAD_SIGNATURE


@given(st.integers(min_value=0, max_value=63), st.sampled_from("0123456789abcdef"))
def test_any_change_to_the_signature_is_refused(at: int, digit: str) -> None:
    v = flora_signature(KEY, NOW, ENVELOPE)
    assume(v[at] != digit)
    forged = v[:at] + digit + v[at + 1:]
    with pytest.raises(CallbackRejected) as err:
        verify_flora(ENVELOPE, f"t={NOW},v1={forged}", [KEY], now_s=NOW, tolerance_s=600)
    assert err.value.reason is Rejection.BAD_SIGNATURE


@given(st.lists(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), max_size=14),
       st.integers(min_value=0, max_value=14))
def test_a_valid_signature_among_other_v1s_is_accepted(others: list[str], position: int) -> None:
    values = list(others)
    values.insert(min(position, len(values)), flora_signature(KEY, NOW, ENVELOPE))
    header = f"t={NOW}," + ",".join(f"v1={v}" for v in values)
    assert verify_flora(ENVELOPE, header, [KEY], now_s=NOW, tolerance_s=600) == NOW


@given(st.text(max_size=200))
def test_any_header_text_is_parsed_or_refused_never_crashes(header: str) -> None:
    try:
        parse_flora_signature(header)
    except CallbackRejected as err:
        assert err.reason in (Rejection.UNSIGNED, Rejection.MALFORMED_SIGNATURE)


@given(st.binary(max_size=200))
def test_any_signed_body_is_parsed_or_refused_never_crashes(body: bytes) -> None:
    try:
        parse_callback(body)
    except CallbackRejected as err:
        assert err.reason.status == 400
