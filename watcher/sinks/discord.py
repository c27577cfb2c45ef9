"""Discord webhook: ``content`` + one embed with ``allowed_mentions: {"parse": []}``
(``render.discord_payload``), posted with ``?wait=true``. Paced by Discord's bucket headers: when
``X-RateLimit-Remaining`` reached 0, the next send waits ``X-RateLimit-Reset-After``. A 429's ``retry_after``
(body) is reported to the dispatcher."""

from __future__ import annotations

from typing import Any

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import SinkConfig
from watcher.model import Event
from watcher.render import discord_payload
from watcher.sinks.http import MAX_PACING_WAIT, BucketPacer, ChatSink, with_query


class DiscordSink(ChatSink):
    def __init__(self, cfg: SinkConfig, *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK,
                 max_wait: float = MAX_PACING_WAIT) -> None:
        super().__init__(cfg, user_agent=user_agent, clock=clock)
        self.pacer = BucketPacer(clock, max_wait=max_wait)

    def payload(self, event: Event) -> dict[str, Any]:
        return discord_payload(event, template=self.config.template)

    def target(self, event: Event) -> str:
        """``?wait=true``: Discord answers 200 with the created message once it is really posted, instead of a
        bare 204 before it is, so a 2xx means delivered."""
        return with_query(super().target(event), "wait=true")
