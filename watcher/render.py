"""Event → human message for each platform. Pure: no I/O, no clock.

Every message shows the status with an unmistakable marker (✅ completed, ❌ failed, ▶ started), the technique,
the run id, the error code and message on failure, the duration (``completed_at`` - ``started_at``, or
``created_at`` when the run never reported a start), the cost and the outputs. Only http(s) URLs become
links; text outputs and anything else are shown as short quoted text.

Text that came from the API (technique names, error messages, ids, output labels) is *neutralised* for the
platform it goes to, so it can neither mention anyone nor format the message:

* Slack (mrkdwn): ``&``, ``<``, ``>`` escaped as HTML entities (so ``<!channel>`` and links stay inert);
  ``*``, ``_``, ``~`` and backticks wrapped in zero-width spaces; ``@channel``/``@here``/``@everyone``
  broken with a zero-width space; ``:word:`` emoji codes broken after the colon; ``&`` in link URLs as
  ``&amp;``; ids and error messages in code spans with backticks replaced by U+02CB (a look-alike).
* Discord (markdown): markdown characters backslash-escaped, ``@everyone``/``@here`` broken with a zero-width
  space, and every payload carries ``allowed_mentions: {"parse": []}``.
* Teams (Adaptive Card 1.4): API text goes only into ``RichTextBlock`` ``TextRun``s, which render neither
  markdown nor mentions.
* Google Chat (text): ``<`` followed by a zero-width space (so ``<users/all>`` is inert), formatting
  characters wrapped as for Slack.

Lengths are measured in UTF-16 code units (what the platforms count, and never fewer than code points).
Text cut to fit ends with ``…(truncated)``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from watcher.model import Event

TRUNCATED = "…(truncated)"
ZWSP = "\u200b"

MARKERS: dict[str, str] = {"run.completed": "✅", "run.failed": "❌", "run.started": "▶", "run.stalled": "⏳"}
TITLES: dict[str, str] = {"run.completed": "Run completed", "run.failed": "Run failed", "run.started": "Run started",
                          "run.stalled": "Run stalled"}

# Platform limits (documented by each platform).
SLACK_TEXT_MAX = 40_000  # top-level ``text``
SLACK_BLOCK_TEXT_MAX = 3_000  # section text
SLACK_FIELD_MAX = 2_000  # one section field
SLACK_HEADER_MAX = 150  # header block plain_text
DISCORD_CONTENT_MAX = 2_000
DISCORD_TITLE_MAX = 256
DISCORD_DESCRIPTION_MAX = 4_096
DISCORD_FIELD_NAME_MAX = 256
DISCORD_FIELD_VALUE_MAX = 1_024
DISCORD_FOOTER_MAX = 2_048
DISCORD_EMBED_TOTAL_MAX = 6_000  # all embeds of one message together
DISCORD_EMBEDS_MAX = 10
TEAMS_PAYLOAD_MAX_BYTES = 28_000  # Workflows webhooks refuse payloads above ~28 KB
TEAMS_ACTIONS_MAX = 5
GOOGLE_CHAT_TEXT_MAX = 4_096

# Our own display budgets.
TECHNIQUE_MAX = 200  # a technique name longer than this is cut everywhere
OUTPUT_TEXT_MAX = 300  # one text output, quoted
LINKS_MAX = 10  # output links listed; the rest are counted
TEXT_LINE_MESSAGE_MAX = 300  # error message in the stdout line

TEAMS_COLORS = {"run.completed": "Good", "run.failed": "Attention", "run.started": "Accent", "run.stalled": "Warning"}
DISCORD_COLORS = {"run.completed": 0x2EB67D, "run.failed": 0xE01E5A, "run.started": 0x3B82F6, "run.stalled": 0xF59E0B}


# ----------------------------------------------------------------------------------- text utilities

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NEWLINES = re.compile("\r\n|[\r\u2028\u2029\x85]")
_ANY_SPACE = re.compile(r"\s+")


def ulen(text: str) -> int:
    """Length in UTF-16 code units (characters outside the BMP count twice)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def clean(text: str) -> str:
    """API text made safe to display: line breaks normalised to ``\\n``, tabs to spaces, other control and
    bidi-override characters (terminal escapes, RTL spoofing) removed."""
    text = _NEWLINES.sub("\n", text).replace("\t", " ")
    return _CONTROL.sub("", text)


