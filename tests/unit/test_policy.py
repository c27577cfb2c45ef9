"""policy: per-run poll schedule, HTTP classifier, delivery verdicts, circuit breaker. No event loop."""

from __future__ import annotations

import email.utils
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.config import DeliveryConfig
from watcher.errors import DeliveryError, Reason
from watcher.policy import (
    Breaker,
    Verdict,
    body_snippet,
    breaker_after,
    breaker_mode,
    classify_http,
    decide_failure,
    full_jitter,
    parse_retry_after,
    poll_delay,
    probe_delay_ms,
)

NOW = 1_764_400_000_000
HOUR_MS = 3_600_000

# ------------------------------------------------------------------------------------------ poll_delay


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.0, 0.5),  # fast at first: half of `first` ...
        (0, 1.0, 1.0),  # ... up to `first`
        (0, 0.5, 0.75),
        (1, 0.0, 1.0),
        (3, 1.0, 8.0),  # doubling
        (6, 0.0, 30.0),  # 64 capped to 60: never below cap / 2
        (6, 1.0, 60.0),
        (10_000, 1.0, 60.0),  # huge attempts do not overflow
        (-5, 1.0, 1.0),  # negative attempts count as the first
        (0, float("nan"), 0.5),
        (0, 7.0, 1.0),  # out-of-range draws are clamped
    ],
)
def test_poll_delay_table(attempt, rand, expected):
    assert poll_delay(attempt, rand, first=1.0, cap=60.0) == pytest.approx(expected)


@pytest.mark.parametrize(("first", "cap"), [(0.0, 60.0), (-1.0, 60.0), (1.0, 0.0)])
def test_poll_delay_rejects_non_positive_bounds(first, cap):
    with pytest.raises(ValueError, match="positive"):
        poll_delay(0, 0.5, first=first, cap=cap)


@settings(max_examples=300, deadline=None)
@given(
    attempt=st.integers(-10, 500),
    rand=st.floats(0.0, 1.0),
    first=st.floats(0.001, 1e4),
    cap=st.floats(0.001, 1e5),
)
def test_poll_delay_is_positive_bounded_and_its_ceiling_never_falls(attempt, rand, first, cap):
    delay = poll_delay(attempt, rand, first=first, cap=cap)
    assert 0 < delay <= cap
    assert poll_delay(attempt, 1.0, first=first, cap=cap) <= poll_delay(
        attempt + 1, 1.0, first=first, cap=cap
    )
    assert poll_delay(attempt, 0.0, first=first, cap=cap) <= poll_delay(
        attempt + 1, 0.0, first=first, cap=cap
    )
    assert (
        poll_delay(attempt, 0.0, first=first, cap=cap)
        <= delay
        <= poll_delay(attempt, 1.0, first=first, cap=cap)
    )


def test_existing_helpers_unchanged():
    assert full_jitter(3, 0.5, base=1.0, cap=600.0) == 4.0
    assert parse_retry_after({"Retry-After": "7"}, NOW) == 7.0


# --------------------------------------------------------------------------------------- classify_http


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status):
    assert classify_http(status, {}, b"ok", NOW) is None


@pytest.mark.parametrize(
    ("status", "retryable", "reason", "disable"),
    [
        (500, True, Reason.SERVER_ERROR, False),
        (502, True, Reason.SERVER_ERROR, False),
        (503, True, Reason.SERVER_ERROR, False),
        (504, True, Reason.SERVER_ERROR, False),
        (599, True, Reason.SERVER_ERROR, False),
        (408, True, Reason.SERVER_ERROR, False),
        (425, True, Reason.SERVER_ERROR, False),
        (429, True, Reason.RATE_LIMITED, False),
        (410, False, Reason.GONE, True),
        (400, False, Reason.CLIENT_ERROR, False),
        (401, False, Reason.CLIENT_ERROR, False),
        (403, False, Reason.CLIENT_ERROR, False),
        (404, False, Reason.CLIENT_ERROR, False),
        (409, False, Reason.CLIENT_ERROR, False),
        (413, False, Reason.CLIENT_ERROR, False),
        (422, False, Reason.CLIENT_ERROR, False),
        (301, False, Reason.CLIENT_ERROR, False),
        (302, False, Reason.CLIENT_ERROR, False),
        (307, False, Reason.CLIENT_ERROR, False),
        (308, False, Reason.CLIENT_ERROR, False),
        (100, True, Reason.SERVER_ERROR, False),  # nonsense final statuses: a receiver fault, retried
        (600, True, Reason.SERVER_ERROR, False),
    ],
)
def test_status_families(status, retryable, reason, disable):
    err = classify_http(status, {}, b"", NOW)
    assert isinstance(err, DeliveryError)
    assert (err.retryable, err.reason, err.disable, err.status) == (retryable, reason, disable, status)
    assert err.message.startswith(f"HTTP {status} from receiver")


