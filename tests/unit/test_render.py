"""render.py: message text, limits and neutralisation. Pure, no event loop."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sinks.helpers import make_event
from watcher.render import (
    TRUNCATED,
    ZWSP,
    check_template,
    cut,
    event_body,
    fit,
    format_cost,
    format_duration,
    render_template,
    safe_url,
    text_line,
    ulen,
)
from watcher.sinks.discord import discord_escape, discord_payload, embed_length
from watcher.sinks.google_chat import google_chat_escape, google_chat_payload, google_chat_thread_key
from watcher.sinks.slack import slack_escape, slack_payload
from watcher.sinks.teams import TEAMS_PAYLOAD_MAX_BYTES, teams_payload

# --------------------------------------------------------------------------------------- text line


def test_text_line_for_each_event_type() -> None:
    assert text_line(make_event("run.failed")) == (
        "❌ run.failed · CCTV Cam · run_abc123 · GPU_PROVIDER_ERROR: The provider failed to complete the "
        "generation. · 9.0s · $0.05 · https://media.flora.ai/output.png")
    completed = make_event("run.completed", outputs=[])
    assert text_line(completed) == "✅ run.completed · CCTV Cam · run_abc123 · 9.0s · $0.05"
    started = make_event("run.started", completed_at=None, charged_cost=None, outputs=[])
    assert text_line(started) == "▶ run.started · CCTV Cam · run_abc123"


def test_text_line_failure_without_details_and_late() -> None:
    event = make_event("run.failed", error_code=None, error_message=None, technique=None, late=True,
                       started_at=None, charged_cost=None, outputs=[])
    assert text_line(event) == "❌ run.failed · (technique unknown) · run_abc123 · no error code · 10.0s · late"


def test_text_line_is_one_line_and_cuts_long_messages() -> None:
    line = text_line(make_event(error_message="first\nsecond\r\n" + "x" * 5000))
    assert "\n" not in line and "\r" not in line
    assert "first second xxx" in line and TRUNCATED in line and len(line) < 600


def test_duration_prefers_started_at_then_created_at() -> None:
    assert "· 9.0s ·" in text_line(make_event())
    assert "· 10.0s ·" in text_line(make_event(started_at=None))
    assert "s ·" not in text_line(make_event(completed_at=None)).split("· $")[0]


@pytest.mark.parametrize(("ms", "text"), [
    (0, "0.0s"), (9_000, "9.0s"), (59_940, "59.9s"), (59_960, "1m 00s"), (125_000, "2m 05s"),
    (3_600_000, "1h 00m"), (3_725_000, "1h 02m"),
])
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text


@pytest.mark.parametrize(("cost", "text"), [
    (0.05, "$0.05"), (0, "$0.00"), (0.253, "$0.253"), (0.1, "$0.10"), (12.4, "$12.40"), (1234.5, "$1,234.50"),
    (-1, None), (float("nan"), None), (True, None), ("0.05", None), (None, None),
])
def test_format_cost(cost: object, text: str | None) -> None:
    assert format_cost(cost) == text


# --------------------------------------------------------------------------------------------- links


@pytest.mark.parametrize(("url", "expected"), [
    ("https://media.flora.ai/a.png", "https://media.flora.ai/a.png"),
    ("http://example.com/x?a=1&b=2", "http://example.com/x?a=1&b=2"),
    ("https://e.com/a|b>c<d(e)", "https://e.com/a%7Cb%3Ec%3Cd%28e%29"),
    ("javascript:alert(1)", None), ("data:text/html,hi", None), ("ftp://e.com/x", None),
    ("https:///no-host", None), ("https://e.com/a b", None), ("a caption", None), ("http://[::1", None), (42, None),
])
def test_only_http_urls_become_links(url: object, expected: str | None) -> None:
    assert safe_url(url) == expected


# ------------------------------------------------------------------------------------ neutralisers


def test_slack_escape() -> None:
    assert slack_escape("A & B <!channel> <@U1>") == "A &amp; B &lt;!channel&gt; &lt;@U1&gt;"
    assert slack_escape("*b* _i_") == f"{ZWSP}*{ZWSP}b{ZWSP}*{ZWSP} {ZWSP}_{ZWSP}i{ZWSP}_{ZWSP}"
    assert slack_escape("hi @channel @Here") == f"hi @{ZWSP}channel @{ZWSP}Here"
    assert slack_escape("> quoted") == f"{ZWSP}&gt; quoted"


def test_discord_escape() -> None:
    assert discord_escape("*b* _i_ `c` ~s~ |sp|") == r"\*b\* \_i\_ \`c\` \~s\~ \|sp\|"
    assert discord_escape("[x](https://e.com) <@123>") == r"\[x\]\(https://e.com\) \<@123\>"
    assert discord_escape("# title\n- item\n1. one") == "\\# title\n\\- item\n1\\. one"
    assert discord_escape("@everyone @here") == f"@{ZWSP}everyone @{ZWSP}here"


def test_google_chat_escape() -> None:
    assert google_chat_escape("<users/all> *b*") == f"<{ZWSP}users/all> {ZWSP}*{ZWSP}b{ZWSP}*{ZWSP}"


def test_control_and_bidi_characters_are_removed() -> None:
    assert slack_escape("a\x1b[31mb\u202ec") == "a[31mbc"


# ---------------------------------------------------------------------------------------- truncation


def test_fit_cuts_before_escaping_so_no_entity_is_split() -> None:
    out = fit("<" * 100, 30, slack_escape)
    assert out.endswith(TRUNCATED) and ulen(out) <= 30
    assert out[: -len(TRUNCATED)] == "&lt;" * 4


def test_cut_drops_a_dangling_entity() -> None:
    assert cut("x" * 20 + "&amp;" + "y" * 50, 35) == "x" * 20 + TRUNCATED  # not "x…&am…(truncated)"
    assert cut("short", 35) == "short"


def test_lengths_count_utf16_units() -> None:
    assert ulen("a😀") == 3
    out = fit("😀" * 100, 21)
    assert ulen(out) <= 21 and out.endswith(TRUNCATED)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=400), limit=st.integers(min_value=13, max_value=200),
       escape=st.sampled_from([slack_escape, discord_escape, google_chat_escape, lambda s: s]))
def test_fit_never_exceeds_the_limit(text: str, limit: int, escape) -> None:
    assert ulen(fit(text, limit, escape)) <= limit


# ------------------------------------------------------------------------------------------ payloads

_PIECES = [*"ab *_~`<>&@!|[]()#-\n😀é", "@everyone", "@here", "<!channel>", "<users/all>", "**x**"]
hostile_text = st.lists(st.sampled_from(_PIECES), max_size=60).map(lambda parts: "".join(parts) * 200)


@settings(max_examples=25, deadline=None)
@given(technique=hostile_text, message=hostile_text, output=hostile_text)
def test_every_payload_stays_within_its_platform_limits(technique: str, message: str, output: str) -> None:
    event = make_event(technique={"technique_id": "t", "name": technique[:5000] or None},
                       error_message=message[:20000] or None,
                       outputs=[{"output_id": output[:300], "type": "text", "url": output[:3000] or "x"}] * 3)
    slack = slack_payload(event)
    assert ulen(slack["text"]) <= 40_000
    for block in slack["blocks"]:
        assert ulen(block.get("text", {}).get("text", "")) <= 3_000
        assert all(ulen(f["text"]) <= 2_000 for f in block.get("fields", []))
    discord = discord_payload(event)
    assert ulen(discord["content"]) <= 2_000
    embed = discord["embeds"][0]
    assert embed_length(embed) <= 6_000 and ulen(embed["title"]) <= 256
    assert ulen(embed.get("description", "")) <= 4_096
    assert all(ulen(f["value"]) <= 1_024 for f in embed["fields"])
    teams = json.dumps(teams_payload(event), separators=(",", ":"), ensure_ascii=False).encode()
    assert len(teams) <= TEAMS_PAYLOAD_MAX_BYTES
    assert ulen(google_chat_payload(event)["text"]) <= 4_096
    for text in [slack["text"], *(f["text"] for b in slack["blocks"] for f in b.get("fields", []))]:
        assert "<!channel>" not in text and "@everyone" not in text
    assert "@everyone" not in discord["content"] and "<users/all>" not in google_chat_payload(event)["text"]


def test_google_chat_thread_keys() -> None:
    event = make_event()
    assert google_chat_thread_key(event, "run") == "flora-run-run_abc123"
    assert google_chat_thread_key(event, "project") == "flora-project-prj_abc123"
    assert google_chat_thread_key(make_event(project_id=None), "project") is None
    assert google_chat_thread_key(event, "none") is None


def test_event_body_is_compact_utf8_json() -> None:
    event = make_event(technique={"technique_id": "t", "name": "Café"})
    body = event_body(event)
    assert body == json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
    assert "Café".encode() in body and b": " not in body


# ----------------------------------------------------------------------------------------- templates


def test_template_fields_are_neutralised_and_unknown_fields_empty() -> None:
    event = make_event(technique={"technique_id": "t", "name": "<!channel>"})
    text = render_template("{marker} {technique} {run_id} {nope} {duration} {cost} {output_url}", event,
                           slack_escape)
    assert text == f"❌ &lt;!channel&gt; run{ZWSP}_{ZWSP}abc123  9.0s $0.05 https://media.flora.ai/output.png"


def test_template_format_specs_work_on_text() -> None:
    assert render_template("{error_code:.3}|{status:>8}", make_event(), lambda s: s) == "GPU|  failed"


@pytest.mark.parametrize(("template", "word"), [
    ("{} failed", "positional"), ("{0}", "positional"), ("{data.run_id}", "field {data.run_id}"),
    ("{outputs[0]}", "field {outputs[0]}"), ("{run_id:{width}}", "nested"), ("{run_id:d}", "does not render"),
    ("{run_id", "not a valid template"),
])
def test_bad_templates_are_refused_with_a_clear_message(template: str, word: str) -> None:
    with pytest.raises(ValueError) as err:
        check_template(template)
    assert word in str(err.value)


def test_template_replaces_the_whole_message_on_every_platform() -> None:
    event = make_event()
    template = "{marker} {technique}: {error_code}"
    slack_code = f"GPU{ZWSP}_{ZWSP}PROVIDER{ZWSP}_{ZWSP}ERROR"
    assert slack_payload(event, template=template) == {"text": f"❌ CCTV Cam: {slack_code}"}
    assert discord_payload(event, template=template) == {"content": r"❌ CCTV Cam: GPU\_PROVIDER\_ERROR",
                                                         "allowed_mentions": {"parse": []}}
    assert google_chat_payload(event, template=template)["text"].startswith("❌ CCTV Cam: GPU")
    card = teams_payload(event, template=template)["attachments"][0]["content"]
    assert card["body"] == [{"type": "RichTextBlock",
                             "inlines": [{"type": "TextRun", "text": "❌ CCTV Cam: GPU_PROVIDER_ERROR"}]}]
    assert text_line(event, template=template) == "❌ CCTV Cam: GPU_PROVIDER_ERROR"