def one_line(text: str) -> str:
    """``clean`` and every run of whitespace (line breaks included) folded into one space."""
    return _ANY_SPACE.sub(" ", clean(text)).strip()


def _prefix_within(text: str, budget: int) -> str:
    """The longest prefix of ``text`` within ``budget`` UTF-16 code units (one pass: a character outside the BMP
    counts twice)."""
    used = 0
    for i, c in enumerate(text):
        used += 2 if ord(c) > 0xFFFF else 1
        if used > budget:
            return text[:i]
    return text


def fit(raw: str, limit: int, escape: Callable[[str], str] = lambda s: s, *, marker: str = TRUNCATED) -> str:
    """``escape(raw)`` if it fits in ``limit``; else the escaped longest prefix of ``raw`` that fits together
    with ``marker``. Cutting *before* escaping never leaves half an escape sequence behind."""
    out = escape(raw)
    if ulen(out) <= limit:
        return out
    budget = limit - ulen(marker)
    if budget <= 0:
        return _prefix_within(marker, limit)
    lo, hi = 0, len(raw)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ulen(escape(raw[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return escape(raw[:lo]).rstrip() + marker


_PARTIAL_TAIL = re.compile(r"&[#A-Za-z0-9]{0,7}\Z|(?<!\\)\\\Z")


def cut(text: str, limit: int, *, marker: str = TRUNCATED) -> str:
    """Already-rendered text cut to ``limit`` with ``marker``; a dangling ``&entity`` or ``\\`` is dropped."""
    if ulen(text) <= limit:
        return text
    budget = limit - ulen(marker)
    if budget <= 0:
        return _prefix_within(marker, limit)
    out = _PARTIAL_TAIL.sub("", _prefix_within(text, budget))
    return out.rstrip() + marker


def event_body(event: Event) -> bytes:
    """The event's exact JSON body: compact, UTF-8, keys in contract order. What webhooks and files get."""
    return event.body()


# --------------------------------------------------------------------------------- neutralisers

_MENTION_WORD = re.compile(r"@(everyone|here|channel|all)", re.IGNORECASE)  # no \b: "@everyoneX" pings too
_FORMAT_CHARS = re.compile(r"[*_~`]")
_CODE_BACKTICK = "\u02cb"  # MODIFIER LETTER GRAVE ACCENT: looks like a backtick, closes no code span


def _break_mentions(text: str) -> str:
    return _MENTION_WORD.sub(lambda m: "@" + ZWSP + m.group(1), text)


def _wrap_format_chars(text: str) -> str:
    return _FORMAT_CHARS.sub(lambda m: ZWSP + m.group() + ZWSP, text)


_EMOJI_CODE = re.compile(r":(?=[A-Za-z0-9_+'-]+:)")


def _break_emoji(text: str) -> str:
    """``:word:`` would become an emoji (or a custom one) in Slack: a zero-width space after the colon."""
    return _EMOJI_CODE.sub(":" + ZWSP, text)


def slack_escape(raw: str) -> str:
    """API text → inert Slack mrkdwn."""
    text = clean(raw).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _break_emoji(_wrap_format_chars(_break_mentions(text)))
    return re.sub(r"(?m)^&gt;", ZWSP + "&gt;", text)  # no block quote from API text


def slack_url(url: str) -> str:
    """A ``safe_url`` for the inside of a Slack ``<url|label>`` link: ``&`` as ``&amp;`` (Slack's own escaping;
    ``<`` and ``>`` are already percent-encoded)."""
    return url.replace("&", "&amp;")


def slack_code(raw: str) -> str:
    """API text for the inside of a Slack code span or code block."""
    text = clean(raw).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _break_emoji(_break_mentions(text.replace("`", _CODE_BACKTICK)))


_DISCORD_SPECIAL = re.compile(r"([\\*_~`|<>\[\]()])")
_DISCORD_LINE_START = re.compile(r"(?m)^(\s*)(?:([#+-])|(\d+)\.)")


def _escape_line_start(m: re.Match[str]) -> str:
    # Discord only honours a backslash before punctuation: "\#", "\-", and "1\." (not "\1.").
    return m.group(1) + ("\\" + m.group(2) if m.group(2) else m.group(3) + "\\.")


def discord_escape(raw: str) -> str:
    """API text → inert Discord markdown (backslash escapes; mentions broken)."""
    text = _DISCORD_SPECIAL.sub(r"\\\1", clean(raw))
    return _break_mentions(_DISCORD_LINE_START.sub(_escape_line_start, text))


def discord_code(raw: str) -> str:
    """API text for the inside of a Discord code span or code block."""
    return _break_mentions(clean(raw).replace("`", _CODE_BACKTICK))


def google_chat_escape(raw: str) -> str:
    """API text → inert Google Chat text (no ``<users/…>`` mention, no formatting)."""
    text = clean(raw).replace("<", "<" + ZWSP)
    return _wrap_format_chars(_break_mentions(text))


def google_chat_code(raw: str) -> str:
    """API text for the inside of a Google Chat code span or code block."""
    return _break_mentions(clean(raw).replace("<", "<" + ZWSP).replace("`", _CODE_BACKTICK))


_LINK_UNSAFE = str.maketrans({
    "<": "%3C", ">": "%3E", "|": "%7C", "(": "%28", ")": "%29", '"': "%22", "`": "%60", "\\": "%5C",
})


def safe_url(value: object) -> str | None:
    """``value`` as a link target when it is an absolute http(s) URL with a host, else None.

    Characters that would break a platform's link syntax (``<>|()"`\\``) are percent-encoded.
    """
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url or len(url) > 2_048 or any(c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in url):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return url.translate(_LINK_UNSAFE)


def _label_text(label: str) -> str:
    """A link label that cannot close the link syntax it sits in."""
    return label.replace("|", "\u00a6").replace(">", "\u203a").replace("]", ")").replace("[", "(")


# ------------------------------------------------------------------------------------- the view


@dataclass(frozen=True, slots=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True, slots=True)
class OutputText:
    label: str
    text: str


@dataclass(frozen=True, slots=True)
class View:
    """What every message shows, extracted from an event. Strings are raw API text (not yet neutralised)."""

    event_id: str
    event_type: str
    marker: str
    title: str
    failed: bool
    run_id: str
    status: str | None
    technique: str | None
    technique_id: str | None
    project_id: str | None
    workspace_id: str | None
    error_code: str | None
    error_message: str | None
    duration: str | None
    cost: str | None
    links: tuple[Link, ...]
    texts: tuple[OutputText, ...]
    late: bool
    at_ms: int | None  # completed_at, else started_at, else the event's created_at


def _str(value: object) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    return text if text else None


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


def duration_ms(data: Mapping[str, Any]) -> int | None:
    """``completed_at`` - (``started_at`` or ``created_at``), when both ends are known and in order."""
    end = _int(data.get("completed_at"))
    start = _int(data.get("started_at"))
    if start is None:
        start = _int(data.get("created_at"))
    if end is None or start is None or end < start:
        return None
    return end - start


def format_duration(ms: int | None) -> str:
    """``9.0s``, ``2m 05s``, ``1h 02m``; ``—`` when unknown. The one duration format: chat messages, the
    terminal and the live view all show it."""
    if ms is None or ms < 0:
        return "—"
    seconds = ms / 1000
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    hours, rest = divmod(whole, 3600)
    return f"{hours}h {rest // 60:02d}m"


def format_cost(value: object) -> str | None:
    """USD: ``$0.05``, ``$0.253``, ``$12.40``; None when not a non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    if value >= 1:
        return f"${value:,.2f}"
    whole, _, frac = f"{value:.4f}".rstrip("0").partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def iso_utc(ms: int | None) -> str | None:
    """Unix milliseconds → ``2025-11-29T07:06:40Z``."""
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


def _outputs(raw: object) -> tuple[tuple[Link, ...], tuple[OutputText, ...]]:
    links: list[Link] = []
    texts: list[OutputText] = []
    for i, item in enumerate(raw if isinstance(raw, list) else (), start=1):
        if not isinstance(item, dict):
            continue
        kind = _str(item.get("type"))
        label = _str(item.get("output_id")) or f"output {i}"
        if kind:
            label = f"{label} ({kind})"
        value = item.get("url")
        url = safe_url(value) if kind != "text" else None
        if url is not None:
            links.append(Link(label, url))
        elif _str(value) is not None:
            texts.append(OutputText(label, str(value)))
    return tuple(links), tuple(texts)


def view(event: Event) -> View:
    data = event.data
    raw_technique = data.get("technique")
    technique: dict[str, Any] = raw_technique if isinstance(raw_technique, dict) else {}
    raw_model = data.get("model")
    model: dict[str, Any] = raw_model if isinstance(raw_model, dict) else {}
    links, texts = _outputs(data.get("outputs"))
    took = duration_ms(data)
    stuck = _int(data.get("stalled_for")) if event.type == "run.stalled" else None
    at = _int(data.get("completed_at")) or _int(data.get("started_at")) or _int(event.created_at)
    return View(
        event_id=event.id,
        event_type=event.type,
        marker=MARKERS.get(event.type, "•"),
        title=TITLES.get(event.type, event.type),
        failed=event.type == "run.failed",
        run_id=_str(data.get("run_id")) or "(unknown run)",
        status=_str(data.get("status")),
        technique=_str(technique.get("name")) or _str(model.get("model_id")),  # a generation: its model
        technique_id=_str(technique.get("technique_id")),
        project_id=_str(data.get("project_id")),
        workspace_id=_str(data.get("workspace_id")),
        error_code=_str(data.get("error_code")),
        error_message=_str(data.get("error_message")),
        duration=f"stuck {format_duration(stuck)}" if stuck is not None
        else format_duration(took) if took is not None else None,
        cost=format_cost(data.get("charged_cost")),
        links=links,
        texts=texts,
        late=data.get("late") is True,
        at_ms=at,
    )


# --------------------------------------------------------------------------------------- templates

TEMPLATE_FIELDS: tuple[str, ...] = (
    "id", "type", "marker", "title", "status", "previous_status", "run_id", "run_type", "workspace_id",
    "project_id", "technique_id", "technique", "error_code", "error_message", "progress", "charged_cost",
    "cost", "duration", "created_at", "started_at", "completed_at", "poll_url", "output_url", "outputs", "late",
)
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _BlankMissing(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return ""


def template_fields(event: Event) -> dict[str, str]:
    """The flat fields a sink ``template`` may use, as raw (not yet neutralised) strings; null → ``""``."""
    data = event.data
    v = view(event)

    def s(value: object) -> str:
        return _str(value) or ""

    return {
        "id": event.id,
        "type": event.type,
        "marker": v.marker,
        "title": v.title,
        "status": s(data.get("status")),
        "previous_status": s(data.get("previous_status")),
        "run_id": v.run_id,
        "run_type": s(data.get("run_type")),
        "workspace_id": s(v.workspace_id),
        "project_id": s(v.project_id),
        "technique_id": s(v.technique_id),
        "technique": s(v.technique),
        "error_code": s(v.error_code),
        "error_message": s(v.error_message),
        "progress": s(data.get("progress")),
        "charged_cost": s(data.get("charged_cost")),
        "cost": s(v.cost),
        "duration": s(v.duration),
        "created_at": s(iso_utc(_int(data.get("created_at")))),
        "started_at": s(iso_utc(_int(data.get("started_at")))),
        "completed_at": s(iso_utc(_int(data.get("completed_at")))),
        "poll_url": s(data.get("poll_url")),
        "output_url": v.links[0].url if v.links else "",
        "outputs": str(len(v.links) + len(v.texts)),
        "late": "true" if v.late else "false",
    }


def check_template(template: str) -> None:
    """Raise ValueError (one line) unless ``template`` renders: named fields only (``{technique}``), no
    positional, attribute or index fields, no nested replacement fields, and format specs that work on text."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    for _literal, name, spec, _conversion in parsed:
        if name is None:
            continue
        if not _FIELD_NAME.match(name):
            what = "a positional field" if name == "" or name.isdigit() else f"field {{{name}}}"
            raise ValueError(f"{what} is not supported; use named fields such as {{technique}} or {{run_id}}")
        if name not in TEMPLATE_FIELDS:  # a typo would otherwise render as nothing
            close = difflib.get_close_matches(name, TEMPLATE_FIELDS, n=1)
            hint = f"did you mean {{{close[0]}}}?" if close else "see the template fields in docs/sinks.md"
            raise ValueError(f"unknown field {{{name}}} ({hint})")
        if spec and "{" in spec:
            raise ValueError(f"nested fields in the format of {{{name}}} are not supported")
    sample = _BlankMissing({name: "x" for name in TEMPLATE_FIELDS})
    try:
        template.format_map(sample)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"the template does not render: {exc}") from None


def render_template(template: str, event: Event, escape: Callable[[str], str]) -> str:
    """``template.format_map`` over the event's fields, each neutralised with ``escape``; unknown or null
    fields render empty. Raises ValueError for a template ``check_template`` refuses."""
    values = _BlankMissing({k: escape(v) if v else "" for k, v in template_fields(event).items()})
    try:
        return template.format_map(values)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"the template does not render: {exc}") from None


# ------------------------------------------------------------------------------------------ stdout


def text_line(event: Event, *, template: str | None = None) -> str:
    """One readable terminal line: marker, type, technique, run id, error, duration, cost, first link."""
    if template is not None:
        return one_line(render_template(template, event, one_line))
    v = view(event)
    parts = [f"{v.marker} {v.event_type}", fit(v.technique or "(technique unknown)", TECHNIQUE_MAX, one_line),
             one_line(v.run_id)]
    if v.failed:
        code = one_line(v.error_code) if v.error_code else "no error code"
        message = fit(v.error_message, TEXT_LINE_MESSAGE_MAX, one_line) if v.error_message else ""
        parts.append(f"{code}: {message}" if message else code)
    parts.extend(p for p in (v.duration, v.cost) if p)
    if v.links:
        parts.append(v.links[0].url)
    elif v.texts:
        parts.append("“" + fit(v.texts[0].text, 80, one_line) + "”")
    if v.late:
        parts.append("late")
    return " · ".join(parts)


# ------------------------------------------------------------------------------------------- Slack


def _slack_output_lines(v: View) -> list[str]:
    lines = [f"• <{slack_url(link.url)}|{slack_escape(_label_text(link.label))}>" for link in v.links]
    lines += [
        f"• {slack_escape(t.label)}: “{fit(one_line(t.text), OUTPUT_TEXT_MAX, slack_escape)}”" for t in v.texts
    ]
    return lines


def _join_within(head: str, lines: list[str], limit: int, sep: str = "\n") -> str:
    """``head`` + as many ``lines`` as fit in ``limit``; the rest are counted (``+3 more``)."""
    out = head
    for i, line in enumerate(lines[:LINKS_MAX]):
        more = len(lines) - i
        if ulen(out + sep + line) + len(f"{sep}+{more} more") > limit:
            return out + f"{sep}+{more} more"
        out += sep + line
    if len(lines) > LINKS_MAX:
        out += f"{sep}+{len(lines) - LINKS_MAX} more"
    return out


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
        text = _join_within("*Outputs*", outputs, SLACK_BLOCK_TEXT_MAX)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    context = f"flora-watcher · `{v.event_id}`"
    if v.late:
        context += " · late: it happened while the watcher was stopped"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": cut(summary, SLACK_TEXT_MAX), "blocks": blocks}


# ----------------------------------------------------------------------------------------- Discord


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
    outputs = [f"• [{discord_escape(_label_text(link.label))}]({link.url})" for link in v.links]
    outputs += [f"• {discord_escape(t.label)}: “{fit(one_line(t.text), OUTPUT_TEXT_MAX, discord_escape)}”"
                for t in v.texts]
    if outputs:
        fields.append({"name": "Outputs", "value": _join_within("", outputs, DISCORD_FIELD_VALUE_MAX).lstrip("\n")})
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


# ------------------------------------------------------------------------------------------- Teams


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


# ------------------------------------------------------------------------------------- Google Chat


def google_chat_thread_key(event: Event, mode: str) -> str | None:
    """``thread = "run"`` → one thread per run; ``"project"`` → per project (none when the project is
    unknown); ``"none"`` → no thread."""
    data = event.data
    if mode == "run" and _str(data.get("run_id")):
        return f"flora-run-{data['run_id']}"
    if mode == "project" and _str(data.get("project_id")):
        return f"flora-project-{data['project_id']}"
    return None


def google_chat_payload(
    event: Event, *, template: str | None = None, thread_key: str | None = None
) -> dict[str, Any]:
    """A Google Chat incoming-webhook message: ``text`` (≤ 4096) and, with ``thread_key``, ``thread``."""
    if template is not None:
        text = cut(render_template(template, event, google_chat_escape), GOOGLE_CHAT_TEXT_MAX)
    else:
        v = view(event)
        technique = fit(v.technique or "(technique unknown)", TECHNIQUE_MAX, google_chat_escape)
        facts = [f"Run: `{google_chat_code(v.run_id)}`"]
        if v.failed:
            facts.append(f"Error code: `{google_chat_code(v.error_code)}`" if v.error_code else "Error code: —")
        facts += [f"Duration: {v.duration or '—'}", f"Cost: {v.cost or '—'}"]
        if v.project_id:
            facts.append(f"Project: `{google_chat_code(v.project_id)}`")
        head = f"{v.marker} *{v.title}*: {technique}\n" + " · ".join(facts)
        outputs = [f"• <{link.url}|{google_chat_escape(_label_text(link.label))}>" for link in v.links]
        outputs += [f"• {google_chat_escape(t.label)}: “{fit(one_line(t.text), OUTPUT_TEXT_MAX, google_chat_escape)}”"
                    for t in v.texts]
        tail = _join_within("\nOutputs:", outputs, 1_500) if outputs else ""
        tail += f"\nflora-watcher · {v.event_id}{' · late' if v.late else ''}"
        middle = ""
        if v.failed and v.error_message:
            budget = GOOGLE_CHAT_TEXT_MAX - ulen(head) - ulen(tail) - len("\n```\n\n```")
            middle = "\n```\n" + fit(v.error_message, budget, google_chat_code) + "\n```"
        text = cut(head + middle + tail, GOOGLE_CHAT_TEXT_MAX)
    payload: dict[str, Any] = {"text": text}
    if thread_key:
        payload["thread"] = {"threadKey": thread_key}
    return payload


# ------------------------------------------------------------------------------------ grouped messages
#
# A burst of events alike (``group_by``) becomes one chat message: a headline ("60 runs failed:
# INSUFFICIENT_CREDITS"), then one line per run (technique, run id, duration, output link) while it fits the
# platform's limits, then "… and N more" with the command that lists them all. A group of one is rendered by
# the single-event payloads above, exactly as before.

VERBS: dict[str, str] = {"run.completed": "completed", "run.failed": "failed", "run.started": "started",
                         "run.stalled": "stalled"}
GROUP_LINE_TECHNIQUE_MAX = 60


@dataclass(frozen=True, slots=True)
class GroupView:
    """What a grouped message shows. Strings are raw API text (not yet neutralised)."""

    count: int
    event_type: str | None  # None when the group mixes types
    marker: str
    verb: str
    error_code: str | None  # when every run failed with this same code
    views: tuple[View, ...]
    command: str  # the CLI command that lists every event of the group

    @property
    def headline(self) -> str:
        """``60 runs failed: INSUFFICIENT_CREDITS`` (raw: the error code is API text)."""
        text = f"{self.count} runs {self.verb}"
        return f"{text}: {self.error_code}" if self.error_code else text


def _common(values: list[str | None]) -> str | None:
    return values[0] if values and all(v == values[0] for v in values) else None


def events_command(event_type: str | None, error_code: str | None, project_id: str | None) -> str:
    """``flora-watcher events --type run.failed --error-code X``: lists the events of a group."""
    import shlex

    parts = ["flora-watcher", "events"]
    if event_type:
        parts += ["--type", event_type]
    if error_code:
        parts += ["--error-code", shlex.quote(one_line(error_code))]
    if project_id:
        parts += ["--project", shlex.quote(one_line(project_id))]
    return " ".join(parts)


def group_view(events: list[Event]) -> GroupView:
    views = tuple(view(e) for e in events)
    event_type = _common([v.event_type for v in views])
    code = _common([v.error_code for v in views]) if event_type == "run.failed" else None
    return GroupView(
        count=len(views),
        event_type=event_type,
        marker=MARKERS.get(event_type or "", "•"),
        verb=VERBS.get(event_type or "", "ended"),
        error_code=code,
        views=views,
        command=events_command(event_type, code, _common([v.project_id for v in views])),
    )


def _more(n: int) -> str:
    return f"… and {n} more"


def _fill(lines: list[str], budget: int, reserve: int) -> int:
    """How many of ``lines`` (joined by newlines) fit in ``budget``, keeping ``reserve`` for a "more" line
    when not all fit."""
    used = 0
    for i, line in enumerate(lines):
        cost = ulen(line) + (1 if i else 0)
        left = len(lines) - i - 1
        if used + cost + (reserve if left else 0) > budget:
            return i
        used += cost
    return len(lines)


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
    more_line = "{more}: `" + slack_code(g.command) + "`"
    sections: list[str] = []
    shown = 0
    max_sections = 45
    while shown < len(lines) and len(sections) < max_sections:
        n = _fill(lines[shown:], SLACK_BLOCK_TEXT_MAX, 0)
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
        context = more_line.format(more=_more(len(lines) - shown))
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(context, SLACK_FIELD_MAX)}]})
    return {"text": cut(headline, SLACK_TEXT_MAX), "blocks": blocks}


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
    title = fit(f"{g.marker} {one_line(g.headline)}", DISCORD_TITLE_MAX)
    lines = [_discord_group_line(v) for v in g.views]
    longest_footer = f"{_more(len(lines))}: {one_line(g.command)}"
    room = DISCORD_EMBED_TOTAL_MAX - ulen(title) - ulen(longest_footer)
    n = _fill(lines, room, 0)
    descriptions: list[str] = []
    shown = 0
    while shown < n and len(descriptions) < DISCORD_EMBEDS_MAX:
        take = max(1, _fill(lines[shown:n], DISCORD_DESCRIPTION_MAX, 0))
        descriptions.append(cut("\n".join(lines[shown:shown + take]), DISCORD_DESCRIPTION_MAX))
        shown += take
    footer = (f"flora-watcher · {g.count} events" if shown == len(lines)
              else f"{_more(len(lines) - shown)}: {one_line(g.command)}")
    color = DISCORD_COLORS.get(g.event_type or "", 0x808080)
    embeds: list[dict[str, Any]] = [{"description": text, "color": color} for text in descriptions or [""]]
    embeds[0] = {"title": title, **embeds[0]}
    if not embeds[0]["description"]:
        del embeds[0]["description"]
    embeds[-1]["footer"] = {"text": cut(footer, DISCORD_FOOTER_MAX)}
    return {"content": cut(content, DISCORD_CONTENT_MAX), "embeds": embeds, "allowed_mentions": {"parse": []}}


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
    head = {"type": "TextBlock", "text": f"{g.marker} {one_line(g.headline)}", "weight": "Bolder", "size": "Large",
            "color": TEAMS_COLORS.get(g.event_type or "", "Default"), "wrap": True}
    rows = [_teams_group_line(v) for v in g.views]

    def message(shown: int) -> dict[str, Any]:
        foot = (f"flora-watcher \u00b7 {g.count} events" if shown == len(rows)
                else f"{_more(len(rows) - shown)}: {one_line(g.command)}")
        body = [head, *rows[:shown], {"type": "TextBlock", "text": foot, "isSubtle": True, "size": "Small",
                                      "wrap": True}]
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


