"""The apprise sink: its keys, target names and secret parts, its messages (pure), and sends to real local
receivers — Apprise's ``json://`` to a loopback HTTP receiver (the exact payload), ``mailto://`` to a local SMTP
server (the mail's subject and body), a failure, a receiver that hangs."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.fakes import FakeClock, until
from tests.sinks.apprise_helpers import SmtpServer, need_apprise
from tests.sinks.helpers import HOSTILE_TECHNIQUE, Receiver, hostile_event, make_event
from watcher.config import parse
from watcher.errors import ConfigError, DeliveryError, Reason
from watcher.secret import Secret
from watcher.sinks import apprise as ap
from watcher.sinks.registry import REGISTRY, build_sink, sink_config
from watcher.sinks.spec import delivery_targets, sink_secrets

TOKEN = "123456789:AAHsecretTOKENvalue0123456789abcdefg"
PASSWORD = "pa55-Secret-word"


def load(text: str, tmp_path: Path, files: dict[str, str] | None = None):
    def read_file(path: str) -> str:
        name = Path(path).name
        if files is None or name not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return files[name]

    return parse(textwrap.dedent(text), env={"FLORA_API_KEY": "sk_test", "HOME": str(tmp_path)},
                 read_file=read_file, sink_types=REGISTRY, source=tmp_path / "flora-watcher.toml")


def apprise_sink(*urls: str, name: str = "alerts", **fields):
    return sink_config(name, "apprise", urls=tuple(Secret(u) for u in urls), **fields)


def build(cfg):
    """The sink on a test clock: Apprise's pacing of a service (5.5 s between two emails) costs no time."""
    return build_sink(cfg, clock=FakeClock())


# ------------------------------------------------------------------------------------------ keys


def test_urls_parse_with_their_keys_and_secret_parts(tmp_path: Path) -> None:
    cfg = load(f"""
        [[sinks]]
        name = "alerts"
        type = "apprise"
        urls = ["mailtos://ops:{PASSWORD}@smtp.example.com:587?to=oncall@example.com", "tgram://{TOKEN}/-100123"]
        title_template = "{{marker}} {{technique}}"
        group_wait = 5
        group_by = ["type"]
    """, tmp_path)
    (sink,) = cfg.sinks
    options = sink.options
    assert [u.reveal().split("://")[0] for u in options.urls] == ["mailtos", "tgram"]
    assert options.where == ("sinks[0].urls[0]", "sinks[0].urls[1]")
    assert (options.title_template, options.group_wait, options.group_by) == ("{marker} {technique}", 5.0, ("type",))
    secrets = {s.reveal() for s in sink_secrets(sink)}
    assert {PASSWORD, TOKEN, TOKEN.split(":")[1]} <= secrets  # registered for redaction, scrubbed from errors
    assert not secrets & {"smtp.example.com", "mailtos", "tgram"}  # a public host or a scheme is not a secret
    assert PASSWORD in " ".join(cfg.secret_values()) and TOKEN in " ".join(cfg.secret_values())


def test_urls_file_holds_one_url_a_line_with_comments(tmp_path: Path) -> None:
    cfg = load("""
        [[sinks]]
        name = "alerts"
        type = "apprise"
        urls_file = "apprise-urls"
    """, tmp_path, files={"apprise-urls": f"# on-call\n\ntgram://{TOKEN}/1\n  ntfys://ntfy.sh/flora-a1b2c3d4  \n"})
    options = cfg.sinks[0].options
    assert [u.reveal() for u in options.urls] == [f"tgram://{TOKEN}/1", "ntfys://ntfy.sh/flora-a1b2c3d4"]
    assert options.where == ("sinks[0].urls_file line 3", "sinks[0].urls_file line 4")


