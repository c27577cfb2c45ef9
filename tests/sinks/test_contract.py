"""The contract every sink keeps (Alertmanager-style shared conformance test), for every registered type.

1. The registry builds every configurable sink type, and each one starts, sends and closes (twice); every
   type's keys parse from TOML into its options.
2. Every HTTP sink classifies the receiver's answer the same way: 500, 429 + Retry-After, 410, 404, 3xx,
   timeout and connection refused each give the right ``DeliveryError`` fields.
3. No sink leaks a secret: a canary planted in the URL (path and query), the signing secret and a header
   value never appears in an exception message, a repr, a traceback (chained exceptions included) or a log
   line, whatever the receiver does — even when it echoes the URL back.
"""

from __future__ import annotations

import base64
import io
import logging
import sys
import traceback
from pathlib import Path

import pytest
import structlog

from tests.fakes import FakeClock
from tests.sinks.helpers import Receiver, closed_port, make_event
from watcher.config import SINK_COMMON_KEYS
from watcher.errors import DeliveryError, Reason
from watcher.secret import Secret
from watcher.sinks.registry import REGISTRY, build_sink, sink_config
from watcher.sinks.spec import BuildContext
from watcher.sinks.stdout import StdoutSink

SINK_TYPES = tuple(REGISTRY)

CANARY = "CANARY9f3c1d7e5b"
CANARY_SECRET = "whsec_" + base64.b64encode(f"{CANARY}-signing-key".encode()).decode()
CANARY_HEADER = f"Bearer {CANARY}-header"
HTTP_TYPES = tuple(name for name, spec in REGISTRY.items() if "url" in spec.keys)  # every type that POSTs


def canary_url(base: str) -> str:
    return f"{base}/hooks/{CANARY}/x?token={CANARY}-q"


def type_fields(sink_type: str, url: str, tmp_path: Path) -> dict:
    """The options of a working ``sink_type`` sink, each secret field (if it has one) holding the canary."""
    fields = {
        "webhook": dict(url=Secret(url), secrets=(Secret(CANARY_SECRET),),
                        headers={"Authorization": Secret(CANARY_HEADER)}),
        "file": dict(path=tmp_path / "events.jsonl"),
        "stdout": {},
        "exec": dict(command=(sys.executable, "-c", "import sys; sys.stdin.read()")),
        # Apprise's json:// posts to the same receiver (json://host/path is http://host/path)
        "apprise": dict(urls=(Secret("json" + url.removeprefix("http")),)),
    }
    return fields.get(sink_type, dict(url=Secret(url)))  # a chat sink


def sink_for(sink_type: str, base_url: str, tmp_path: Path, *, timeout: float = 5.0, **extra):
    """A sink of ``sink_type`` whose config carries the canary in every secret field it has."""
    fields = {**type_fields(sink_type, canary_url(base_url), tmp_path), **extra}
    cfg = sink_config(name=f"canary-{sink_type}", type=sink_type, timeout=timeout, **fields)
    if sink_type == "stdout":
        return StdoutSink(cfg, stream=io.StringIO())
    return REGISTRY[sink_type].build(cfg, BuildContext(clock=FakeClock()))


def assert_no_canary(*texts: object) -> None:
    for text in texts:
        assert CANARY not in str(text), f"secret leaked: {str(text)[:300]}"


def exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), getattr(exc, "message", ""),
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]


# ------------------------------------------------------------------------------------ 1. registry


def test_the_builtin_types_are_registered() -> None:
    assert SINK_TYPES[:8] == ("webhook", "slack", "discord", "teams", "google_chat", "file", "stdout", "exec")


@pytest.mark.parametrize("sink_type", SINK_TYPES)
def test_every_type_declares_a_sink_module(sink_type: str) -> None:
    """Keys, options with defaults for every field, a parser and a factory: what config.py and the daemon use."""
    spec = REGISTRY[sink_type]
    assert spec.name == sink_type
    assert not set(spec.keys) & set(SINK_COMMON_KEYS), "common keys are parsed by config.py"
    spec.options()  # every field has a default
    cfg = sink_config(name="s", type=sink_type)
    assert isinstance(cfg.options, spec.options)


def test_a_chat_platforms_message_code_is_in_its_own_module() -> None:
    """One sink = one module: render.py keeps the shared view; nothing in it is about one platform."""
    from watcher import render

    platform_names = [name for name in vars(render)
                      if any(p in name.lower() for p in ("slack", "discord", "teams", "google", "chat"))]
    assert platform_names == []
    for sink_type in ("slack", "discord", "teams", "google_chat"):
        module = __import__(f"watcher.sinks.{sink_type}", fromlist=["SINK"])
        assert module.SINK is REGISTRY[sink_type]
        for function in (f"{sink_type}_payload", f"{sink_type}_group_payload"):
            assert getattr(module, function).__module__ == module.__name__


def need_library(sink_type: str) -> None:
    """A type from an optional extra needs its package (skipped without it; a failure under CI)."""
    if sink_type == "apprise":
        from tests.sinks.apprise_helpers import need_apprise

        need_apprise()