def test_redirects_say_they_are_not_followed():
    err = classify_http(302, {"Location": "https://elsewhere.example/hook"}, b"", NOW)
    assert err is not None and "not followed" in err.message
    assert "elsewhere" not in err.message


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (503, {"Retry-After": "120"}, b"", 120.0),
        (503, {"retry-after": "120"}, b"", 120.0),
        (429, {"Retry-After": email.utils.formatdate(NOW / 1000 + 30, usegmt=True)}, b"", 30.0),
        (429, {"Retry-After": email.utils.formatdate(NOW / 1000 - 30, usegmt=True)}, b"", 0.0),
        (429, {"retry-after-ms": "1500"}, b"", 1.5),
        (429, {"Retry-After-Ms": "1500", "Retry-After": "9"}, b"", 1.5),
        (429, {"Retry-After": "soon"}, b"", None),
        (429, {}, b"", None),
        # Discord: JSON body retry_after in seconds (float), or the X-RateLimit-Reset-After header
        (429, {}, json.dumps({"message": "You are being rate limited.", "retry_after": 0.64}).encode(), 0.64),
        (429, {"X-RateLimit-Reset-After": "2.5"}, b"", 2.5),
        (429, {"x-ratelimit-reset-after": "2.5"}, json.dumps({"retry_after": 9}).encode(), 2.5),
        (429, {"Retry-After": "3"}, json.dumps({"retry_after": 9}).encode(), 3.0),  # the standard header wins
        (429, {}, b"{not json", None),
        (429, {}, b'["retry_after", 3]', None),
        (429, {}, b'{"retry_after": "NaN"}', None),
        (429, {}, b'{"retry_after": true}', None),
        (429, {}, b'{"retry_after": -4}', 0.0),
        (503, {}, json.dumps({"retry_after": 9}).encode(), None),  # the Discord body counts only on 429
        (400, {"Retry-After": "5"}, b"", None),  # permanent errors carry no wait
    ],
)
def test_retry_after_sources(status, headers, body, expected):
    err = classify_http(status, headers, body, NOW)
    assert err is not None
    if expected is None:
        assert err.retry_after is None
    else:
        assert err.retry_after == pytest.approx(expected, abs=1e-3)


def test_message_is_short_one_line_and_free_of_urls():
    body = (
        b"<html><head><title>502 Bad Gateway</title></head>\r\n<body>upstream https://hooks.example.com/T0/"
        b"B0/XXXXsecretXXXX failed\x00\x1b[31m" + b"x" * 5000 + b"</body></html>"
    )
    err = classify_http(502, {}, body, NOW)
    assert err is not None
    assert err.message.startswith("HTTP 502 from receiver: 502 Bad Gateway upstream <url> failed")
    assert "hooks.example.com" not in err.message and "secret" not in err.message
    assert "\n" not in err.message and "\x1b" not in err.message and "<title>" not in err.message
    assert len(err.message) <= len("HTTP 502 from receiver: ") + 200


def test_message_without_body():
    err = classify_http(503, {}, b"   ", NOW)
    assert err is not None and err.message == "HTTP 503 from receiver"


def test_body_snippet_handles_invalid_utf8():
    assert body_snippet(b"bad \xff\xfe byte") == "bad \ufffd\ufffd byte"
    assert len(body_snippet("é".encode() * 500)) == 200


