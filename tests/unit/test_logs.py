"""Logging set-up and secret redaction (CONTRACT §6): no secret reaches a log line, whatever path it takes."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import structlog
from structlog.testing import capture_logs

from watcher import logs
from watcher.secret import Secret

CANARY = "cAnArY-5ecret-91d7"


@pytest.fixture(autouse=True)
def restore_logging():
    """Put structlog, the root logger and the secret registry back as they were."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config(), logs._handler)
    yield
    logs.clear_secrets()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    structlog.configure(**saved[2])
    logs._handler = saved[3]


def configured(fmt: str = "json", level: str = "info") -> io.StringIO:
    buf = io.StringIO()
    logs.configure(fmt=fmt, level=level, stream=buf)
    return buf


def json_lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def _fail_with_a_secret_in_a_local() -> None:
    webhook_url = "https://example.com/hook/" + "LOCALS-must-not-show"  # noqa: F841 - a frame local
    raise RuntimeError("delivery failed for " + CANARY)


def _log_the_canary_every_way() -> None:
    log = logs.get_logger("watcher.test")
    log.info(f"sending to {CANARY}")
    log.info("delivery.failed", url=CANARY, attempt=2)
    log.info("nested", detail={"sink": {"urls": [f"https://x.example/{CANARY}"], CANARY: "as a key"}})
    log.info("tuple", pair=("a", CANARY), group={CANARY})
    log.info("object", err=ValueError(f"bad {CANARY}"))
    log.info("positional %s", CANARY)
    try:
        _fail_with_a_secret_in_a_local()
    except RuntimeError:
        log.exception("delivery.crashed")
    stdlib = logging.getLogger("aiohttp.client")
    stdlib.warning("request to %s failed", CANARY)
    stdlib.warning(f"in the message {CANARY}")
    try:
        _fail_with_a_secret_in_a_local()
    except RuntimeError:
        stdlib.exception("unhandled")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_registered_secret_never_reaches_the_output(fmt):
    buf = configured(fmt)
    logs.register_secret(CANARY)
    _log_the_canary_every_way()
    out = buf.getvalue()
    assert CANARY not in out
    assert out.count("<secret>") >= 12
    assert "delivery.crashed" in out and "unhandled" in out
    assert out.count("RuntimeError: delivery failed for <secret>") == 2


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tracebacks_have_no_frame_locals(fmt):
    buf = configured(fmt)
    try:
        _fail_with_a_secret_in_a_local()
    except RuntimeError:
        logs.get_logger("t").exception("boom")
        logging.getLogger("other").exception("boom2")
    out = buf.getvalue()
    assert out.count("Traceback (most recent call last)") == 2
    assert "_fail_with_a_secret_in_a_local" in out
    assert "LOCALS-must-not-show" not in out


def test_json_lines_carry_timestamp_level_logger_and_event():
    buf = configured("json")
    logs.get_logger("watcher.sweep").info("sweep.finished", runs=3)
    logging.getLogger("aiohttp.access").warning("from %s", "stdlib")
    first, second = json_lines(buf)
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert (first["level"], first["logger"], first["event"], first["runs"]) == (
        "info", "watcher.sweep", "sweep.finished", 3,
    )
    assert (second["level"], second["logger"], second["event"]) == ("warning", "aiohttp.access", "from stdlib")


def test_level_filters_both_structlog_and_stdlib():
    buf = configured("json", level="warning")
    logs.get_logger("a").info("dropped")
    logging.getLogger("b").info("dropped too")
    logs.get_logger("a").warning("kept")
    assert [line["event"] for line in json_lines(buf)] == ["kept"]


