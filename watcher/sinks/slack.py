"""Slack incoming webhook: ``text`` + Block Kit blocks (``render.slack_payload``), paced to about one message
per second per webhook, Slack's documented limit.

Keys: ``url``/``url_file``, ``template``, ``group_wait``, ``group_by`` (``http.CHAT_KEYS``)."""

from __future__ import annotations

from typing import Any

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import SinkConfig
from watcher.model import Event
from watcher.render import slack_group_payload, slack_payload
from watcher.sinks.base import SinkType
from watcher.sinks.http import CHAT_KEYS, ChatOptions, ChatSink, IntervalPacer, parse_chat

SLACK_INTERVAL = 1.0


class SlackSink(ChatSink):
    def __init__(self, cfg: SinkConfig, *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK,
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
