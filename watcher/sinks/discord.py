"""Discord webhook: ``content`` + embeds with ``allowed_mentions: {"parse": []}``, posted with ``?wait=true``. Paced
by Discord's bucket headers: when ``X-RateLimit-Remaining`` reached 0, the next send waits
``X-RateLimit-Reset-After``. A 429's ``retry_after`` (body) is reported to the dispatcher. Everything
Discord-specific is here: the message (``discord_payload``, ``discord_group_payload``), its escaping and the
embed limits.

API text is neutralised as Discord markdown: markdown characters backslash-escaped (also a ``#``, ``-``, ``+``
or ``1.`` starting a line), ``@everyone``/``@here`` broken with a zero-width space, and every payload carries
``allowed_mentions: {"parse": []}``. Ids and error messages go into code spans and blocks with backticks
replaced by U+02CB. Embed titles render markdown too, so they get the same escaping as any other text.

Keys: ``url``/``url_file``, ``template``, ``group_wait``, ``group_by`` (``http.CHAT_KEYS``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.model import Event
from watcher.render import (
    CODE_BACKTICK,
    GROUP_LINE_TECHNIQUE_MAX,
    OUTPUT_TEXT_MAX,
    TECHNIQUE_MAX,
    TRUNCATED,
    View,
    and_more,
    break_mentions,
    clean,
    cut,
    fit,
    group_view,
    iso_utc,
    join_within,
    label_text,
    lines_within,
    one_line,
    render_template,
    ulen,
    view,
)
from watcher.sinks.http import CHAT_KEYS, MAX_PACING_WAIT, BucketPacer, ChatOptions, ChatSink, parse_chat, with_query
from watcher.sinks.spec import SinkConfig, SinkType

# ------------------------------------------------------------------------------------------ limits

DISCORD_CONTENT_MAX = 2_000
DISCORD_TITLE_MAX = 256
DISCORD_DESCRIPTION_MAX = 4_096
DISCORD_FIELD_NAME_MAX = 256
DISCORD_FIELD_VALUE_MAX = 1_024
DISCORD_FOOTER_MAX = 2_048
DISCORD_EMBED_TOTAL_MAX = 6_000  # all embeds of one message together
DISCORD_EMBEDS_MAX = 10
DISCORD_COLORS = {"run.completed": 0x2EB67D, "run.failed": 0xE01E5A, "run.started": 0x3B82F6, "run.stalled": 0xF59E0B}


# ------------------------------------------------------------------------------------ neutralisers


_DISCORD_SPECIAL = re.compile(r"([\\*_~`|<>\[\]()])")
_DISCORD_LINE_START = re.compile(r"(?m)^(\s*)(?:([#+-])|(\d+)\.)")


def _escape_line_start(m: re.Match[str]) -> str:
    # Discord only honours a backslash before punctuation: "\#", "\-", and "1\." (not "\1.").
    return m.group(1) + ("\\" + m.group(2) if m.group(2) else m.group(3) + "\\.")


def discord_escape(raw: str) -> str:
    """API text → inert Discord markdown (backslash escapes; mentions broken)."""
    text = _DISCORD_SPECIAL.sub(r"\\\1", clean(raw))
    return break_mentions(_DISCORD_LINE_START.sub(_escape_line_start, text))


def discord_code(raw: str) -> str:
    """API text for the inside of a Discord code span or code block."""
    return break_mentions(clean(raw).replace("`", CODE_BACKTICK))


# ---------------------------------------------------------------------------------------- payloads


def embed_length(embed: Mapping[str, Any]) -> int:
    """What Discord counts towards the 6000-character embed total."""
    total = ulen(embed.get("title", "")) + ulen(embed.get("description", ""))
    total += sum(ulen(f.get("name", "")) + ulen(f.get("value", "")) for f in embed.get("fields", ()))
    total += ulen(embed.get("footer", {}).get("text", "")) + ulen(embed.get("author", {}).get("name", ""))
    return total


def discord_payload(event: Event, *, template: str | None = None) -> dict[str, Any]:
    """A Discord webhook message: a one-line ``content`` and one embed; mentions never parsed."""
    no_mentions: dict[str, Any] = {"allowed_mentions": {"parse": []}}
    if template is not None:
        content = cut(render_template(template, event, discord_escape), DISCORD_CONTENT_MAX)
        return {"content": content, **no_mentions}
    v = view(event)
    technique = fit(v.technique or "(technique unknown)", TECHNIQUE_MAX, discord_escape)
    run = f"`{discord_code(v.run_id)}`"
    content = f"{v.marker} **{v.title}** · {technique} · {run}"
    if v.failed and v.error_code:
        content += f" · `{discord_code(v.error_code)}`"
    title_head = f"{v.marker} {v.title}: "
    fields: list[dict[str, Any]] = [{"name": "Run", "value": run, "inline": True}]
    if v.failed:
        value = f"`{discord_code(v.error_code)}`" if v.error_code else "—"
        fields.append({"name": "Error code", "value": value, "inline": True})
    fields += [
        {"name": "Duration", "value": v.duration or "—", "inline": True},
        {"name": "Cost", "value": v.cost or "—", "inline": True},
    ]
    if v.project_id:
        fields.append({"name": "Project", "value": f"`{discord_code(v.project_id)}`", "inline": True})
    outputs = [f"• [{discord_escape(label_text(link.label))}]({link.url})" for link in v.links]
    outputs += [f"• {discord_escape(t.label)}: “{fit(one_line(t.text), OUTPUT_TEXT_MAX, discord_escape)}”"
                for t in v.texts]
    if outputs:
        fields.append({"name": "Outputs", "value": join_within("", outputs, DISCORD_FIELD_VALUE_MAX).lstrip("\n")})
    for f in fields:
        f["value"] = cut(f["value"], DISCORD_FIELD_VALUE_MAX)
    footer = f"flora-watcher · {v.event_id}" + (" · late" if v.late else "")
    embed: dict[str, Any] = {
        "title": title_head + fit(v.technique or "(technique unknown)", DISCORD_TITLE_MAX - ulen(title_head),
                                  discord_escape),
        "color": DISCORD_COLORS.get(v.event_type, 0x808080),
        "fields": fields,
        "footer": {"text": cut(footer, DISCORD_FOOTER_MAX)},
    }
    timestamp = iso_utc(v.at_ms)
    if timestamp:
        embed["timestamp"] = timestamp
    if v.failed and v.error_message:
        head, tail = "```\n", "\n```"
        room = DISCORD_EMBED_TOTAL_MAX - embed_length(embed)
        budget = min(DISCORD_DESCRIPTION_MAX, room) - ulen(head) - ulen(tail)
        if budget > ulen(TRUNCATED):
            embed["description"] = head + fit(v.error_message, budget, discord_code) + tail
    return {"content": cut(content, DISCORD_CONTENT_MAX), "embeds": [embed], **no_mentions}


# -------------------------------------------------------------------------------- grouped messages


def _discord_group_line(v: View) -> str:
    parts = [fit(v.technique or "(technique unknown)", GROUP_LINE_TECHNIQUE_MAX, discord_escape),
             f"`{discord_code(v.run_id)}`"]
    if v.duration:
        parts.append(v.duration)
    if v.links:
        parts.append(f"[output]({v.links[0].url})")
    return "• " + " · ".join(parts)


def discord_group_payload(events: list[Event]) -> dict[str, Any]:
    """One Discord message for a group: the headline as ``content`` and embed title, the runs in embed
    descriptions (4,096 each, up to 10 embeds) within Discord's 6,000 characters for all embeds together,
    "… and N more" with the command in the last footer; mentions never parsed."""
    g = group_view(events)
    code = f"`{discord_code(g.error_code)}`" if g.error_code else ""
    content = f"{g.marker} **{g.count} runs {g.verb}**" + (f": {code}" if code else "")
    # An embed title renders markdown: the error code is escaped there as everywhere else (GPU_*ERR* stays
    # literal instead of turning ERR italic).
    head = f"{g.marker} {g.count} runs {g.verb}"
    title = head + (f": {fit(one_line(g.error_code), DISCORD_TITLE_MAX - ulen(head) - 2, discord_escape)}"
                    if g.error_code else "")
    lines = [_discord_group_line(v) for v in g.views]
    longest_footer = f"{and_more(len(lines))}: {one_line(g.command)}"
    room = DISCORD_EMBED_TOTAL_MAX - ulen(title) - ulen(longest_footer)
    n = lines_within(lines, room, 0)
    descriptions: list[str] = []
    shown = 0
    while shown < n and len(descriptions) < DISCORD_EMBEDS_MAX:
        take = max(1, lines_within(lines[shown:n], DISCORD_DESCRIPTION_MAX, 0))
        descriptions.append(cut("\n".join(lines[shown:shown + take]), DISCORD_DESCRIPTION_MAX))
        shown += take
    footer = (f"flora-watcher · {g.count} events" if shown == len(lines)
              else f"{and_more(len(lines) - shown)}: {one_line(g.command)}")
    color = DISCORD_COLORS.get(g.event_type or "", 0x808080)
    embeds: list[dict[str, Any]] = [{"description": text, "color": color} for text in descriptions or [""]]
    embeds[0] = {"title": title, **embeds[0]}
    if not embeds[0]["description"]:
        del embeds[0]["description"]
    embeds[-1]["footer"] = {"text": cut(footer, DISCORD_FOOTER_MAX)}
    return {"content": cut(content, DISCORD_CONTENT_MAX), "embeds": embeds, "allowed_mentions": {"parse": []}}


# -------------------------------------------------------------------------------------------- the sink


class DiscordSink(ChatSink[ChatOptions]):
    def __init__(self, cfg: SinkConfig[ChatOptions], *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK,
                 max_wait: float = MAX_PACING_WAIT) -> None:
        super().__init__(cfg, user_agent=user_agent, clock=clock)
        self.pacer = BucketPacer(clock, max_wait=max_wait)

    def payload(self, event: Event) -> dict[str, Any]:
        return discord_payload(event, template=self.options.template)

    def group_payload(self, events: list[Event]) -> dict[str, Any]:
        return discord_group_payload(events)

    def target(self, event: Event) -> str:
        """``?wait=true``: Discord answers 200 with the created message once it is really posted, instead of a
        bare 204 before it is, so a 2xx means delivered."""
        return with_query(super().target(event), "wait=true")


SINK = SinkType(
    name="discord", keys=CHAT_KEYS, options=ChatOptions,
    parse=lambda t: ChatOptions(**parse_chat(t)), build=DiscordSink.build,
)
