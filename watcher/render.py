"""The shared view of an event, for every sink that renders one. Pure: no I/O, no clock.

Every message shows the status with an unmistakable marker (✅ completed, ❌ failed, ▶ started, ⏳ stalled), the
technique, the run id, the error code and message on failure, the duration (``completed_at`` - ``started_at``, or
``created_at`` when the run never reported a start), the cost and the outputs. Only http(s) URLs become
links; text outputs and anything else are shown as short quoted text.

Here: the platform-neutral model of a message (``View``, ``GroupView`` for a group of events), the terminal text
line (``text_line``), templates, length arithmetic (``ulen``, ``fit``, ``cut``) and the neutralising pieces
more than one platform uses (``clean``, ``break_mentions``, ``wrap_format_chars``, ``safe_url``,
``label_text``). Each chat platform's payload, escaping and limits live in its sink module
(``watcher/sinks/slack.py``, ``discord.py``, ``teams.py``, ``google_chat.py``).

Text that came from the API (technique names, error codes and messages, ids, output labels) is *neutralised*
for the platform it goes to, so it can neither mention anyone nor format the message: every platform module
says how in its docstring, and applies the same rules to a group's headline as to a single event.

Lengths are measured in UTF-16 code units (what the platforms count, and never fewer than code points).
Text cut to fit ends with ``…(truncated)``.
"""

from __future__ import annotations

import difflib
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

# Our own display budgets.
TECHNIQUE_MAX = 200  # a technique name longer than this is cut everywhere
OUTPUT_TEXT_MAX = 300  # one text output, quoted
LINKS_MAX = 10  # output links listed; the rest are counted
TEXT_LINE_MESSAGE_MAX = 300  # error message in the stdout line


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
CODE_BACKTICK = "\u02cb"  # MODIFIER LETTER GRAVE ACCENT: looks like a backtick, closes no code span


def break_mentions(text: str) -> str:
    """``@everyone``, ``@here``, ``@channel``, ``@all`` broken with a zero-width space (any case)."""
    return _MENTION_WORD.sub(lambda m: "@" + ZWSP + m.group(1), text)


def wrap_format_chars(text: str) -> str:
    """``*``, ``_``, ``~`` and backticks wrapped in zero-width spaces: they no longer pair up as formatting."""
    return _FORMAT_CHARS.sub(lambda m: ZWSP + m.group() + ZWSP, text)


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


def label_text(label: str) -> str:
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


def text_of(value: object) -> str | None:
    """An API value as display text; None for null, empty, objects and arrays."""
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
        kind = text_of(item.get("type"))
        label = text_of(item.get("output_id")) or f"output {i}"
        if kind:
            label = f"{label} ({kind})"
        value = item.get("url")
        url = safe_url(value) if kind != "text" else None
        if url is not None:
            links.append(Link(label, url))
        elif text_of(value) is not None:
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
        run_id=text_of(data.get("run_id")) or "(unknown run)",
        status=text_of(data.get("status")),
        technique=text_of(technique.get("name")) or text_of(model.get("model_id")),  # a generation: its model
        technique_id=text_of(technique.get("technique_id")),
        project_id=text_of(data.get("project_id")),
        workspace_id=text_of(data.get("workspace_id")),
        error_code=text_of(data.get("error_code")),
        error_message=text_of(data.get("error_message")),
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
        return text_of(value) or ""

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


# ------------------------------------------------------------------------------------ grouped messages
#
# A burst of events alike (``group_by``) becomes one chat message: a headline ("60 runs failed:
# INSUFFICIENT_CREDITS"), then one line per run (technique, run id, duration, output link) while it fits the
# platform's limits, then "… and N more" with the command that lists them all. A group of one is rendered by
# the single-event payload, exactly as before. The platforms' group payloads are in their sink modules.

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


def and_more(n: int) -> str:
    """What a grouped message says for the runs it could not list."""
    return f"… and {n} more"


def lines_within(lines: list[str], budget: int, reserve: int) -> int:
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


def join_within(head: str, lines: list[str], limit: int, sep: str = "\n") -> str:
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