def _snippet_by_patterns(body: bytes, limit: int = 200) -> str:
    """body_snippet without its fast path for plain ASCII answers: every pattern applied."""
    from watcher.policy import _CONTROL, _TAG, _URL

    text = _URL.sub("<url>", _TAG.sub(" ", body[: limit * 8].decode("utf-8", errors="replace")))
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["ok", " ", "<b>", "</b>", "<secret>", "https://h/p?k=v", "://", "\t", "\n",
                                 "\x00", "\x7f", "\x85", "é", "{\"ok\":true}", "a" * 150]), max_size=12),
       st.sampled_from([5, 200]))
def test_body_snippet_plain_answers_read_as_the_patterns_would(parts, limit):
    """The fast path for a short printable-ASCII answer gives exactly what the tag/URL/control patterns give."""
    body = "".join(parts).encode()
    assert body_snippet(body, limit) == _snippet_by_patterns(body, limit)


# -------------------------------------------------------------------------------------- decide_failure

CFG = DeliveryConfig(retry_horizon=72 * 3600.0, backoff_initial=1.0, backoff_max=600.0)


def err(retryable=True, reason=Reason.SERVER_ERROR, **kw) -> DeliveryError:
    return DeliveryError("HTTP 503 from receiver", retryable=retryable, reason=reason, **kw)


def decide(e: DeliveryError, *, attempts=1, created_ms=NOW, now_ms=NOW, rand=0.5, cfg=CFG) -> Verdict:
    return decide_failure(e, attempts=attempts, created_ms=created_ms, now_ms=now_ms, rand=rand, cfg=cfg)


@pytest.mark.parametrize(
    ("attempts", "rand", "delay_ms"),
    [
        (1, 0.5, 500),  # full jitter below 1 s
        (1, 0.0, 0),
        (4, 0.5, 4_000),  # ceiling 8 s
        (11, 0.5, 300_000),  # ceiling 1024 s capped to backoff_max 600 s
        (500, 0.999, 599_400),
    ],
)
def test_retry_with_capped_exponential_full_jitter(attempts, rand, delay_ms):
    assert decide(err(), attempts=attempts, rand=rand) == Verdict("retry", NOW + delay_ms, "server_error")


def test_retry_after_is_honoured_even_above_backoff_max():
    assert decide(err(reason=Reason.RATE_LIMITED, retry_after=120.0)) == Verdict(
        "retry", NOW + 120_000, "rate_limited"
    )
    assert decide(err(retry_after=3600.0), attempts=30).next_attempt_ms == NOW + 3_600_000
    assert decide(err(retry_after=0.0), attempts=4).next_attempt_ms == NOW + 4_000  # backoff still applies
    assert decide(err(retry_after=0.0015)).next_attempt_ms == NOW + 500
    assert decide(err(retry_after=1.0001), rand=0.0).next_attempt_ms == NOW + 1001  # never earlier than asked
    assert decide(err(retry_after=float("nan"))).next_attempt_ms == NOW + 500


def test_horizon_turns_retries_into_dead_letters():
    horizon_ms = 72 * HOUR_MS
    created = NOW - horizon_ms + 10_000  # 10 s left
    assert decide(err(), created_ms=created, attempts=1) == Verdict("retry", NOW + 500, "server_error")
    assert decide(err(), created_ms=created, attempts=20) == Verdict("dead", None, "expired")
    assert decide(err(retry_after=11.0), created_ms=created) == Verdict("dead", None, "expired")
    assert decide(err(retry_after=10.0), created_ms=created) == Verdict("retry", NOW + 10_000, "server_error")
    assert decide(err(), created_ms=NOW - horizon_ms - 1) == Verdict("dead", None, "expired")
    short = DeliveryConfig(retry_horizon=60.0, backoff_initial=1.0, backoff_max=600.0)
    assert decide(err(retry_after=61.0), cfg=short) == Verdict("dead", None, "expired")


@pytest.mark.parametrize("reason", [Reason.CLIENT_ERROR, Reason.BAD_CONFIG, Reason.EXEC_FAILED])
def test_permanent_failures_are_dead_letters_at_once(reason):
    assert decide(err(retryable=False, reason=reason)) == Verdict("dead", None, str(reason))


def test_gone_disables_the_sink():
    e = classify_http(410, {}, b"", NOW)
    assert e is not None
    assert decide(e) == Verdict("disable", None, "gone")
    assert decide(err(retryable=True, disable=True, reason=Reason.GONE)).action == "disable"