@pytest.mark.parametrize(("keys", "files", "message"), [
    ("", None, "sinks[0].urls: required (or urls_file): one or more Apprise URLs"),
    ('urls = ["tgram://x/1"]\nurls_file = "f"', None, "sinks[0].urls: set either urls or urls_file, not both"),
    ('urls = ["mailto://a:b@c", "example.com/hook"]', None,
     "sinks[0].urls[1]: not an Apprise URL (scheme://…, e.g. mailtos://… or tgram://…)"),
    ('urls = []', None, "sinks[0].urls: must not be an empty array (leave the key out instead)"),
    (f'urls = ["json://hooks.example.com/{TOKEN}"]', None,
     "sinks[0].urls[0]: json:// sends in clear text; use jsons:// (json:// only for loopback hosts)"),
    ('urls_file = "f"', {"f": "# nothing here\n"}, "holds no Apprise URL (one per line; # starts a comment)"),
    ('urls_file = "missing"', None, "sinks[0].urls_file: cannot read"),
    ('urls = ["tgram://x/1"]\ntitle_template = "{tecnique}"', None,
     "sinks[0].title_template: unknown field {tecnique} (did you mean {technique}?)"),
    ('urls = ["tgram://x/1"]\ntemplate = "{run_id}"', None, "sinks[0].template: does not apply to a apprise sink"),
])
def test_key_errors_name_the_key_and_show_no_url(tmp_path: Path, keys: str, files, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(f'[[sinks]]\nname = "alerts"\ntype = "apprise"\n{keys}\n', tmp_path, files)
    assert message in str(err.value)
    assert TOKEN not in str(err.value) and "hooks.example.com" not in str(err.value)


def test_check_asks_apprise_about_every_url_and_shows_only_the_scheme(tmp_path: Path) -> None:
    need_apprise()
    cfg = apprise_sink(f"tgram://{TOKEN}/1", f"tgrm://{TOKEN}/1", "tgram://", "mailtos://a:b@smtp.example.com",
                       where="sinks[0]")
    errors = [str(e) for e in ap.check(cfg)]
    assert errors == [
        "sinks[0].urls[1]: unknown Apprise scheme 'tgrm://'; see Apprise's list of services",
        "sinks[0].urls[2]: Apprise does not accept this tgram:// URL (a token, user or target missing or malformed)",
    ]


def test_without_the_extra_check_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ap, "_import_apprise", lambda: None)
    cfg = apprise_sink(f"tgram://{TOKEN}/1", where="sinks[3]")
    assert [str(e) for e in ap.check(cfg)] == [
        "sinks[3].type: the apprise sink needs the optional extra: pip install 'flora-watcher[apprise]'"]
    with pytest.raises(ConfigError, match=r"pip install 'flora-watcher\[apprise\]'"):
        build_sink(cfg)


def test_check_config_without_the_extra_says_how_to_install_it_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from watcher.cli import main

    config = tmp_path / "flora-watcher.toml"
    config.write_text(f'[api]\napi_key = "sk_test_x"\n[watch]\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[[sinks]]\nname = "oncall"\ntype = "apprise"\nurls = ["tgram://{TOKEN}/1"]\n')
    monkeypatch.setattr(ap, "_import_apprise", lambda: None)
    assert main(["check-config", "-c", str(config)]) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "apprise" in line]
    assert lines == ["flora-watcher: config error: sinks[0].type: the apprise sink needs the optional extra: "
                     "pip install 'flora-watcher[apprise]'"], err
    assert TOKEN not in out + err


# ------------------------------------------------------------------------------------------- targets


def test_each_url_is_its_own_delivery_target_named_by_its_scheme() -> None:
    webhook = sink_config("ops", "webhook", url=Secret("https://hooks.example.com/x"))
    alerts = apprise_sink(f"mailtos://ops:{PASSWORD}@smtp.example.com", f"tgram://{TOKEN}/1",
                          f"tgram://{TOKEN}/2", events=("run.failed",), timeout=3.0)
    targets = delivery_targets([webhook, alerts])
    assert [t.name for t in targets] == ["ops", "alerts:mailtos", "alerts:tgram", "alerts:tgram#2"]
    assert targets[0] is webhook
    for target, url in zip(targets[1:], alerts.options.urls, strict=True):
        assert target.options.urls == (url,)
        assert (target.type, target.events, target.timeout, target.options.parent) == (
            "apprise", ("run.failed",), 3.0, "alerts")
        assert delivery_targets([target]) == (target,)  # a target is its own only target
        assert TOKEN not in target.name and PASSWORD not in target.name
    assert targets[3].options.where == ("sinks['alerts'].urls[2]",)


