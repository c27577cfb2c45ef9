"""Generic webhook: ``POST`` of the event's exact JSON, optionally signed (CONTRACT §5).

Headers: ``Content-Type: application/json``, ``User-Agent: flora-watcher/<version>``, the sink's configured
``headers`` (values are secrets), and the signature headers of ``signature`` (``signing.py``): Standard
Webhooks (``webhook-id``/``webhook-timestamp``/``webhook-signature``) or FLORA's (``Flora-Signature``,
``Flora-Webhook-Id``, ``Flora-Event``). The timestamp is taken at send time, so every retry is signed afresh;
the id is the event id, stable across retries and restarts.
"""

from __future__ import annotations

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import RESERVED_HEADERS, SinkConfig
from watcher.errors import ConfigError
from watcher.model import Event
from watcher.render import event_body
from watcher.signing import signature_headers, signing_keys
from watcher.sinks.base import SendResult
from watcher.sinks.http import HttpSink


class WebhookSink(HttpSink):
    def __init__(self, cfg: SinkConfig, *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(cfg, user_agent=user_agent, clock=clock)
        try:
            self._keys = signing_keys(cfg.signature, [s.reveal() for s in cfg.secrets])
        except ValueError as exc:
            raise ConfigError(f"sinks.{cfg.name}.secret", str(exc)) from None
        for name, value in cfg.headers.items():
            if name.lower() in RESERVED_HEADERS:
                raise ConfigError(f"sinks.{cfg.name}.headers.{name}",
                                  "set by the webhook sink itself; it cannot be overridden")
            if any(c in value.reveal() for c in "\r\n\0"):
                raise ConfigError(f"sinks.{cfg.name}.headers.{name}", "contains a line break or NUL character")

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        """POST the event. ``body``: the event's JSON exactly as stored (sent byte for byte); by default the
        compact serialisation of ``event``."""
        data = body if body is not None else event_body(event)
        headers = {name: value.reveal() for name, value in self.config.headers.items()}
        headers.update(signature_headers(
            self.config.signature, event_id=event.id, event_type=event.type,
            timestamp=self.clock.now_ms() // 1000, body=data, keys=self._keys,
        ))
        assert self.config.url is not None
        return await self.post(self.config.url.reveal(), data, headers)
