"""Google Chat incoming webhook: a ``text`` message (``render.google_chat_payload``), threaded per run or per
project (``thread``): ``thread.threadKey`` in the body and ``messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_
THREAD`` in the query, so the first message starts the thread and later ones reply in it. Paced to one
message per second per webhook (Chat's per-space write quota).

Keys: ``url``/``url_file``, ``template``, ``group_wait``, ``group_by`` (``http.CHAT_KEYS``),
``thread`` (run | project | none; default run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import SinkConfig, Table
from watcher.errors import ConfigError
from watcher.model import Event
from watcher.render import google_chat_group_payload, google_chat_payload, google_chat_thread_key
from watcher.sinks.base import SinkType
from watcher.sinks.http import CHAT_KEYS, ChatOptions, ChatSink, IntervalPacer, parse_chat, with_query

GOOGLE_CHAT_INTERVAL = 1.0
REPLY_OPTION = "messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
THREAD_MODES = ("run", "project", "none")


@dataclass(frozen=True, slots=True)
class GoogleChatOptions(ChatOptions):
    thread: str = "run"  # "run" | "project" | "none"


def parse(t: Table) -> GoogleChatOptions:
    return GoogleChatOptions(**parse_chat(t), thread=t.choice("thread", THREAD_MODES, "run"))


def with_reply_option(url: str) -> str:
    """``url`` with the reply option appended to its query (the URL's own ``key``/``token`` kept as is)."""
    return with_query(url, REPLY_OPTION)


class GoogleChatSink(ChatSink):
    def __init__(self, cfg: SinkConfig, *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK,
                 min_interval: float = GOOGLE_CHAT_INTERVAL) -> None:
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
