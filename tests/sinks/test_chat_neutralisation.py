"""API text stays inert in every chat message: hostile error codes, error messages and technique names (markdown,
mentions, ``<!channel>``, ``@everyone``, HTML, block quotes, headings, emoji codes) in single and grouped messages
of every chat type, with and without a template, can neither format the message nor mention anyone.

The check reads each payload as its platform does: only the fields the platform renders as markup are held to
it (Slack's mrkdwn text, Discord's content, embed titles, descriptions and fields, Google Chat's text, Teams'
``TextBlock``s and ``FactSet``s), code spans and blocks excepted where the platform shows them literally. Pure:
nothing is sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.sinks.helpers import make_event
from watcher.model import Event
from watcher.render import ZWSP
from watcher.sinks.discord import discord_group_payload, discord_payload
from watcher.sinks.google_chat import google_chat_group_payload, google_chat_payload
from watcher.sinks.slack import slack_group_payload, slack_payload
from watcher.sinks.teams import teams_group_payload, teams_payload

TECHNIQUE = ("*bold* _it_ ~s~ `code` [x](https://evil.example) <!channel> @everyone <users/all> <b>html</b>"
             " :boom:\n# h\n> q")
CODE = "GPU_*ERR* <!here> @everyone <b>x</b> ~~z~~ `c` [y](https://evil.example) {0}"
MESSAGE = ("**boom** <!channel> <@123> @here <users/all> <i>y</i> ~~z~~ _u_ :fire: `c`\n# title\n> quote\n- item"
           "\n1. one\n||spoiler||")
TEMPLATE = "{marker} {technique} {error_code}: {error_message} ({run_id})"

# Markup an API string above would produce, were it copied raw: none may appear where the platform renders.
FORMATTING = ["*bold*", "_it_", "~s~", "*ERR*", "**boom**", "~~z~~", "~z~", "_u_"]
MENTION_WORDS = re.compile(r"@(everyone|here|channel|all)\b")  # broken everywhere, code spans included


def hostile(event_type: str = "run.failed", run_id: str = "run_h", **kw: Any) -> Event:
    fields: dict[str, Any] = {"technique": {"technique_id": "t", "name": TECHNIQUE}, "error_code": CODE,
                              "error_message": MESSAGE}
    return make_event(event_type, run_id=run_id, **{**fields, **kw})


def singles() -> Iterator[tuple[str, Event]]:
    yield "failed", hostile()
    yield "completed", hostile("run.completed", error_code=None, error_message=None)
    yield "stalled", hostile("run.stalled", error_code=None, error_message=None, stalled_for=90_000)
    yield "code_only", make_event("run.failed", error_code=CODE, error_message=None)


def groups() -> Iterator[tuple[str, list[Event]]]:
    yield "same_code", [hostile(run_id=f"run_{i}") for i in range(4)]  # the code is in the headline
    yield "codes_differ", [hostile(run_id=f"run_{i}", error_code=f"{CODE} {i}") for i in range(4)]
    yield "mixed_types", [hostile(run_id="run_a"), hostile("run.completed", run_id="run_b", error_code=None)]
    yield "overflowing", [hostile(run_id=f"run_{i:04d}") for i in range(2_500)]  # "… and N more: <command>"


Render = Callable[[list[Event]], dict[str, Any]]
PLATFORMS: dict[str, tuple[Callable[..., dict[str, Any]], Render]] = {
    "slack": (slack_payload, slack_group_payload),
    "discord": (discord_payload, discord_group_payload),
    "teams": (teams_payload, teams_group_payload),
    "google_chat": (google_chat_payload, google_chat_group_payload),
}


def messages(platform: str) -> Iterator[tuple[str, dict[str, Any]]]:
    single, group = PLATFORMS[platform]
    for name, event in singles():
        yield f"single/{name}", single(event)
        yield f"template/{name}", single(event, template=TEMPLATE)
    for name, events in groups():
        yield f"group/{name}", group(events)


# ------------------------------------------------------------------- what each platform renders as markup


def slack_markup(payload: dict[str, Any]) -> list[str]:
    texts = [payload["text"]]
    for block in payload.get("blocks", ()):
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"  # shown as is: no markup, no mentions
            continue
        parts = [block.get("text"), *block.get("fields", ()), *block.get("elements", ())]
        texts += [p["text"] for p in parts if p is not None and p["type"] == "mrkdwn"]
    return texts


def discord_markup(payload: dict[str, Any]) -> list[str]:
    assert payload["allowed_mentions"] == {"parse": []}
    texts = [payload.get("content", "")]
    for embed in payload.get("embeds", ()):  # footers render no markdown
        texts += [embed.get("title", ""), embed.get("description", "")]
        texts += [text for f in embed.get("fields", ()) for text in (f["name"], f["value"])]
    return texts


def teams_markup(payload: dict[str, Any]) -> list[str]:
    """TextBlocks and FactSets render (a subset of) markdown; RichTextBlock TextRuns and button titles do not."""
    texts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "TextBlock":
                texts.append(node["text"])
            if node.get("type") == "FactSet":
                texts.extend(text for fact in node["facts"] for text in (fact["title"], fact["value"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(payload["attachments"][0]["content"]["body"])
    return texts


def google_chat_markup(payload: dict[str, Any]) -> list[str]:
    return [payload["text"]]


MARKUP = {"slack": slack_markup, "discord": discord_markup, "teams": teams_markup, "google_chat": google_chat_markup}
CODE_BLOCK = re.compile(r"```.*?```", re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INERT_BACKTICK = re.compile(rf"\\`|{ZWSP}`{ZWSP}")  # an API backtick, escaped or wrapped: opens no code span


def outside_code(text: str) -> str:
    """``text`` without its code blocks and spans (the platforms show those literally)."""
    text = INERT_BACKTICK.sub("\N{MODIFIER LETTER GRAVE ACCENT}", text)
    return CODE_SPAN.sub(" ", CODE_BLOCK.sub(" ", text))


def problems(platform: str, text: str) -> list[str]:
    found = []
    found += [f"mention {m.group()!r}" for m in MENTION_WORDS.finditer(text)]
    if "`code`" in text or "`c`" in text:  # an API code span
        found.append("an API backtick opens a code span")
    rendered = outside_code(text)
    found += [f"formatting {raw!r}" for raw in FORMATTING if raw in rendered]
    if platform == "slack":  # <!channel>, <@U1>, <#C1>: escaped as &lt; everywhere, code spans included
        found += [f"control sequence {m.group()!r}" for m in re.finditer(r"<(?!https?://)[^>]*>?", text)]
        found += [f"emoji code {m.group()!r}" for m in re.finditer(r":(boom|fire):", rendered)]
        found += ["block quote" for _ in re.finditer(r"(?m)^>", rendered)]
    if platform == "discord":
        found += ["spoiler" for _ in re.finditer(r"(?<!\\)\|\|", rendered)]
        found += [f"link {m.group()!r}" for m in re.finditer(r"(?<!\\)\[[xy]\]\(", rendered)]
        found += [f"line markup {m.group()!r}" for m in re.finditer(r"(?m)^\s*(#+ |- |> |\d+\. )", rendered)]
        found += [f"mention or tag {m.group()!r}" for m in re.finditer(r"(?<!\\)<[a-z/!@#&]", rendered)]
    if platform == "google_chat":  # <users/all>: broken everywhere, code spans included
        found += [f"mention or tag {m.group()!r}" for m in re.finditer(r"<(?!https?://)[a-z/!@]", text)]
    if platform == "teams":  # a TextBlock or fact shows our own words only, never API text
        found += [f"API text {raw!r}" for raw in ("bold", "ERR", "boom", "evil", "html", "<b>", "<i>") if raw in text]
    return found


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_hostile_api_text_stays_inert_in_every_message(platform: str) -> None:
    failures = []
    for name, payload in messages(platform):
        for text in MARKUP[platform](payload):
            failures += [f"{name}: {p} in {text[:160]!r}" for p in problems(platform, text)]
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_the_hostile_text_is_still_shown(platform: str) -> None:
    """Neutralised, not dropped: the error code is in every single failure and in a same-code group's headline."""
    single, group = PLATFORMS[platform]
    for payload in (single(hostile()), group([hostile(run_id=f"run_{i}") for i in range(4)])):
        text = json.dumps(payload, ensure_ascii=False)
        assert "ERR" in text and "GPU" in text


def test_the_check_catches_what_the_issue_found() -> None:
    """Main's grouped headlines (before issue 21) put the code raw into Discord's embed title and Teams' headline
    TextBlock: the check above names both."""
    raw_title = {"content": "", "embeds": [{"title": "❌ 4 runs failed: GPU_*ERR*"}], "allowed_mentions": {"parse": []}}
    assert problems("discord", discord_markup(raw_title)[1]) == ["formatting '*ERR*'"]
    card = {"attachments": [{"content": {"body": [{"type": "TextBlock", "text": "❌ 4 runs failed: GPU_*ERR*"}]}}]}
    assert "API text 'ERR'" in problems("teams", teams_markup(card)[0])