def _google_chat_group_line(v: View) -> str:
    parts = [fit(v.technique or "(technique unknown)", GROUP_LINE_TECHNIQUE_MAX, google_chat_escape),
             f"`{google_chat_code(v.run_id)}`"]
    if v.duration:
        parts.append(v.duration)
    if v.links:
        parts.append(f"<{v.links[0].url}|output>")
    return "• " + " · ".join(parts)


def google_chat_group_payload(events: list[Event], *, thread_key: str | None = None) -> dict[str, Any]:
    """One Google Chat ``text`` message for a group (≤ 4,096): headline, runs, "… and N more" with the command."""
    g = group_view(events)
    code = f"`{google_chat_code(g.error_code)}`" if g.error_code else ""
    head = f"{g.marker} *{g.count} runs {g.verb}*" + (f": {code}" if code else "")
    lines = [_google_chat_group_line(v) for v in g.views]
    more = f"{_more(len(lines))}: `{google_chat_code(g.command)}`"
    n = _fill(lines, GOOGLE_CHAT_TEXT_MAX - ulen(head) - 2, ulen(more) + 1)
    text = head + "\n" + "\n".join(lines[:n])
    if n < len(lines):
        text += "\n" + f"{_more(len(lines) - n)}: `{google_chat_code(g.command)}`"
    payload: dict[str, Any] = {"text": cut(text, GOOGLE_CHAT_TEXT_MAX)}
    if thread_key:
        payload["thread"] = {"threadKey": thread_key}
    return payload
