"""Microsoft Teams through a Workflows ("When a Teams webhook request is received") URL: one Adaptive Card
(``render.teams_payload``), never the retired Office 365 connector MessageCard."""

from __future__ import annotations

from typing import Any

from watcher.model import Event
from watcher.render import teams_payload
from watcher.sinks.http import ChatSink


class TeamsSink(ChatSink):
    def payload(self, event: Event) -> dict[str, Any]:
        return teams_payload(event, template=self.config.template)
