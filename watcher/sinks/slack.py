"""Slack incoming webhook: ``text`` + Block Kit blocks, paced to about one message per second per webhook, Slack's
documented limit. Everything Slack-specific is here: the message (``slack_payload``, ``slack_group_payload``),
its escaping and Block Kit's limits.

API text is neutralised as Slack mrkdwn: ``&``, ``<``, ``>`` escaped as HTML entities (so ``<!channel>`` and
links stay inert); ``*``, ``_``, ``~`` and backticks wrapped in zero-width spaces; ``@channel``/``@here``/
``@everyone`` broken with a zero-width space; ``:word:`` emoji codes broken after the colon; a line starting
with ``>`` quotes nothing; ``&`` in link URLs as ``&amp;``; ids and error messages in code spans with backticks
replaced by U+02CB (a look-alike). Header blocks are ``plain_text``, which renders no markup.

Keys: ``url``/``url_file``, ``template``, ``group_wait``, ``group_by`` (``http.CHAT_KEYS``)."""

from __future__ import annotations

import re
from typing import Any

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.model import Event
from watcher.render import (
    CODE_BACKTICK,
    GROUP_LINE_TECHNIQUE_MAX,
    OUTPUT_TEXT_MAX,
    TECHNIQUE_MAX,
    TEXT_LINE_MESSAGE_MAX,
    ZWSP,
    View,
    and_more,
    break_mentions,
    clean,
    cut,
    fit,
    group_view,
    join_within,
    label_text,
    lines_within,
    one_line,
    render_template,
    ulen,
    view,
    wrap_format_chars,
)
from watcher.sinks.http import CHAT_KEYS, ChatOptions, ChatSink, IntervalPacer, parse_chat
from watcher.sinks.spec import SinkConfig, SinkType

SLACK_INTERVAL = 1.0

# ------------------------------------------------------------------------------------------ limits

SLACK_TEXT_MAX = 40_000  # top-level ``text``
SLACK_BLOCK_TEXT_MAX = 3_000  # section text
SLACK_FIELD_MAX = 2_000  # one section field
SLACK_HEADER_MAX = 150  # header block plain_text


# ------------------------------------------------------------------------------------ neutralisers


_EMOJI_CODE = re.compile(r":(?=[A-Za-z0-9_+'-]+:)")


def _break_emoji(text: str) -> str:
    """``:word:`` would become an emoji (or a custom one) in Slack: a zero-width space after the colon."""
    return _EMOJI_CODE.sub(":" + ZWSP, text)


def slack_escape(raw: str) -> str:
    """API text → inert Slack mrkdwn."""
    text = clean(raw).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _break_emoji(wrap_format_chars(break_mentions(text)))
    return re.sub(r"(?m)^&gt;", ZWSP + "&gt;", text)  # no block quote from API text


def slack_url(url: str) -> str:
    """A ``safe_url`` for the inside of a Slack ``<url|label>`` link: ``&`` as ``&amp;`` (Slack's own escaping;
    ``<`` and ``>`` are already percent-encoded)."""
    return url.replace("&", "&amp;")


def slack_code(raw: str) -> str:
    """API text for the inside of a Slack code span or code block."""
    text = clean(raw).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _break_emoji(break_mentions(text.replace("`", CODE_BACKTICK)))


# ---------------------------------------------------------------------------------------- payloads


def _slack_output_lines(v: View) -> list[str]:
    lines = [f"• <{slack_url(link.url)}|{slack_escape(label_text(link.label))}>" for link in v.links]
    lines += [
        f"• {slack_escape(t.label)}: “{fit(one_line(t.text), OUTPUT_TEXT_MAX, slack_escape)}”" for t in v.texts
    ]
    return lines


