"""Pure decisions about time and failure: backoff maths, Retry-After, the per-run poll schedule, the HTTP
classifier every sink uses, delivery verdicts and the per-sink circuit breaker.

Nothing here reads a clock or a random source: callers pass ``now_ms`` and a uniform draw ``rand`` in [0, 1).
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from watcher.errors import DeliveryError, Reason

if TYPE_CHECKING:  # only for annotations: keeps this pure module free of config's file-reading shell
    from watcher.config import DeliveryConfig


def full_jitter(attempt: int, rand: float, *, base: float, cap: float) -> float:
    """AWS-style full jitter: uniform in [0, min(cap, base * 2**attempt)). ``attempt`` counts from 0."""
    ceiling = min(cap, base * (2 ** min(max(attempt, 0), 62)))
    return max(0.0, rand) * ceiling


def parse_retry_after(headers: Mapping[str, str], now_ms: int) -> float | None:
    """Seconds to wait according to ``retry-after-ms`` or ``Retry-After`` (delta-seconds or HTTP-date).

    Returns None when neither header is present or parseable. Negative waits become 0.
    ``headers`` should be case-insensitive (aiohttp's CIMultiDictProxy is); plain dicts are searched
    case-insensitively here as well.
    """
    lowered = {k.lower(): v for k, v in headers.items()} if not hasattr(headers, "getone") else headers
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(str(ms).strip())
        except ValueError:
            value = None
        if value is not None and value == value and value not in (float("inf"), float("-inf")):
            return max(0.0, value / 1000.0)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    text = str(raw).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now_ms / 1000.0)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


# ------------------------------------------------------------------------------------- per-run polls


def poll_delay(attempt: int, rand: float, *, first: float, cap: float) -> float:
    """Seconds until the next per-run poll of a run the listing cannot settle.

    The ceiling starts at ``first`` and doubles per unchanged poll (``attempt`` counts from 0) up to ``cap``;
    equal jitter (half fixed, half random) spreads polls without ever giving 0. Always in (0, cap].
    """
    if not (first > 0 and cap > 0):
        raise ValueError("poll_delay: first and cap must be positive")
    ceiling = min(cap, first * (2 ** min(max(attempt, 0), 62)))
    return ceiling / 2 + _unit(rand) * ceiling / 2


def _unit(rand: float) -> float:
    """A draw clamped to [0, 1] (NaN counts as 0)."""
    return min(1.0, max(0.0, rand)) if rand == rand else 0.0


# --------------------------------------------------------------------------------- delivery verdicts


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a delivery after a failed attempt.

    ``retry``: try again at ``next_attempt_ms``. ``dead``: keep it as a dead letter for ``replay``.
    ``disable``: the destination is gone (HTTP 410); disable the sink and dead-letter what it had pending.
    ``reason`` is a metric label (an ``errors.Reason`` value).
    """

    action: Literal["retry", "dead", "disable"]
    next_attempt_ms: int | None
    reason: str


def decide_failure(
    err: DeliveryError, *, attempts: int, created_ms: int, now_ms: int, rand: float, cfg: DeliveryConfig
) -> Verdict:
    """The verdict for a failed delivery (CONTRACT §5). ``attempts`` counts attempts made, this one included.

    The wait is full-jitter exponential backoff (``cfg.backoff_initial`` doubling to ``cfg.backoff_max``).
    A receiver's ``retry_after`` is honoured in full, even above ``backoff_max``: the wait is
    ``max(retry_after, backoff)``, and the next attempt is never earlier than the receiver asked. The retry
    horizon is the only bound: when the next attempt would fall after ``created_ms + cfg.retry_horizon``
    the delivery becomes a dead letter (reason ``expired``) instead.
    """
    if err.disable:
        return Verdict("disable", None, str(err.reason))
    if not err.retryable:
        return Verdict("dead", None, str(err.reason))
    delay = full_jitter(attempts - 1, _unit(rand), base=cfg.backoff_initial, cap=cfg.backoff_max)
    if err.retry_after is not None and math.isfinite(err.retry_after):
        delay = max(delay, err.retry_after)
    next_attempt_ms = now_ms + math.ceil(delay * 1000)
    if next_attempt_ms > created_ms + math.floor(cfg.retry_horizon * 1000):
        return Verdict("dead", None, str(Reason.EXPIRED))
    return Verdict("retry", next_attempt_ms, str(err.reason))


# ------------------------------------------------------------------------------------ HTTP classifier

_RETRYABLE_4XX = frozenset({408, 425, 429})
_SNIPPET_CHARS = 200
_TAG = re.compile(r"<(?!secret>)[^<>]{0,500}>")  # markup goes; our own <secret> marker stays
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def classify_http(status: int, headers: Mapping[str, str], body: bytes, now_ms: int) -> DeliveryError | None:
    """The one classifier every HTTP sink uses (CONTRACT §5). None on 2xx; otherwise the error to raise.

    408, 425, 429 and 5xx are retryable, with the receiver's wait from ``retry-after-ms``/``Retry-After``
    (and, on 429, Discord's ``X-RateLimit-Reset-After`` header or JSON ``retry_after``). 410 disables the
    sink. 3xx is permanent (redirects are not followed); any other 4xx is permanent. A nonsense status
    (1xx as a final answer, 600 and above) counts as a transient receiver fault. ``body`` must hold no
    secret; URLs are cut from it anyway.
    """
    if 200 <= status <= 299:
        return None
    message = _message(status, body)
    if status == 429:
        retry_after = parse_retry_after(headers, now_ms)
        if retry_after is None:
            retry_after = _discord_retry_after(headers, body)
        return DeliveryError(
            message, retryable=True, reason=Reason.RATE_LIMITED, retry_after=retry_after, status=status
        )
    if status in _RETRYABLE_4XX or status >= 500 or status < 200:
        return DeliveryError(
            message,
            retryable=True,
            reason=Reason.SERVER_ERROR,
            retry_after=parse_retry_after(headers, now_ms),
            status=status,
        )
    if status == 410:
        return DeliveryError(message, retryable=False, reason=Reason.GONE, disable=True, status=status)
    if 300 <= status <= 399:
        message = f"HTTP {status} from receiver (redirects are not followed)"
    return DeliveryError(message, retryable=False, reason=Reason.CLIENT_ERROR, status=status)


def _message(status: int, body: bytes) -> str:
    snippet = body_snippet(body)
    return f"HTTP {status} from receiver: {snippet}" if snippet else f"HTTP {status} from receiver"


def body_snippet(body: bytes, limit: int = _SNIPPET_CHARS) -> str:
    """A short, one-line, printable excerpt of a response body: tags, URLs and control characters removed."""
    text = body[: limit * 8].decode("utf-8", errors="replace")
    text = _URL.sub("<url>", _TAG.sub(" ", text))
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _discord_retry_after(headers: Mapping[str, str], body: bytes) -> float | None:
    """Discord's wait on a 429: ``X-RateLimit-Reset-After`` (seconds), else the body's ``retry_after``."""
    value = _seconds(_header(headers, "x-ratelimit-reset-after"))
    if value is not None:
        return value
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: a body nested absurdly deep
        return None
    return _seconds(payload.get("retry_after")) if isinstance(payload, dict) else None


def _seconds(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


# ----------------------------------------------------------------------------------- circuit breaker


@dataclass(frozen=True, slots=True)
class Circuit:
    """A sink's circuit: ``failures`` in a row; open (no sends) until ``open_until_ms`` when set."""

    failures: int = 0
    open_until_ms: int | None = None


def circuit_after(
    c: Circuit,
    *,
    ok: bool,
    now_ms: int,
    threshold: int = 5,
    cooldown_ms: int = 30_000,
    max_cooldown_ms: int = 600_000,
) -> Circuit:
    """The circuit after one attempt. A success closes it. The ``threshold``-th failure in a row opens it
    for ``cooldown_ms``; every further failure (the half-open try included) reopens it for twice as long,
    up to ``max_cooldown_ms``."""
    if ok:
        return Circuit()
    failures = c.failures + 1
    if failures < threshold:
        return Circuit(failures=failures)
    cooldown = min(max_cooldown_ms, cooldown_ms * 2 ** min(failures - threshold, 62))
    return Circuit(failures=failures, open_until_ms=now_ms + cooldown)


def circuit_allows(c: Circuit, now_ms: int) -> bool:
    """Whether a send may go out now: always while closed; once the cooldown has passed (half-open).

    Half-open means one try: the sink's single worker sends once and reports the outcome through
    ``circuit_after``, which closes the circuit or reopens it for longer.
    """
    return c.open_until_ms is None or now_ms >= c.open_until_ms
