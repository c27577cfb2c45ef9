"""Google Chat incoming webhook: a ``text`` message, threaded per run or per project (``thread``):
``thread.threadKey`` in the body and ``messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD`` in the query, so
the first message starts the thread and later ones reply in it. Paced to one message per second per webhook
(Chat's per-space write quota). Everything Google Chat-specific is here: the message (``google_chat_payload``,
``google_chat_group_payload``), threads, escaping and the text limit.

API text is neutralised as Chat's text formatting: ``<`` followed by a zero-width space (so ``<users/all>`` is
inert), ``*``, ``_``, ``~`` and backticks wrapped in zero-width spaces, ``@all`` and the like broken; ids and
error messages in code spans with backticks replaced by U+02CB.

Keys: ``url``/``url_file``, ``template``, ``group_wait``, ``group_by`` (``http.CHAT_KEYS``),
``thread`` (run | project | none; default run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.errors import ConfigError
from watcher.model import Event
from watcher.render import (
    CODE_BACKTICK,
    GROUP_LINE_TECHNIQUE_MAX,
    OUTPUT_TEXT_MAX,
    TECHNIQUE_MAX,
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
    text_of,
    ulen,
    view,
    wrap_format_chars,
)
from watcher.sinks.http import CHAT_KEYS, ChatOptions, ChatSink, IntervalPacer, parse_chat, with_query
from watcher.sinks.spec import SinkConfig, SinkType, Table

GOOGLE_CHAT_INTERVAL = 1.0
REPLY_OPTION = "messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
THREAD_MODES = ("run", "project", "none")

# ------------------------------------------------------------------------------------------ limits

GOOGLE_CHAT_TEXT_MAX = 4_096


# ------------------------------------------------------------------------------------ neutralisers


def google_chat_escape(raw: str) -> str:
    """API text → inert Google Chat text (no ``<users/…>`` mention, no formatting)."""
    text = clean(raw).replace("<", "<" + ZWSP)
    return wrap_format_chars(break_mentions(text))


def google_chat_code(raw: str) -> str:
    """API text for the inside of a Google Chat code span or code block."""
    return break_mentions(clean(raw).replace("<", "<" + ZWSP).replace("`", CODE_BACKTICK))


# ---------------------------------------------------------------------------------------- payloads


def google_chat_thread_key(event: Event, mode: str) -> str | None:
    """``thread = "run"`` → one thread per run; ``"project"`` → per project (none when the project is
    unknown); ``"none"`` → no thread."""
    data = event.data
    if mode == "run" and text_of(data.get("run_id")):
        return f"flora-run-{data['run_id']}"
    if mode == "project" and text_of(data.get("project_id")):
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
        outputs = [f"• <{link.url}|{google_chat_escape(label_text(link.label))}>" for link in v.links]
        outputs += [f"• {google_chat_escape(t.label)}: “{fit(one_line(t.text), OUTPUT_TEXT_MAX, google_chat_escape)}”"
                    for t in v.texts]
        tail = join_within("\nOutputs:", outputs, 1_500) if outputs else ""
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


# -------------------------------------------------------------------------------- grouped messages


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
    more = f"{and_more(len(lines))}: `{google_chat_code(g.command)}`"
    n = lines_within(lines, GOOGLE_CHAT_TEXT_MAX - ulen(head) - 2, ulen(more) + 1)
    text = head + "\n" + "\n".join(lines[:n])
    if n < len(lines):
        text += "\n" + f"{and_more(len(lines) - n)}: `{google_chat_code(g.command)}`"
    payload: dict[str, Any] = {"text": cut(text, GOOGLE_CHAT_TEXT_MAX)}
    if thread_key:
        payload["thread"] = {"threadKey": thread_key}
    return payload


# -------------------------------------------------------------------------------------------- the sink


@dataclass(frozen=True, slots=True)
class GoogleChatOptions(ChatOptions):
    thread: str = "run"  # "run" | "project" | "none"


def parse(t: Table) -> GoogleChatOptions:
    return GoogleChatOptions(**parse_chat(t), thread=t.choice("thread", THREAD_MODES, "run"))


def with_reply_option(url: str) -> str:
    """``url`` with the reply option appended to its query (the URL's own ``key``/``token`` kept as is)."""
    return with_query(url, REPLY_OPTION)


class GoogleChatSink(ChatSink[GoogleChatOptions]):
    def __init__(self, cfg: SinkConfig[GoogleChatOptions], *, user_agent: str | None = None,
                 clock: Clock = SYSTEM_CLOCK, min_interval: float = GOOGLE_CHAT_INTERVAL) -> None:
        super().__init__(cfg, user_agent=user_agent, clock=clock)
        if cfg.options.thread not in THREAD_MODES:
            raise ConfigError(cfg.key("thread"), f"must be one of {', '.join(THREAD_MODES)}")
        self.pacer = IntervalPacer(min_interval, clock)

    def payload(self, event: Event) -> dict[str, Any]:
        return google_chat_payload(event, template=self.options.template,
                                   thread_key=google_chat_thread_key(event, self.options.thread))

    def target(self, event: Event) -> str:
        url = super().target(event)
        return with_reply_option(url) if google_chat_thread_key(event, self.options.thread) else url

    def _group_thread(self, events: list[Event]) -> str | None:
        """A group replies in its project's thread when ``thread = "project"`` and all share one project;
        it spans several runs, so never in a run's thread."""
        if self.options.thread != "project":
            return None
        keys = {google_chat_thread_key(e, "project") for e in events}
        return keys.pop() if len(keys) == 1 else None

    def group_payload(self, events: list[Event]) -> dict[str, Any]:
        return google_chat_group_payload(events, thread_key=self._group_thread(events))

    def group_target(self, events: list[Event]) -> str:
        assert self.options.url is not None
        url = self.options.url.reveal()
        return with_reply_option(url) if self._group_thread(events) else url


SINK = SinkType(name="google_chat", keys=(*CHAT_KEYS, "thread"), options=GoogleChatOptions, parse=parse,
                build=GoogleChatSink.build)