def test_target_names_survive_a_url_of_another_scheme_added_anywhere() -> None:
    assert ap.target_names("a", ["tgram", "mailtos"]) == ("a:tgram", "a:mailtos")
    assert ap.target_names("a", ["ntfys", "tgram", "mailtos", "tgram"]) == (
        "a:ntfys", "a:tgram", "a:mailtos", "a:tgram#2")


@pytest.mark.parametrize(("url", "secret", "not_secret"), [
    (f"tgram://{TOKEN}/-100123", TOKEN, "tgram"),
    (f"mailtos://ops:{PASSWORD}@smtp.example.com?to=a@example.com", PASSWORD, "smtp.example.com"),
    ("pagerduty://RKEY0123456789abcd@IKEY9876543210xyz", "IKEY9876543210xyz", "pagerduty"),
    ("ntfys://ntfy.sh/flora-alerts-7f3a9c21", "flora-alerts-7f3a9c21", "ntfy.sh"),
    ("pover://USERkey0123456789@APPtoken0123456789", "APPtoken0123456789", "pover"),
    ("jsons://hooks.example.com/x?token=tok_0123456789", "tok_0123456789", "hooks.example.com"),
])
def test_secret_parts_hold_what_a_log_could_leak(url: str, secret: str, not_secret: str) -> None:
    parts = ap.secret_parts(url)
    assert secret in parts
    assert url.split("://", 1)[1] in parts
    assert not_secret not in parts
    assert ap.shown(url) == url.split("://")[0] + "://…"


# ------------------------------------------------------------------------------------------- messages


def test_notify_type_follows_the_event_type() -> None:
    assert [ap.notify_type(t) for t in ("run.failed", "run.completed", "run.stalled", "run.started")] == [
        "failure", "success", "warning", "info"]
    assert ap.group_notify_type(["run.completed", "run.failed", "run.stalled"]) == "failure"
    assert ap.group_notify_type(["run.completed", "run.stalled"]) == "warning"


def test_a_failed_run_as_plain_text() -> None:
    msg = ap.message(make_event(), markdown=False)
    assert (msg.title, msg.notify_type, msg.body_format) == (
        "❌ Run failed: CCTV Cam (GPU_PROVIDER_ERROR)", "failure", "text")
    assert msg.body == (
        "Technique: CCTV Cam\n"
        "Run: run_abc123\n"
        "Error code: GPU_PROVIDER_ERROR\n"
        "Error message: The provider failed to complete the generation.\n"
        "Duration: 9.0s · Cost: $0.05\n"
        "Project: prj_abc123\n"
        "\n"
        "Outputs:\n"
        "- output_1 (imageUrl): https://media.flora.ai/output.png\n"
        "\n"
        f"flora-watcher · {make_event().id}"
    )


def test_a_completed_run_as_markdown_and_a_title_template() -> None:
    event = make_event("run.completed", late=True)
    msg = ap.message(event, markdown=True, title_template="{marker} {technique} done in {duration}")
    assert (msg.title, msg.notify_type, msg.body_format) == ("✅ CCTV Cam done in 9.0s", "success", "markdown")
    assert msg.body.split("  \n") == [
        "**Technique:** CCTV Cam", "**Run:** `run_abc123`", "**Duration:** 9.0s · **Cost:** $0.05",
        "**Project:** `prj_abc123`", "", "**Outputs:**",
        "- [output\\_1 \\(imageUrl\\)](https://media.flora.ai/output.png)", "",
        "Late: it happened while the watcher was stopped.", f"flora-watcher · `{event.id}`"]


def test_api_text_cannot_format_link_or_ping_in_markdown() -> None:
    msg = ap.message(hostile_event(), markdown=True)
    technique = msg.body.splitlines()[0].removeprefix("**Technique:** ").rstrip()
    assert technique == ap.md_escape(HOSTILE_TECHNIQUE)
    for text in (technique, msg.title):
        unescaped = [c for i, c in enumerate(text) if c in "*_~`[]<>#" and (i == 0 or text[i - 1] != "\\")]
        assert unescaped == [], text
        assert "@everyone" not in text and "@here" not in text
    assert "\n" not in msg.title
    assert len(msg.body) < 2_000  # the 10,000-character error message is cut


