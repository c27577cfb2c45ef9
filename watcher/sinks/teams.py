"""Microsoft Teams through a Workflows ("When a Teams webhook request is received") URL: one Adaptive Card 1.4,
never the retired Office 365 connector MessageCard. Everything Teams-specific is here: the card
(``teams_payload``, ``teams_group_payload``) and the Workflows size limit.

API text goes only into ``RichTextBlock`` ``TextRun``s, which render neither markdown nor mentions; a
``TextBlock`` (which renders markdown) holds only our own words, numbers and durations.

Keys: ``url``/``url_file``, ``template``, ``group_wait``, ``group_by`` (``http.CHAT_KEYS``)."""

from __future__ import annotations

import json
from typing import Any

from watcher.model import Event
from watcher.render import (
    GROUP_LINE_TECHNIQUE_MAX,
    OUTPUT_TEXT_MAX,
    TECHNIQUE_MAX,
    View,
    and_more,
    clean,
    fit,
    group_view,
    one_line,
    render_template,
    view,
)
from watcher.sinks.http import CHAT_KEYS, ChatOptions, ChatSink, parse_chat
from watcher.sinks.spec import SinkType

# ------------------------------------------------------------------------------------------ limits

TEAMS_PAYLOAD_MAX_BYTES = 28_000  # Workflows webhooks refuse payloads above ~28 KB
TEAMS_ACTIONS_MAX = 5
TEAMS_COLORS = {"run.completed": "Good", "run.failed": "Attention", "run.started": "Accent", "run.stalled": "Warning"}


# ---------------------------------------------------------------------------------------- payloads


def _run(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextRun", "text": text, **style}


def _labelled(label: str, value: str, *, monospace: bool = False) -> dict[str, Any]:
    value_run = _run(value, fontType="Monospace") if monospace else _run(value)
    return {"type": "RichTextBlock", "inlines": [_run(f"{label}: ", weight="Bolder"), value_run]}


def _teams_outputs(v: View, text_max: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if len(v.links) > TEAMS_ACTIONS_MAX:
        blocks.append({"type": "TextBlock", "text": f"+{len(v.links) - TEAMS_ACTIONS_MAX} more outputs",
                       "isSubtle": True, "wrap": True})
    for t in v.texts:
        blocks.append({"type": "RichTextBlock", "inlines": [
            _run(f"{fit(one_line(t.label), 100)}: ", weight="Bolder"),
            _run("\u201c" + fit(clean(t.text), min(OUTPUT_TEXT_MAX, text_max)) + "\u201d", italic=True),
        ]})
    return blocks


def _teams_message(v: View, body: list[dict[str, Any]]) -> dict[str, Any]:
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "full"},
        "body": body,
    }
    actions = [
        {"type": "Action.OpenUrl", "title": fit(one_line(link.label), 80), "url": link.url}
        for link in v.links[:TEAMS_ACTIONS_MAX]
    ]
    if actions:
        card["actions"] = actions
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def _teams_once(event: Event, v: View, template: str | None, text_max: int) -> dict[str, Any]:
    if template is not None:
        text = fit(render_template(template, event, clean), text_max)
        return _teams_message(v, [{"type": "RichTextBlock", "inlines": [_run(text)]}])
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": f"{v.marker} {v.title}", "weight": "Bolder", "size": "Large",
         "color": TEAMS_COLORS.get(v.event_type, "Default"), "wrap": True},
        _labelled("Technique", fit(one_line(v.technique or "(technique unknown)"), min(TECHNIQUE_MAX, text_max))),
        _labelled("Run", one_line(v.run_id), monospace=True),
    ]
    if v.failed:
        body.append(_labelled("Error code", one_line(v.error_code) if v.error_code else "\u2014", monospace=True))
    facts = [{"title": "Status", "value": v.title}, {"title": "Duration", "value": v.duration or "\u2014"},
             {"title": "Cost", "value": v.cost or "\u2014"}]
    body.append({"type": "FactSet", "facts": facts})
    if v.project_id:
        body.append(_labelled("Project", one_line(v.project_id), monospace=True))
    if v.failed and v.error_message:
        body.append({"type": "RichTextBlock", "inlines": [_run(fit(clean(v.error_message), text_max),
                                                                fontType="Monospace")]})
    body += _teams_outputs(v, text_max)
    footer = f"flora-watcher \u00b7 {v.event_id}"
    if v.late:
        footer += " \u00b7 late: it happened while the watcher was stopped"
    body.append({"type": "TextBlock", "text": footer, "isSubtle": True, "size": "Small", "wrap": True})
    return _teams_message(v, body)


