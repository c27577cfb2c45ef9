"""Issue 14, bugs 3 and 4: redaction masks secrets, never ordinary words, and what it masks stays visible."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import structlog

from tests.sinks.helpers import Receiver
from watcher import logs
from watcher.api import FloraClient
from watcher.cli import main
from watcher.errors import AuthError
from watcher.secret import Secret
from watcher.simulator import run_simulator

WRONG_KEY = "sk_live_WRONGkey0123456789abcdef"


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config(), logs._handler)
    yield
    logs.clear_secrets()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    structlog.configure(**saved[2])
    logs._handler = saved[3]


async def test_floras_real_401_body_is_logged_word_for_word_and_the_key_is_not() -> None:
    """Bug 3: "invalid_api_key: The API key is invalid…" lost the word "The" to the api_key pattern."""
    buf = io.StringIO()
    logs.configure(fmt="json", level="info", stream=buf)
    logs.register_secret(WRONG_KEY)
    async with run_simulator(api_key="sk_test_right_key_000") as running:
        client = FloraClient(running.base_url, Secret(WRONG_KEY), timeout=5, max_rps=50)
        try:
            with pytest.raises(AuthError) as caught:
                await client.get_run("run_x")
        finally:
            await client.close()
    logs.get_logger("watcher.daemon").error("api.auth_failed", error=str(caught.value))
    out = buf.getvalue()
    assert "invalid_api_key: The API key is invalid or has been revoked." in out
    assert WRONG_KEY not in out and "WRONGkey" not in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HTTP 401 invalid_api_key: The API key is invalid", "HTTP 401 invalid_api_key: The API key is invalid"),
        ("unauthorized: Missing token", "unauthorized: Missing token"),
        ("api_key: 9f8e7d6c5b4a", "api_key: <secret>"),
        ("password: correct-horse-battery-staple", "password: <secret>"),
        ("api_key=short", "api_key=<secret>"),
        ('"token": "abc"', '"token": "<secret>"'),
    ],
)
def test_prose_after_a_secret_key_name_is_masked_only_when_it_looks_like_a_secret(text, expected) -> None:
    assert logs.redact(text) == expected


def test_a_receivers_echo_of_the_sink_url_shows_a_visible_marker(tmp_path: Path, capsys) -> None:
    """Bug 4: a receiver echoing the URL's tokens printed "bad request for auth= sig=": the marker vanished."""
    import asyncio
    import threading

    auth, sig = "AUTHtoken0123456789", "SIGvalue0123456789"
    receiver = Receiver()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(receiver.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    try:
        receiver.answer(400, f"bad request for auth={auth} sig={sig}")
        cfg = tmp_path / "w.toml"
        cfg.write_text(f"""
[watch]
state_dir = "{tmp_path / 'state'}"
[[sinks]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{receiver.port}/in?auth={auth}&sig={sig}"
""")
        assert main(["test-sink", "hook", "-c", str(cfg)]) == 1
    finally:
        asyncio.run_coroutine_threadsafe(receiver.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "auth=<secret> sig=<secret>" in out
    assert auth not in out and sig not in out
