"""Webhook signature headers. Pure: the caller passes the time (and reveals the secrets).

Two schemes (CONTRACT §5):

* **Standard Webhooks** (https://www.standardwebhooks.com): ``webhook-id`` (the event id, stable across
  retries and restarts), ``webhook-timestamp`` (Unix seconds at send time) and ``webhook-signature``: one
  ``v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`` per secret, space-separated (several while a secret
  is being rotated). The HMAC key is the base64-decoded part of the secret after ``whsec_``.
* **FLORA** (how FLORA signs its own run callbacks, flora-api.md §5): ``Flora-Signature:
  t=<unix s>,v1=<hex HMAC-SHA256("{t}.{body}")>[,v1=<hex>…]``, ``Flora-Webhook-Id`` (the event id) and
  ``Flora-Event`` (the event type). The HMAC key is the WHOLE secret string, ``whsec_`` prefix included,
  UTF-8 encoded — as FLORA's TypeScript SDK verifies it.

And the receiving side of the FLORA scheme (the ingress, CONTRACT §9): ``parse_flora_signature`` reads the
header, ``verify_flora`` checks the timestamp and the HMAC over the raw body against every ``v1`` (and every
configured key), ``parse_callback`` turns the verified body into a ``Callback``; ``unwrap`` does all three, as
FLORA's SDK ``client.webhooks.unwrap`` does. Each refusal is a ``CallbackRejected`` whose ``reason`` (a
``Rejection``) is also the metric label and decides the HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

STANDARD_PREFIX = "whsec_"
SCHEMES = ("standard", "flora")


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after an optional ``whsec_`` prefix.

    Missing ``=`` padding is tolerated (as the reference verifier does). Raises ValueError — whose message
    never contains the secret — when the rest is not base64 or decodes to nothing.
    """
    raw = secret[len(STANDARD_PREFIX):] if secret.startswith(STANDARD_PREFIX) else secret
    raw = raw.rstrip("=")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a Standard Webhooks secret ('whsec_' followed by base64)") from None
    if not key:
        raise ValueError("the Standard Webhooks secret is empty after 'whsec_'")
    return key


def flora_key(secret: str) -> bytes:
    """The HMAC key of the FLORA scheme: the whole secret string, prefix included."""
    if not secret:
        raise ValueError("the signing secret is empty")
    return secret.encode("utf-8")


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    mac = hmac.digest(key, f"{msg_id}.{timestamp}.".encode() + body, "sha256")  # one-shot, in C
    return "v1," + base64.b64encode(mac).decode("ascii")


def flora_signature(key: bytes, timestamp: int, body: bytes) -> str:
    """Lower-case hex HMAC-SHA256 of ``"{timestamp}.{body}"``."""
    return hmac.digest(key, f"{timestamp}.".encode() + body, "sha256").hex()  # one-shot, in C


def standard_headers(msg_id: str, timestamp: int, body: bytes, keys: Sequence[bytes]) -> dict[str, str]:
    """The three Standard Webhooks headers, one signature per key (none when ``keys`` is empty)."""
    if not keys:
        return {}
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(standard_signature(k, msg_id, timestamp, body) for k in keys),
    }


def flora_headers(
    event_id: str, event_type: str, timestamp: int, body: bytes, keys: Sequence[bytes]
) -> dict[str, str]:
    """``Flora-Signature`` (one ``v1=`` per key), ``Flora-Webhook-Id`` and ``Flora-Event``."""
    headers = {"Flora-Webhook-Id": event_id, "Flora-Event": event_type}
    if keys:
        sigs = ",".join(f"v1={flora_signature(k, timestamp, body)}" for k in keys)
        headers["Flora-Signature"] = f"t={timestamp},{sigs}"
    return headers


def signature_headers(
    scheme: str, *, event_id: str, event_type: str, timestamp: int, body: bytes, keys: Sequence[bytes]
) -> dict[str, str]:
    """The headers of ``scheme`` (``"standard"`` or ``"flora"``) for one request."""
    if scheme == "flora":
        return flora_headers(event_id, event_type, timestamp, body, keys)
    if scheme == "standard":
        return standard_headers(event_id, timestamp, body, keys)
    raise ValueError(f"unknown signature scheme {scheme!r}; choose from {', '.join(SCHEMES)}")


def signing_keys(scheme: str, secrets: Sequence[str]) -> tuple[bytes, ...]:
    """Turn revealed secrets into HMAC keys for ``scheme``. Raises ValueError (secret-free message)."""
    if scheme == "flora":
        return tuple(flora_key(s) for s in secrets)
    if scheme == "standard":
        return tuple(standard_key(s) for s in secrets)
    raise ValueError(f"unknown signature scheme {scheme!r}; choose from {', '.join(SCHEMES)}")