def teams_payload(event: Event, *, template: str | None = None) -> dict[str, Any]:
    """A Teams Workflows webhook message: one Adaptive Card 1.4 (not the retired MessageCard), whose API
    text sits in ``TextRun``s (no markdown, no mentions), with an ``Action.OpenUrl`` per output link.
    Long text shrinks until the JSON is within ``TEAMS_PAYLOAD_MAX_BYTES``."""
    v = view(event)
    text_max = 10_000
    while True:
        payload = _teams_once(event, v, template, text_max)
        size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        if size <= TEAMS_PAYLOAD_MAX_BYTES or text_max <= 50:
            return payload
        text_max //= 2


# -------------------------------------------------------------------------------- grouped messages


def _teams_group_line(v: View) -> dict[str, Any]:
    inlines = [_run(fit(one_line(v.technique or "(technique unknown)"), GROUP_LINE_TECHNIQUE_MAX)), _run(" \u00b7 "),
               _run(one_line(v.run_id), fontType="Monospace")]
    if v.duration:
        inlines.append(_run(f" \u00b7 {v.duration}"))
    if v.links:
        inlines += [_run(" \u00b7 "), _run("output", selectAction={"type": "Action.OpenUrl", "url": v.links[0].url})]
    return {"type": "RichTextBlock", "inlines": inlines}


def teams_group_payload(events: list[Event]) -> dict[str, Any]:
    """One Adaptive Card for a group: the headline, a line per run (API text in ``TextRun``s; the output link
    as the run's ``selectAction``) while the payload stays within ``TEAMS_PAYLOAD_MAX_BYTES``, then "… and N
    more" with the command."""
    g = group_view(events)
    # The headline and the "more" line hold API text (the error code, the command naming it): TextRuns, which
    # render no markdown, as everywhere else in the card; a TextBlock would turn GPU_*ERR* into italics.
    style = {"weight": "Bolder", "size": "Large", "color": TEAMS_COLORS.get(g.event_type or "", "Default")}
    head_runs = [_run(f"{g.marker} {g.count} runs {g.verb}" + (": " if g.error_code else ""), **style)]
    if g.error_code:
        head_runs.append(_run(one_line(g.error_code), fontType="Monospace", **style))
    head = {"type": "RichTextBlock", "inlines": head_runs}
    rows = [_teams_group_line(v) for v in g.views]

    def message(shown: int) -> dict[str, Any]:
        if shown == len(rows):
            foot: dict[str, Any] = {"type": "TextBlock", "text": f"flora-watcher \u00b7 {g.count} events",
                                    "isSubtle": True, "size": "Small", "wrap": True}
        else:
            foot = {"type": "RichTextBlock", "inlines": [
                _run(f"{and_more(len(rows) - shown)}: ", isSubtle=True, size="Small"),
                _run(one_line(g.command), isSubtle=True, size="Small", fontType="Monospace")]}
        body = [head, *rows[:shown], foot]
        card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                "version": "1.4", "msteams": {"width": "full"}, "body": body}
        return {"type": "message", "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}

    def size(payload: dict[str, Any]) -> int:
        return len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))

    lo, hi = 0, len(rows)  # the most rows that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(message(mid)) <= TEAMS_PAYLOAD_MAX_BYTES:
            lo = mid
        else:
            hi = mid - 1
    return message(lo)


# -------------------------------------------------------------------------------------------- the sink


class TeamsSink(ChatSink[ChatOptions]):
    def payload(self, event: Event) -> dict[str, Any]:
        return teams_payload(event, template=self.options.template)

    def group_payload(self, events: list[Event]) -> dict[str, Any]:
        return teams_group_payload(events)


SINK = SinkType(
    name="teams", keys=CHAT_KEYS, options=ChatOptions,
    parse=lambda t: ChatOptions(**parse_chat(t)), build=TeamsSink.build,
)
