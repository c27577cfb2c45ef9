"""Discord webhook: ``content`` + one embed with ``allowed_mentions: {"parse": []}``
(``render.discord_payload``), posted with ``?wait=true``. Paced by Discord's bucket headers: when
``X-RateLimit-Remaining`` reached 0, the next send waits ``X-RateLimit-Reset-After``. A 429's ``retry_after``
(body) is reported to the dispatcher.

Keys: ``url``/``url_file``, ``template``, ``group_wait``, ``group_by`` (``http.CHAT_KEYS``)."""

from __future__ import annotations

from typing import Any

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import SinkConfig
from watcher.model import Event
from watcher.render import discord_group_payload, discord_payload
from watcher.sinks.base import SinkType
from watcher.sinks.http import CHAT_KEYS, MAX_PACING_WAIT, BucketPacer, ChatOptions, ChatSink, parse_chat, with_query


class DiscordSink(ChatSink):
    def __init__(self, cfg: SinkConfig, *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK,
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