@pytest.mark.parametrize("sink_type", SINK_TYPES)
async def test_every_sink_starts_sends_and_closes_twice(sink_type: str, receiver: Receiver, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    need_library(sink_type)
    fields = {k: v for k, v in type_fields(sink_type, receiver.url(), tmp_path).items() if k == "url"} \
        if sink_type == "webhook" else type_fields(sink_type, receiver.url(), tmp_path)
    sink = build_sink(sink_config(name="s", type=sink_type, **fields), user_agent="flora-watcher/test")
    assert sink.name == "s"
    await sink.start()
    result = await sink.send(make_event())
    if sink_type not in ("slack", "google_chat"):  # these pace at 1 message/s on the real clock
        await sink.send(make_event("run.completed"), body=None)  # the uniform keyword every sink accepts
    await sink.close()
    await sink.close()
    assert result is not None
    if sink_type in HTTP_TYPES:
        assert receiver.requests[0].headers["User-Agent"] == "flora-watcher/test"


# ------------------------------------------------------------------------------ 2. classification


async def _fail(sink, event=None) -> DeliveryError:
    try:
        with pytest.raises(DeliveryError) as err:
            await sink.send(event or make_event())
    finally:
        await sink.close()
    return err.value


@pytest.mark.parametrize("sink_type", HTTP_TYPES)
async def test_500_is_retryable_server_error(sink_type: str, receiver: Receiver, tmp_path: Path) -> None:
    receiver.answer(500, "internal error")
    err = await _fail(sink_for(sink_type, f"http://127.0.0.1:{receiver.port}", tmp_path))
    assert (err.retryable, err.reason, err.status, err.disable) == (True, Reason.SERVER_ERROR, 500, False)


@pytest.mark.parametrize("sink_type", HTTP_TYPES)
async def test_429_with_retry_after_reports_the_wait(sink_type: str, receiver: Receiver, tmp_path: Path) -> None:
    receiver.answer(429, "slow down", headers={"Retry-After": "2"})
    err = await _fail(sink_for(sink_type, f"http://127.0.0.1:{receiver.port}", tmp_path))
    assert (err.retryable, err.reason, err.retry_after, err.status) == (True, Reason.RATE_LIMITED, 2.0, 429)


@pytest.mark.parametrize("sink_type", HTTP_TYPES)
async def test_410_disables_the_sink(sink_type: str, receiver: Receiver, tmp_path: Path) -> None:
    receiver.answer(410, "channel_is_archived")
    err = await _fail(sink_for(sink_type, f"http://127.0.0.1:{receiver.port}", tmp_path))
    assert (err.disable, err.retryable, err.reason, err.status) == (True, False, Reason.GONE, 410)


@pytest.mark.parametrize("sink_type", HTTP_TYPES)
async def test_404_is_permanent(sink_type: str, receiver: Receiver, tmp_path: Path) -> None:
    receiver.answer(404, "no_such_hook")
    err = await _fail(sink_for(sink_type, f"http://127.0.0.1:{receiver.port}", tmp_path))
    assert (err.retryable, err.reason, err.status, err.disable) == (False, Reason.CLIENT_ERROR, 404, False)
    assert "no_such_hook" in err.message  # the receiver's word is shown


@pytest.mark.parametrize("sink_type", HTTP_TYPES)
async def test_redirect_is_permanent_and_not_followed(sink_type: str, receiver: Receiver, tmp_path: Path) -> None:
    receiver.answer(302, "", headers={"Location": receiver.url("/elsewhere")})
    err = await _fail(sink_for(sink_type, f"http://127.0.0.1:{receiver.port}", tmp_path))
    assert (err.retryable, err.status) == (False, 302)
    assert [r.path for r in receiver.requests] == [f"/hooks/{CANARY}/x"]


@pytest.mark.parametrize("sink_type", HTTP_TYPES)
async def test_timeout_is_retryable(sink_type: str, receiver: Receiver, tmp_path: Path) -> None:
    receiver.answer(200, "late", delay=2.0)
    err = await _fail(sink_for(sink_type, f"http://127.0.0.1:{receiver.port}", tmp_path, timeout=0.2))
    assert (err.retryable, err.reason, err.status) == (True, Reason.TIMEOUT, None)


@pytest.mark.parametrize("sink_type", HTTP_TYPES)
async def test_connection_refused_is_retryable(sink_type: str, tmp_path: Path) -> None:
    err = await _fail(sink_for(sink_type, f"http://127.0.0.1:{closed_port()}", tmp_path))
    assert (err.retryable, err.reason, err.status) == (True, Reason.NETWORK, None)
    assert "connection refused" in err.message


# -------------------------------------------------------------------------------- 3. no secret leaks


@pytest.mark.parametrize("sink_type", SINK_TYPES)
async def test_no_sink_leaks_its_secrets(sink_type: str, receiver: Receiver, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    need_library(sink_type)
    caplog.set_level(logging.DEBUG)
    base = f"http://127.0.0.1:{receiver.port}"
    echo = f"Cannot POST /hooks/{CANARY}/x?token={CANARY}-q ({CANARY_HEADER}) {CANARY_SECRET}"
    scenarios = [
        (base, None),  # delivered
        (base, (500, echo, {})),
        (base, (404, echo, {})),
        (base, (429, echo, {"Retry-After": "1"})),
        (base, (302, "", {"Location": canary_url(base)})),
        (f"http://127.0.0.1:{closed_port()}", None),  # refused
        (f"http://[::1{CANARY}", None),  # not even a valid URL
    ]
    outcomes: list[object] = []
    with structlog.testing.capture_logs() as logs:
        for url_base, answer in scenarios:
            if answer is not None:
                receiver.answer(answer[0], answer[1], headers=answer[2])
            sink = sink_for(sink_type, url_base, tmp_path, timeout=2.0)
            outcomes += [repr(sink), repr(sink.config), str(sink.config)]
            try:
                await sink.start()
                result = await sink.send(make_event())
                outcomes += [repr(result), result.detail]
            except DeliveryError as exc:
                outcomes += exception_texts(exc)
            finally:
                await sink.close()
            receiver.answers.clear()
    assert_no_canary(*outcomes, *(repr(entry) for entry in logs), caplog.text)
