"""Microsoft Teams through a Workflows ("When a Teams webhook request is received") URL: one Adaptive Card
(``render.teams_payload``), never the retired Office 365 connector MessageCard.

Keys: ``url``/``url_file``, ``template``, ``group_wait``, ``group_by`` (``http.CHAT_KEYS``)."""

from __future__ import annotations

from typing import Any

from watcher.model import Event
from watcher.render import teams_group_payload, teams_payload
from watcher.sinks.base import SinkType
from watcher.sinks.http import CHAT_KEYS, ChatOptions, ChatSink, parse_chat


class TeamsSink(ChatSink):
    def payload(self, event: Event) -> dict[str, Any]:
        return teams_payload(event, template=self.options.template)

    def group_payload(self, events: list[Event]) -> dict[str, Any]:
        return teams_group_payload(events)


SINK = SinkType(
    name="teams", keys=CHAT_KEYS, options=ChatOptions,
    parse=lambda t: ChatOptions(**parse_chat(t)), build=TeamsSink.build,
)