# ------------------------------------------------------------------------------------------------ receiving

MAX_SIGNATURE_HEADER = 4096  # characters; FLORA's is ~80 per signature
MAX_SIGNATURES = 16  # v1 values in one header (rotation needs two)
MAX_ID_LENGTH = 255
_HEX = frozenset("0123456789abcdef")


class Rejection(StrEnum):
    """Why the ingress refused a request. The value is the metric label; ``status`` is the HTTP answer."""

    METHOD = "method"  # not a POST
    PATH = "path"  # not the configured path
    TOO_LARGE = "too_large"  # body over the cap
    SLOW_BODY = "slow_body"  # the body did not arrive in time
    UNSIGNED = "unsigned"  # no Flora-Signature header
    MALFORMED_SIGNATURE = "malformed_signature"  # the header is not t=<digits>,v1=<hex>[,v1=…]
    STALE = "stale"  # t older than the tolerance
    FUTURE = "future"  # t further ahead than the tolerance
    BAD_SIGNATURE = "bad_signature"  # no v1 matches any key
    NOT_JSON = "not_json"  # signed, but the body is not JSON
    BAD_ENVELOPE = "bad_envelope"  # signed JSON, but not FLORA's webhook envelope

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS = {
    Rejection.METHOD: 405, Rejection.PATH: 404, Rejection.TOO_LARGE: 413, Rejection.SLOW_BODY: 408,
    Rejection.UNSIGNED: 401, Rejection.MALFORMED_SIGNATURE: 401, Rejection.STALE: 401, Rejection.FUTURE: 401,
    Rejection.BAD_SIGNATURE: 401, Rejection.NOT_JSON: 400, Rejection.BAD_ENVELOPE: 400,
}