def slack_payload(event: Event, *, template: str | None = None) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (notifications, fallback) plus Block Kit ``blocks``.

    With a ``template`` the message is only ``text``: the rendered template (mrkdwn; values neutralised).
    """
    if template is not None:
        return {"text": cut(render_template(template, event, slack_escape), SLACK_TEXT_MAX)}
    v = view(event)
    technique = fit(v.technique or "(technique unknown)", TECHNIQUE_MAX, slack_escape)
    run = f"`{slack_code(v.run_id)}`"
    summary = f"{v.marker} {v.title}: {technique} · {run}"
    if v.failed:
        code = f"`{slack_code(v.error_code)}`" if v.error_code else "no error code"
        message = fit(one_line(v.error_message or ""), TEXT_LINE_MESSAGE_MAX, slack_escape)
        summary += f" · {code}" + (f": {message}" if message else "")
    fields = [("Technique", technique), ("Run", run)]
    if v.failed:
        fields.append(("Error code", f"`{slack_code(v.error_code)}`" if v.error_code else "—"))
    fields += [("Duration", v.duration or "—"), ("Cost", v.cost or "—")]
    if v.project_id:
        fields.append(("Project", f"`{slack_code(v.project_id)}`"))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{v.marker} {v.title}", "emoji": True}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": cut(f"*{label}*\n{value}", SLACK_FIELD_MAX)} for label, value in fields
        ]},
    ]
    if v.failed:
        head, tail = "*Error message*\n```", "```"
        if v.error_message:
            budget = SLACK_BLOCK_TEXT_MAX - ulen(head) - ulen(tail)
            text = head + fit(v.error_message, budget, slack_code) + tail
        else:
            text = "*Error message*\n_none given_"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    outputs = _slack_output_lines(v)
    if outputs:
        text = join_within("*Outputs*", outputs, SLACK_BLOCK_TEXT_MAX)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    context = f"flora-watcher · `{v.event_id}`"
    if v.late:
        context += " · late: it happened while the watcher was stopped"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": cut(summary, SLACK_TEXT_MAX), "blocks": blocks}


# -------------------------------------------------------------------------------- grouped messages


def _slack_group_line(v: View) -> str:
    parts = [fit(v.technique or "(technique unknown)", GROUP_LINE_TECHNIQUE_MAX, slack_escape),
             f"`{slack_code(v.run_id)}`"]
    if v.duration:
        parts.append(v.duration)
    if v.links:
        parts.append(f"<{slack_url(v.links[0].url)}|output>")
    return "• " + " · ".join(parts)


def slack_group_payload(events: list[Event]) -> dict[str, Any]:
    """One Slack message for a group: header, the runs in sections of at most 3,000 characters (within Block
    Kit's 50 blocks), then "… and N more" with the command that lists them."""
    g = group_view(events)
    code = f"`{slack_code(g.error_code)}`" if g.error_code else ""
    headline = f"{g.marker} {g.count} runs {g.verb}" + (f": {code}" if code else "")
    lines = [_slack_group_line(v) for v in g.views]
    sections: list[str] = []
    shown = 0
    max_sections = 45
    while shown < len(lines) and len(sections) < max_sections:
        n = lines_within(lines[shown:], SLACK_BLOCK_TEXT_MAX, 0)
        if n == 0:  # one line longer than a section (cannot happen with the caps above): cut it
            sections.append(cut(lines[shown], SLACK_BLOCK_TEXT_MAX))
            shown += 1
            continue
        sections.append("\n".join(lines[shown:shown + n]))
        shown += n
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "emoji": False,
                                    "text": cut(f"{g.marker} {one_line(g.headline)}", SLACK_HEADER_MAX)}},
        *({"type": "section", "text": {"type": "mrkdwn", "text": text}} for text in sections),
    ]
    context = f"flora-watcher · {g.count} events"
    if shown < len(lines):
        context = f"{and_more(len(lines) - shown)}: `{slack_code(g.command)}`"  # no str.format: the command is API text
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(context, SLACK_FIELD_MAX)}]})
    return {"text": cut(headline, SLACK_TEXT_MAX), "blocks": blocks}


# -------------------------------------------------------------------------------------------- the sink


class SlackSink(ChatSink[ChatOptions]):
    def __init__(self, cfg: SinkConfig[ChatOptions], *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK,
                 min_interval: float = SLACK_INTERVAL) -> None:
        super().__init__(cfg, user_agent=user_agent, clock=clock)
        self.pacer = IntervalPacer(min_interval, clock)

    def payload(self, event: Event) -> dict[str, Any]:
        return slack_payload(event, template=self.options.template)

    def group_payload(self, events: list[Event]) -> dict[str, Any]:
        return slack_group_payload(events)


SINK = SinkType(
    name="slack", keys=CHAT_KEYS, options=ChatOptions,
    parse=lambda t: ChatOptions(**parse_chat(t)), build=SlackSink.build,
)