def test_a_burst_is_one_message_naming_its_runs_then_and_n_more() -> None:
    events = [make_event(run_id=f"run_{i:03d}", error_code="INSUFFICIENT_CREDITS") for i in range(40)]
    msg = ap.group_message(events, markdown=False)
    assert (msg.title, msg.notify_type) == ("❌ 40 runs failed: INSUFFICIENT_CREDITS", "failure")
    lines = msg.body.splitlines()
    assert lines[0] == "- CCTV Cam · run_000 · 9.0s · https://media.flora.ai/output.png"
    assert len([line for line in lines if line.startswith("- ")]) == ap.GROUP_LINES_MAX
    assert lines[-1] == ("… and 15 more: flora-watcher events --type run.failed --error-code INSUFFICIENT_CREDITS"
                         " --project prj_abc123")
    md = ap.group_message(events[:3], markdown=True)
    assert md.title == "❌ 3 runs failed: INSUFFICIENT\\_CREDITS"
    assert md.body.splitlines()[0] == "- CCTV Cam · `run_000` · 9.0s · [output](https://media.flora.ai/output.png)"


# ----------------------------------------------------------------------------------- real receivers


async def test_json_receiver_gets_the_exact_payload(receiver: Receiver) -> None:
    need_apprise()
    sink = build(apprise_sink(f"json://127.0.0.1:{receiver.port}/hooks/{TOKEN.split(':')[1]}"))
    await sink.start()
    try:
        result = await sink.send(make_event())
    finally:
        await sink.close()
    assert result.detail == "sent to json://…"
    (request,) = receiver.requests
    assert (request.method, request.path) == ("POST", f"/hooks/{TOKEN.split(':')[1]}")
    assert request.headers["Content-Type"] == "application/json"
    md = ap.message(make_event(), markdown=True)  # json:// takes markdown as it is
    assert json.loads(request.body) == {"version": "1.0", "title": md.title, "message": md.body,
                                        "attachments": [], "type": "failure"}


async def test_format_text_in_the_url_gets_plain_text(receiver: Receiver) -> None:
    need_apprise()
    sink = build(apprise_sink(f"json://127.0.0.1:{receiver.port}/hook?format=text"))
    await sink.send(make_event("run.stalled", stalled_for=1_860_000))
    payload = json.loads(receiver.requests[0].body)
    assert payload["type"] == "warning"
    assert payload["title"] == "⏳ Run stalled: CCTV Cam"
    assert payload["message"] == ap.message(make_event("run.stalled", stalled_for=1_860_000), markdown=False).body


async def test_mailto_delivers_a_mail_with_the_subject_and_body() -> None:
    need_apprise()
    smtp = SmtpServer()
    await smtp.start()
    try:
        sink = build(apprise_sink(smtp.url(userinfo=f"ops:{PASSWORD}"), timeout=10.0))
        await sink.send(make_event())
        await sink.send_group([make_event(run_id="run_1"), make_event(run_id="run_2")])
    finally:
        await smtp.stop()
    first, grouped = smtp.mails
    assert (first.mail_from, first.rcpt_tos) == ("flora@example.com", ["ops@example.com"])
    assert first.subject == "❌ Run failed: CCTV Cam (GPU_PROVIDER_ERROR)"
    assert first.text.replace("\r\n", "\n").strip() == ap.message(make_event(), markdown=False).body
    assert grouped.subject == "❌ 2 runs failed: GPU_PROVIDER_ERROR"
    assert "run_1" in grouped.text and "run_2" in grouped.text


async def test_a_failure_is_retryable_with_apprises_words_and_no_secret(receiver: Receiver) -> None:
    need_apprise()
    receiver.answer(500, f"boom {TOKEN}")
    sink = build(apprise_sink(f"json://127.0.0.1:{receiver.port}/{TOKEN}"))
    with pytest.raises(DeliveryError) as err:
        await sink.send(make_event())
    assert (err.value.retryable, err.value.reason) == (True, Reason.SERVICE_FAILED)
    assert err.value.message.startswith("json://…: Apprise reports a failure: Failed to send JSON")
    assert "error=500" in err.value.message
    assert TOKEN.split(":")[1] not in repr(err.value) and "127.0.0.1" not in err.value.message