class CallbackRejected(Exception):
    """A request that is not a genuine FLORA callback: ``reason`` (metric label, HTTP status) and a
    human ``detail`` that never contains a secret or the body."""

    def __init__(self, reason: Rejection, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class FloraSignature:
    """A parsed ``Flora-Signature``: the signed Unix second and the candidate ``v1`` values (lower-case
    hex, ASCII bytes)."""

    timestamp: int
    signatures: tuple[bytes, ...]


def parse_flora_signature(header: str | None) -> FloraSignature:
    """Parse ``t=<unix s>,v1=<hex>[,v1=<hex>…]`` tolerantly: parts in any order, spaces around them, keys in
    any case, other schemes (``v0=``, ``v2=``) and ``v1`` values that cannot be an HMAC-SHA256 ignored.
    Refused (``CallbackRejected``): no header (``unsigned``); over 4 KiB, no or several ``t``, ``t`` not
    digits, no usable ``v1``, more than 16 of them (``malformed_signature``)."""
    if header is None or not header.strip():
        raise CallbackRejected(Rejection.UNSIGNED, "no Flora-Signature header")
    if len(header) > MAX_SIGNATURE_HEADER:
        raise CallbackRejected(Rejection.MALFORMED_SIGNATURE, "Flora-Signature header too long")
    timestamp: int | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key == "t":
            if timestamp is not None:
                raise CallbackRejected(Rejection.MALFORMED_SIGNATURE, "several t= in Flora-Signature")
            if not (value.isascii() and value.isdigit() and len(value) <= 12):
                raise CallbackRejected(Rejection.MALFORMED_SIGNATURE, "t= is not a Unix time in seconds")
            timestamp = int(value)
        elif key == "v1":
            value = value.lower()
            if len(value) == 64 and _HEX.issuperset(value):
                signatures.append(value.encode("ascii"))
    if timestamp is None:
        raise CallbackRejected(Rejection.MALFORMED_SIGNATURE, "no t= in Flora-Signature")
    if not signatures:
        raise CallbackRejected(Rejection.MALFORMED_SIGNATURE, "no v1= HMAC-SHA256 in Flora-Signature")
    if len(signatures) > MAX_SIGNATURES:
        raise CallbackRejected(Rejection.MALFORMED_SIGNATURE, f"more than {MAX_SIGNATURES} v1= values")
    return FloraSignature(timestamp, tuple(signatures))


def check_timestamp(timestamp: int, now_s: float, tolerance_s: float) -> None:
    """Refuse a ``t`` more than ``tolerance_s`` away from ``now_s``, in either direction (0: no check)."""
    if tolerance_s <= 0:
        return
    age = now_s - timestamp
    if age > tolerance_s:
        raise CallbackRejected(Rejection.STALE, f"signed {age:.0f}s ago, over the {tolerance_s:g}s tolerance")
    if age < -tolerance_s:
        raise CallbackRejected(Rejection.FUTURE,
                               f"signed {-age:.0f}s in the future, over the {tolerance_s:g}s tolerance")


def verify_flora(body: bytes, header: str | None, keys: Sequence[bytes], *, now_s: float,
                 tolerance_s: float) -> int:
    """Check a FLORA callback against the raw ``body``: the header's shape, its timestamp within
    ``tolerance_s`` of ``now_s`` (before any HMAC, so a stale flood costs no hashing), then
    ``HMAC-SHA256(key, "{t}.{body}")`` for every key, compared in constant time with every ``v1``.
    Returns the signed timestamp; raises ``CallbackRejected``."""
    sig = parse_flora_signature(header)
    check_timestamp(sig.timestamp, now_s, tolerance_s)
    return check_hmac(body, sig, keys)


def check_hmac(body: bytes, sig: FloraSignature, keys: Sequence[bytes]) -> int:
    """``HMAC-SHA256(key, "{t}.{body}")`` for every key against every ``v1`` of a parsed header, in constant
    time. Returns the signed timestamp; raises ``CallbackRejected`` (``bad_signature``)."""
    if not keys:
        raise ValueError("no signing key to verify with")
    signed = f"{sig.timestamp}.".encode("ascii") + body
    matched = False
    for key in keys:
        expected = hmac.digest(key, signed, "sha256").hex().encode("ascii")
        for candidate in sig.signatures:
            matched |= hmac.compare_digest(candidate, expected)
    if not matched:
        raise CallbackRejected(Rejection.BAD_SIGNATURE, "no v1 signature matches the signing secret")
    return sig.timestamp


@dataclass(frozen=True, slots=True)
class Callback:
    """A verified FLORA run callback (flora-api.md §5). Optional fields FLORA did not send (or sent with
    another type) are None."""

    delivery_id: str  # "whd_…": unique per delivery, the same across its retries; deduplicate on it
    type: str  # "run.completed" | "run.failed" (kept as sent when FLORA adds others)
    run_id: str
    run_type: str | None  # "technique" | "generation"
    workspace_id: str | None
    status: str | None  # "completed" | "failed": the callback's claim; the API decides
    error_code: str | None = None
    error_message: str | None = None
    created_at: int | None = None  # Unix ms
    api_version: str | None = None
    timestamp: int = 0  # the signed Unix second

    @property
    def is_run_event(self) -> bool:
        return self.type in ("run.completed", "run.failed")


def _required_str(obj: dict[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise CallbackRejected(Rejection.BAD_ENVELOPE, f"{where}{key} is not a non-empty string")
    return value


def _optional_str(obj: dict[str, object], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def parse_callback(body: bytes, *, timestamp: int = 0) -> Callback:
    """The envelope ``{id, type, api_version, created_at, data: {run_id, run_type, workspace_id, status,
    error_code?, error_message?}}`` as a ``Callback``. Refused: not UTF-8 JSON (``not_json``); not an object,
    or no string ``id``, ``type`` or ``data.run_id`` (``bad_envelope``)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise CallbackRejected(Rejection.NOT_JSON, "the body is not JSON") from None
    if not isinstance(obj, dict):
        raise CallbackRejected(Rejection.BAD_ENVELOPE, "the body is not a JSON object")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise CallbackRejected(Rejection.BAD_ENVELOPE, "data is not an object")
    created = obj.get("created_at")
    return Callback(
        delivery_id=_required_str(obj, "id", ""),
        type=_required_str(obj, "type", ""),
        run_id=_required_str(data, "run_id", "data."),
        run_type=_optional_str(data, "run_type"),
        workspace_id=_optional_str(data, "workspace_id"),
        status=_optional_str(data, "status"),
        error_code=_optional_str(data, "error_code"),
        error_message=_optional_str(data, "error_message"),
        created_at=created if isinstance(created, int) and not isinstance(created, bool) else None,
        api_version=_optional_str(obj, "api_version"),
        timestamp=timestamp,
    )


def unwrap(body: bytes, header: str | None, keys: Sequence[bytes], *, now_s: float,
           tolerance_s: float) -> Callback:
    """``verify_flora`` then ``parse_callback``: what FLORA's SDK ``webhooks.unwrap`` does, on raw bytes."""
    timestamp = verify_flora(body, header, keys, now_s=now_s, tolerance_s=tolerance_s)
    return parse_callback(body, timestamp=timestamp)