def test_configure_again_replaces_the_previous_setup():
    first = configured("json")
    second = configured("json")
    logs.get_logger("x").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_console_on_a_tty_and_json_otherwise(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    tty = _Tty()
    logs.configure("auto", stream=tty)
    logs.get_logger("x").info("hello", n=1)
    line = tty.getvalue()
    assert not line.startswith("{") and "hello" in line and "n=1" in line and "\x1b[" not in line
    plain = io.StringIO()
    logs.configure("auto", stream=plain)
    logs.get_logger("x").info("hello")
    assert json_lines(plain)[0]["event"] == "hello"


def test_default_stream_is_stderr_not_stdout(capsys):
    logs.configure("json")
    logs.get_logger("x").info("to.stderr")
    logging.getLogger("y").warning("also.stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "to.stderr" in captured.err and "also.stderr" in captured.err


def test_default_stream_follows_sys_stderr_when_it_is_replaced(monkeypatch):
    logs.configure("json")
    replacement = io.StringIO()
    monkeypatch.setattr(sys, "stderr", replacement)
    logs.get_logger("x").info("later")
    assert "later" in replacement.getvalue()


@pytest.mark.parametrize(("fmt", "level"), [("yaml", "info"), ("json", "loud")])
def test_bad_format_or_level_is_refused(fmt, level):
    with pytest.raises(ValueError):
        logs.configure(fmt, level)


def test_capture_logs_still_works_after_configure():
    configured("json")
    log = logs.get_logger("x")
    with capture_logs() as captured:
        log.info("captured.event", k=1)
    assert captured == [{"event": "captured.event", "k": 1, "log_level": "info"}]


# ------------------------------------------------------------------------------------------- redact()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abcdef0123456789xyz", "Authorization: Bearer <secret>"),
        ("sent Bearer abcdef0123456789xyz=", "sent Bearer <secret>"),
        ("key sk_live_4f9aB2cD8e is revoked", "key sk_live_<secret> is revoked"),
        ("key sk_test_4f9aB2cD8e", "key sk_test_<secret>"),
        ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw==", "secret whsec_<secret>"),
        ("POST https://hooks.slack.com/services/T000/B000/XXXX failed",
         "POST https://hooks.slack.com/services/<secret> failed"),
        ("POST https://discord.com/api/webhooks/1234/tok-en_x: 429",
         "POST https://discord.com/api/webhooks/<secret> 429"),
        ("https://discordapp.com/api/v10/webhooks/1/abc", "https://discordapp.com/api/v10/webhooks/<secret>"),
        ("https://chat.googleapis.com/v1/spaces/AAA/messages?key=KEYVALUE&token=TOKVALUE&threadKey=r",
         "https://chat.googleapis.com/v1/spaces/AAA/messages?key=<secret>&token=<secret>&threadKey=r"),
        ("https://x.logic.azure.com/workflows/1/triggers/manual/paths/invoke?api-version=1&sig=SIGVALUE",
         "https://x.logic.azure.com/workflows/1/triggers/manual/paths/invoke?api-version=1&sig=<secret>"),
        ("https://o.webhook.office.com/webhookb2/abc@def/IncomingWebhook/x/y",
         "https://o.webhook.office.com/webhookb2/<secret>"),
        ('{"api_key": "k-123", "password": "hunter2"}', '{"api_key": "<secret>", "password": "<secret>"}'),
        ("client_secret=abc123 token=zzz", "client_secret=<secret> token=<secret>"),
        ("{'X-Api-Key': 'abc'}", "{'X-Api-Key': '<secret>'}"),
        # not secrets: left alone
        ("tokens=3 run_abc123 completed", "tokens=3 run_abc123 completed"),
        ("api_key_source=api_key_file", "api_key_source=api_key_file"),
        ("GET https://app.flora.ai/api/v1/technique-runs?limit=100", "GET https://app.flora.ai/api/v1/technique-runs?limit=100"),
        ("already <secret>", "already <secret>"),
    ],
)
def test_redact_patterns(text, expected):
    assert logs.redact(text) == expected
    assert logs.redact(expected) == expected  # idempotent


def test_registered_secrets_and_their_url_encoded_forms_are_redacted():
    url = "https://hooks.example.com/in/abc?sig=1"
    logs.register_secret(url)
    logs.register_secret("plainsecret-42")
    assert logs.redact(f"POST {url} -> 500") == "POST <secret> -> 500"
    assert logs.redact("u=https%3A%2F%2Fhooks.example.com%2Fin%2Fabc%3Fsig%3D1") == "u=<secret>"
    assert logs.redact("x plainsecret-42 y plainsecret-42") == "x <secret> y <secret>"


def test_short_values_are_not_registered():
    logs.register_secret("abc")
    logs.register_secret("")
    assert logs.redact("abc abcdef") == "abc abcdef"


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("api_key", True), ("Authorization", True), ("webhook_secret", True), ("X-Api-Key", True),
        ("access_token", True), ("password", True), ("secrets", True),
        ("api_key_source", False), ("tokens", False), ("run_id", False), ("secret_count", False),
    ],
)
def test_sensitive_key_names(key, sensitive):
    assert logs.is_sensitive_key(key) is sensitive


def test_values_under_sensitive_keys_are_masked_at_any_depth():
    buf = configured("json")
    logs.get_logger("x").info(
        "request",
        api_key="plain-value-1",
        headers={"Authorization": "Token opaque-2", "Accept": "application/json"},
        sinks=[{"webhook_secret": "opaque-3", "name": "ops"}],
        secret=Secret("opaque-4"),
        api_key_source="api_key_file",
        token=None,
    )
    (line,) = json_lines(buf)
    for value in ("plain-value-1", "opaque-2", "opaque-3", "opaque-4"):
        assert value not in json.dumps(line)
    assert line["headers"]["Accept"] == "application/json"
    assert line["sinks"][0]["name"] == "ops"
    assert line["api_key_source"] == "api_key_file"
    assert line["token"] is None


def test_a_fencing_token_is_shown_and_a_token_string_still_masked():
    """``sweeper.lease_acquired token=7``: the lease's fencing token is a number an operator needs to follow a
    failover (issue 24); a credential is text, and text under a token key stays masked whatever it looks like."""
    buf = configured("json")
    log = logs.get_logger("x")
    log.info("sweeper.lease_acquired", scope="https://app.flora.ai/api/v1|ws=*", token=7)
    log.warning("sweeper.lease_lost", fencing_token=8, lease={"token": 9})
    log.info("request", token="7", access_token="opaque-5", password=12345678, api_key=424242, flag=True)
    acquired, lost, request = json_lines(buf)
    assert acquired["token"] == 7
    assert lost["fencing_token"] == 8 and lost["lease"] == {"token": 9}
    assert request["token"] == logs.REDACTED and request["access_token"] == logs.REDACTED
    assert request["password"] == logs.REDACTED and request["api_key"] == logs.REDACTED  # numbers, but not tokens
    assert "opaque-5" not in buf.getvalue()


@pytest.mark.parametrize("text", ["a_" * 20000, "a-" * 20000, "x=" * 20000, "Bearer " * 20000])
def test_redaction_is_linear_on_hostile_input(text):
    import time

    started = time.process_time()  # CPU time: another busy process cannot fail this
    logs.redact(text)
    assert time.process_time() - started < 0.5
