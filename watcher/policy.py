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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from watcher.errors import DeliveryError, Reason

if TYPE_CHECKING:  # only for annotations: keeps this pure module free of config's file-reading shell
    from watcher.settings import DeliveryConfig


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


def retry_delay(attempt: int, rand: float, *, first: float, cap: float) -> float:
    """Seconds before trying again something that failed ``attempt + 1`` times in a row: restarting a crashed
    task, reaching a state store that is away. The same curve as ``poll_delay`` (doubling from ``first`` up to
    ``cap``, equal jitter: never 0, so a task that dies at once cannot spin). Always in (0, cap]."""
    return poll_delay(attempt, rand, first=first, cap=cap)


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
    if text.isascii() and text.isprintable() and "<" not in text and "://" not in text:
        text = " ".join(text.split())  # the usual short "ok" / JSON answer: nothing for the patterns to remove
        return text if len(text) <= limit else text[: limit - 1] + "…"
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

BREAKER_THRESHOLD = 5  # failed attempts in a row, with no success between them, ...
BREAKER_OPEN_AFTER_MS = 1_000  # ... spread over at least this long, open the breaker
PROBE_FIRST_MS = 1_000  # while open: the first probe this long after opening, doubling ...
PROBE_MAX_MS = 5_000  # ... up to this; never longer apart (unless the receiver's Retry-After asks for more)


@dataclass(frozen=True, slots=True)
class Breaker:
    """A sink's circuit breaker.

    Closed (``open`` False): every due delivery may be sent; ``failures`` counts failed attempts in a row
    since the last success, the first of them at ``streak_start_ms``. Open: the receiver is unreachable or
    refuses everything; nothing is sent but one probe at a time, the next at ``next_probe_ms``
    (``probes`` failed probes so far).
    """

    failures: int = 0
    streak_start_ms: int | None = None
    open: bool = False
    opened_ms: int | None = None
    probes: int = 0
    next_probe_ms: int | None = None


def probe_delay_ms(probes: int, *, first_ms: int = PROBE_FIRST_MS, max_ms: int = PROBE_MAX_MS) -> int:
    """Wait before the next probe after ``probes`` failed ones: ``first_ms`` doubling up to ``max_ms``."""
    return min(max_ms, first_ms * 2 ** min(max(probes, 0), 30))


def breaker_after(
    b: Breaker,
    *,
    ok: bool | None,
    now_ms: int,
    probe: bool = False,
    retry_after: float | None = None,
    threshold: int = BREAKER_THRESHOLD,
    open_after_ms: int = BREAKER_OPEN_AFTER_MS,
) -> Breaker:
    """The breaker after one attempt's outcome.

    ``ok`` True: the receiver accepted an event, so it is up: the breaker closes (the caller, seeing it was
    open, makes every pending delivery due at once). ``ok`` None: an answer that says nothing about the
    receiver's health (a permanent 4xx for one event): no change. ``ok`` False: a retryable failure
    (unreachable, timeout, 5xx, 408/425/429). While closed it extends the streak; the breaker opens once
    the streak holds ``threshold`` failures and has lasted ``open_after_ms`` with no success at all — so a
    receiver that accepts some events and fails others stays closed and each event follows its own backoff.
    While open, only a failed ``probe`` moves the next probe further away (1 s, 2 s, 4 s, then every 5 s);
    answers to requests sent before it opened change nothing. A receiver's ``retry_after`` is honoured: no
    probe before it.
    """
    if ok is None:
        return b
    if ok:
        return Breaker()
    wait_ms = 0 if retry_after is None or not math.isfinite(retry_after) else math.ceil(retry_after * 1000)
    if b.open:
        if not probe:
            return b
        probes = b.probes + 1
        return replace(b, probes=probes, next_probe_ms=now_ms + max(probe_delay_ms(probes), wait_ms))
    failures = b.failures + 1
    start = b.streak_start_ms if b.streak_start_ms is not None else now_ms
    if failures >= threshold and now_ms - start >= open_after_ms:
        return Breaker(failures=failures, streak_start_ms=start, open=True, opened_ms=now_ms, probes=0,
                       next_probe_ms=now_ms + max(probe_delay_ms(0), wait_ms))
    return Breaker(failures=failures, streak_start_ms=start)


def breaker_mode(b: Breaker, now_ms: int) -> Literal["send", "probe", "wait"]:
    """``send``: closed, send what is due. ``probe``: open and a probe is due (send one delivery, alone).
    ``wait``: open, nothing to send before ``next_probe_ms``."""
    if not b.open:
        return "send"
    return "probe" if b.next_probe_ms is None or now_ms >= b.next_probe_ms else "wait"


# ------------------------------------------------------------------------------------------ grouping


def group_key(event_type: str, data: Mapping[str, object], group_by: tuple[str, ...]) -> tuple[object, ...]:
    """What makes events one chat message (``group_by``: ``type``, ``error_code``, ``project_id``,
    ``technique_id``): their values of those fields. Events with equal keys go together."""
    values: list[object] = []
    for name in group_by:
        if name == "type":
            values.append(event_type)
        elif name == "technique_id":
            technique = data.get("technique")
            values.append(technique.get("technique_id") if isinstance(technique, Mapping) else None)
        else:
            value = data.get(name)
            values.append(value if isinstance(value, str | int | float | bool) or value is None else repr(value))
    return tuple(values)


def group_ready_ms(created_ms: list[int], group_wait_ms: int) -> int:
    """When a group is sent: ``group_wait`` after its first event was queued (a retried group at once)."""
    return min(created_ms) + group_wait_ms
