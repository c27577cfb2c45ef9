"""Grouped chat messages and the chat payload fixes of issue 10. Pure: no event loop."""

from __future__ import annotations

import json

import pytest

from tests.sinks.helpers import make_event
from watcher.config import parse
from watcher.errors import ConfigError
from watcher.policy import group_key, group_ready_ms
from watcher.sinks.discord import DISCORD_EMBED_TOTAL_MAX, discord_group_payload, embed_length
from watcher.sinks.google_chat import GOOGLE_CHAT_TEXT_MAX, google_chat_group_payload
from watcher.sinks.registry import REGISTRY
from watcher.sinks.slack import SLACK_BLOCK_TEXT_MAX, slack_escape, slack_group_payload, slack_payload
from watcher.sinks.teams import TEAMS_PAYLOAD_MAX_BYTES, teams_group_payload, teams_payload

URL = "https://media.flora.ai/out.png?sig=a&b=c"


def failures(n: int, code: str = "INSUFFICIENT_CREDITS", **kw) -> list:
    return [make_event("run.failed", run_id=f"run_{i:04d}", error_code=code,
                       outputs=[{"output_id": "o", "type": "imageUrl", "url": URL}], **kw) for i in range(n)]


def test_group_key_follows_group_by() -> None:
    a, b = failures(1)[0], failures(1, code="GPU")[0]
    by = ("type", "error_code")
    assert group_key(a.type, a.data, by) == ("run.failed", "INSUFFICIENT_CREDITS")
    assert group_key(a.type, a.data, by) != group_key(b.type, b.data, by)
    assert group_key(a.type, a.data, ("type",)) == group_key(b.type, b.data, ("type",))
    assert group_key(a.type, a.data, ("technique_id", "project_id")) == ("tech_abcd1234", "prj_abc123")
    assert group_key(a.type, a.data, ()) == ()
    assert group_ready_ms([5_000, 3_000], 2_000) == 5_000


def test_slack_group_headline_every_run_then_the_command() -> None:
    payload = slack_group_payload(failures(60))
    assert payload["text"] == "❌ 60 runs failed: `INSUFFICIENT_CREDITS`"
    header = payload["blocks"][0]
    assert header["text"] == {"type": "plain_text", "emoji": False, "text": "❌ 60 runs failed: INSUFFICIENT_CREDITS"}
    sections = [b["text"]["text"] for b in payload["blocks"] if b["type"] == "section"]
    assert all(len(t) <= SLACK_BLOCK_TEXT_MAX for t in sections)
    text = "\n".join(sections)
    assert all(f"`run_{i:04d}`" in text for i in range(60))
    assert "<https://media.flora.ai/out.png?sig=a&amp;b=c|output>" in text
    assert "CCTV Cam" in text and "9.0s" in text


def test_what_does_not_fit_ends_with_and_n_more_and_the_command() -> None:
    long = failures(400, technique={"technique_id": "t", "name": "T" * 60})
    payload = discord_group_payload(long)
    assert sum(embed_length(e) for e in payload["embeds"]) <= DISCORD_EMBED_TOTAL_MAX
    footer = payload["embeds"][-1]["footer"]["text"]
    assert footer.startswith("… and ") and "more: flora-watcher events --type run.failed" in footer
    assert "--error-code INSUFFICIENT_CREDITS" in footer
    chat = google_chat_group_payload(long)
    assert len(chat["text"]) <= GOOGLE_CHAT_TEXT_MAX and "more: `flora-watcher events --type run.failed" in chat["text"]
    teams = teams_group_payload(long)
    assert len(json.dumps(teams, separators=(",", ":"), ensure_ascii=False).encode()) <= TEAMS_PAYLOAD_MAX_BYTES
    slack = slack_group_payload(failures(2000))
    assert len(slack["blocks"]) <= 50
    assert slack["blocks"][-1]["elements"][0]["text"].startswith("… and ")


def test_mixed_types_and_hostile_text_stay_inert() -> None:
    hostile = failures(3, code="<!channel> :boom: @everyone")
    hostile.append(make_event("run.completed", run_id="run_ok"))
    slack = json.dumps(slack_group_payload(hostile))
    assert "<!channel>" not in slack and ":boom:" not in slack
    discord = discord_group_payload(hostile)
    assert discord["content"].startswith("• **4 runs ended**") and discord["allowed_mentions"] == {"parse": []}
    assert "@everyone" not in json.dumps(discord, ensure_ascii=False)


