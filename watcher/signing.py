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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

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
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def flora_signature(key: bytes, timestamp: int, body: bytes) -> str:
    """Lower-case hex HMAC-SHA256 of ``"{timestamp}.{body}"``."""
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


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