async def test_a_url_apprise_refuses_fails_the_send_permanently() -> None:
    need_apprise()
    sink = build(apprise_sink("tgram://"))
    with pytest.raises(DeliveryError) as err:
        await sink.send(make_event())
    assert (err.value.retryable, err.value.reason) == (False, Reason.BAD_CONFIG)


def _apprise_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"apprise {name}"]


async def test_a_hanging_receiver_is_a_timeout_and_holds_one_thread_not_the_loop() -> None:
    """The send times out at the sink's timeout while the loop stays free; the next send to that URL waits for
    the hung one instead of starting a second thread; Apprise's own socket timeout (set to the sink's) ends it."""
    need_apprise()
    smtp = SmtpServer(hang=True)
    await smtp.start()
    try:
        sink = build(apprise_sink(smtp.url(), name="slow", timeout=0.5))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        pools_before = len([t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")])
        beat = asyncio.create_task(ticker())
        try:
            with pytest.raises(DeliveryError) as err:
                await sink.send(make_event())
            assert (err.value.retryable, err.value.reason) == (True, Reason.TIMEOUT)
            assert err.value.message == "mailto://…: no answer within 0.5s (the service may still have it)"
            assert ticks >= 2  # the loop ran while the send waited (a blocked loop would tick once, after it)
            await until(lambda: smtp.connections == 1, "the send to reach the hung server")
            assert len(_apprise_threads("slow")) == 1
            # The send is in that thread, not in Apprise's process-wide pool, where hung sends would queue others.
            assert len([t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")]) <= pools_before
            with pytest.raises(DeliveryError):  # waits for the hung send (or times out): never a second thread
                await sink.send(make_event())
            assert len(_apprise_threads("slow")) <= 1
        finally:
            beat.cancel()
        deadline = time.monotonic() + 30
        while _apprise_threads("slow") and time.monotonic() < deadline:  # Apprise's socket timeout: 0.5 s
            await asyncio.sleep(0.05)
        assert _apprise_threads("slow") == []
    finally:
        await smtp.stop()


async def test_several_urls_in_one_sink_fail_together_naming_schemes_only(receiver: Receiver) -> None:
    """What ``test-sink`` on a whole sink does (the daemon sends to each URL as its own target)."""
    need_apprise()
    receiver.answer(200)
    receiver.answer(500)
    sink = build(apprise_sink(f"json://127.0.0.1:{receiver.port}/a/{TOKEN}",
                                   f"json://127.0.0.1:{receiver.port}/b/{TOKEN}"))
    with pytest.raises(DeliveryError) as err:
        await sink.send(make_event())
    assert err.value.message.count("json://…") == 1 and TOKEN not in err.value.message
    assert len(receiver.requests) == 2


def test_test_sink_tries_every_url_of_a_sink_or_one_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`flora-watcher test-sink oncall` sends to each URL as its own target, as the daemon delivers; one failing
    URL makes it exit 1, naming that target; `test-sink oncall:json#2` tries that one alone."""
    need_apprise()
    from tests.sinks.helpers import ThreadedReceiver
    from watcher.cli import main

    with ThreadedReceiver() as ok, ThreadedReceiver() as failing:
        failing.default.status = 500
        config = tmp_path / "flora-watcher.toml"
        config.write_text(f'[api]\napi_key = "sk_test_x"\n[watch]\nstate_dir = "{tmp_path / "state"}"\n'
                          f'[[sinks]]\nname = "oncall"\ntype = "apprise"\n'
                          f'urls = ["json://127.0.0.1:{ok.port}/{TOKEN}", "json://127.0.0.1:{failing.port}/{TOKEN}"]\n')
        assert main(["test-sink", "oncall", "-c", str(config)]) == 1
        out, err = capsys.readouterr()
        assert "oncall:json: delivered (sent to json://…)" in out
        assert "oncall:json#2: not delivered (service_failed, retryable): json://…: Apprise reports a failure" in err
        assert main(["test-sink", "oncall:json", "-c", str(config)]) == 0
        out, err = capsys.readouterr()
        assert TOKEN not in out + err
        assert len(ok.requests) == 2 and len(failing.requests) == 1
        assert json.loads(ok.requests[0].body)["title"].startswith("❌ Run failed: flora-watcher test")