def test_slack_links_escape_ampersands_and_emoji_codes_are_neutralised() -> None:
    event = make_event("run.failed", error_message="quota :fire: hit :white_check_mark:",
                       technique={"technique_id": "t", "name": "Cam :tada:"},
                       outputs=[{"output_id": "o", "type": "imageUrl", "url": URL}])
    payload = json.dumps(slack_payload(event), ensure_ascii=False)
    assert "sig=a&amp;b=c|" in payload and "sig=a&b=c" not in payload
    assert ":fire:" not in payload and ":tada:" not in payload and ":white_check_mark:" not in payload
    assert slack_escape("a :x: b") == "a :\u200bx: b"
    assert slack_escape("12:30:45") == "12:\u200b30:45"  # harmless where it was no emoji


def test_teams_card_width_is_lower_case_full() -> None:
    card = teams_payload(make_event())["attachments"][0]["content"]
    assert card["msteams"] == {"width": "full"}
    group = teams_group_payload(failures(3))["attachments"][0]["content"]
    assert group["msteams"] == {"width": "full"}


def no_files(path: str) -> str:
    raise OSError(path)


ENV = {"env": {"HOME": "/tmp"}, "read_file": no_files, "sink_types": REGISTRY}


def sinks_config(extra: str) -> str:
    return f"""
[api]
api_key = "sk_test_0123456789abcdef"
[[sinks]]
name = "chat"
type = "slack"
url = "https://hooks.slack.com/services/T/B/C"
{extra}
"""


def test_group_keys_parse_and_are_checked() -> None:
    cfg = parse(sinks_config('group_wait = 5\ngroup_by = ["type", "project_id"]'), **ENV)
    assert (cfg.sinks[0].options.group_wait, cfg.sinks[0].options.group_by) == (5.0, ("type", "project_id"))
    cfg = parse(sinks_config(""), **ENV)
    assert (cfg.sinks[0].options.group_wait, cfg.sinks[0].options.group_by) == (2.0, ("type", "error_code"))
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.group_by.*unknown group_by field 'status'"):
        parse(sinks_config('group_by = ["status"]'), **ENV)
    with pytest.raises(ConfigError, match=r"group_wait"):
        parse(sinks_config("group_wait = -1"), **ENV)


def test_concurrency_parses_for_webhook_and_exec_only() -> None:
    text = sinks_config("").replace('type = "slack"\nurl = "https://hooks.slack.com/services/T/B/C"',
                                    'type = "webhook"\nurl = "https://example.com/hook"\nconcurrency = 3')
    assert parse(text, **ENV).sinks[0].options.concurrency == 3
    with pytest.raises(ConfigError, match="concurrency"):
        parse(text.replace("concurrency = 3", "concurrency = 0"), **ENV)
    with pytest.raises(ConfigError, match="concurrency"):
        parse(sinks_config("concurrency = 4"), **ENV)  # a chat sink paces itself


def test_a_groups_error_code_is_neutralised_in_the_headline_as_in_single_messages() -> None:
    """Discord's embed title and Teams' headline render markdown: the code is escaped there (Discord) or sits in a
    TextRun (Teams), so GPU_*ERR* shows as written instead of turning ERR italic (issue 21)."""
    group = failures(3, code="GPU_*ERR*")
    assert discord_group_payload(group)["embeds"][0]["title"] == r"❌ 3 runs failed: GPU\_\*ERR\*"
    head = teams_group_payload(group)["attachments"][0]["content"]["body"][0]
    assert head["type"] == "RichTextBlock"
    assert [run["text"] for run in head["inlines"]] == ["❌ 3 runs failed: ", "GPU_*ERR*"]
    assert all(run["type"] == "TextRun" for run in head["inlines"])
    overflowing = teams_group_payload(failures(400, code="GPU_*ERR*"))["attachments"][0]["content"]["body"][-1]
    assert overflowing["type"] == "RichTextBlock" and "GPU_*ERR*" in overflowing["inlines"][1]["text"]


def test_a_slack_group_too_large_for_one_message_names_a_code_with_braces() -> None:
    """The "… and N more" line is built without str.format: a code like ``E{0}`` crashed the send."""
    context = slack_group_payload(failures(2_000, code="E{0}"))["blocks"][-1]["elements"][0]["text"]
    assert context.startswith("… and ") and "--error-code 'E{0}'" in context