@settings(max_examples=200, deadline=None)
@given(
    attempts=st.integers(1, 1000),
    rand=st.floats(0.0, 1.0),
    retry_after=st.none() | st.floats(0.0, 1e6),
    age_ms=st.integers(0, 80 * HOUR_MS),
)
def test_verdict_bounds(attempts, rand, retry_after, age_ms):
    v = decide(err(retry_after=retry_after), attempts=attempts, rand=rand, created_ms=NOW - age_ms)
    if v.action == "retry":
        assert v.next_attempt_ms is not None
        assert NOW <= v.next_attempt_ms <= NOW - age_ms + 72 * HOUR_MS
        if retry_after is not None:
            assert v.next_attempt_ms >= NOW + retry_after * 1000
        else:
            assert v.next_attempt_ms <= NOW + 600_000
    else:
        assert v == Verdict("dead", None, "expired")


# ------------------------------------------------------------------------------------- circuit breaker


def fail(b: Breaker, now_ms: int, **kw) -> Breaker:
    return breaker_after(b, ok=False, now_ms=now_ms, **kw)


def test_the_breaker_opens_only_after_a_streak_of_failures_lasting_a_second():
    b = Breaker()
    assert breaker_mode(b, NOW) == "send"
    for _ in range(20):  # a burst of failures within a moment: individual events failing, not yet "down"
        b = fail(b, NOW + 500)
    assert not b.open and breaker_mode(b, NOW + 500) == "send"
    b = fail(Breaker(), NOW)
    for i in range(1, 4):
        b = fail(b, NOW + i * 400)
    assert not b.open  # 4 failures over 1.2 s: not enough
    b = fail(b, NOW + 1_600)
    assert b.open and b.opened_ms == NOW + 1_600 and b.next_probe_ms == NOW + 2_600
    assert breaker_mode(b, NOW + 2_599) == "wait"
    assert breaker_mode(b, NOW + 2_600) == "probe"


def test_any_success_resets_the_streak():
    b = Breaker()
    for i in range(4):
        b = fail(b, NOW + i * 1_000)
    b = breaker_after(b, ok=True, now_ms=NOW + 4_000)
    assert b == Breaker()
    b = fail(b, NOW + 5_000)
    assert not b.open and b.failures == 1 and b.streak_start_ms == NOW + 5_000


def test_failed_probes_back_off_to_five_seconds_and_never_further():
    b = Breaker(failures=5, streak_start_ms=NOW, open=True, opened_ms=NOW, next_probe_ms=NOW + 1_000)
    gaps = []
    t = NOW + 1_000
    for _ in range(7):
        b = fail(b, t, probe=True)
        assert b.next_probe_ms is not None
        gaps.append(b.next_probe_ms - t)
        t = b.next_probe_ms
    assert gaps == [2_000, 4_000, 5_000, 5_000, 5_000, 5_000, 5_000]
    assert probe_delay_ms(10_000) == 5_000  # no overflow after a very long outage


def test_answers_to_requests_sent_before_the_pause_do_not_move_the_probe():
    b = Breaker(failures=5, streak_start_ms=NOW, open=True, opened_ms=NOW, next_probe_ms=NOW + 1_000)
    assert fail(b, NOW + 10) == b
    assert breaker_after(b, ok=None, now_ms=NOW + 10) == b  # a permanent 4xx says nothing about health


def test_a_receivers_retry_after_is_honoured_by_the_probe():
    b = Breaker(failures=5, streak_start_ms=NOW, open=True, opened_ms=NOW, next_probe_ms=NOW)
    b = fail(b, NOW, probe=True, retry_after=60)
    assert b.next_probe_ms == NOW + 60_000


def test_the_first_success_closes_an_open_breaker():
    b = Breaker(failures=9, streak_start_ms=NOW, open=True, opened_ms=NOW, probes=3, next_probe_ms=NOW + 5_000)
    assert breaker_after(b, ok=True, now_ms=NOW + 5_000, probe=True) == Breaker()
    assert breaker_mode(Breaker(), NOW) == "send"


def test_a_429_body_nested_absurdly_deep_is_still_a_retryable_rate_limit() -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    err = classify_http(429, {}, body, now_ms=0)
    assert err is not None and err.retryable and err.retry_after is None
