"""Sink registry: type name → implementation. A new sink is one module plus one line here."""

from __future__ import annotations

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import SINK_TYPES, SinkConfig
from watcher.errors import ConfigError
from watcher.sinks.base import SendResult, Sink
from watcher.sinks.discord import DiscordSink
from watcher.sinks.exec import ExecSink
from watcher.sinks.file import FileSink
from watcher.sinks.google_chat import GoogleChatSink
from watcher.sinks.http import HttpSink
from watcher.sinks.slack import SlackSink
from watcher.sinks.stdout import StdoutSink
from watcher.sinks.teams import TeamsSink
from watcher.sinks.webhook import WebhookSink

SINK_CLASSES: dict[str, type] = {
    "webhook": WebhookSink,
    "slack": SlackSink,
    "discord": DiscordSink,
    "teams": TeamsSink,
    "google_chat": GoogleChatSink,
    "file": FileSink,
    "stdout": StdoutSink,
    "exec": ExecSink,
}
assert set(SINK_CLASSES) == set(SINK_TYPES), "every configurable sink type needs an implementation"

__all__ = ["SINK_CLASSES", "SendResult", "Sink", "build_sink"]


def build_sink(cfg: SinkConfig, *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK) -> Sink:
    """A sink for ``cfg`` (not started: call ``await sink.start()``). HTTP sinks send ``user_agent``
    (default ``flora-watcher/<version>``) and pace themselves on ``clock``. Raises ConfigError for a
    configuration the sink cannot use (unknown type, missing url/path/command, invalid secret or template)."""
    cls = SINK_CLASSES.get(cfg.type)
    if cls is None:
        raise ConfigError(f"sinks.{cfg.name}.type",
                          f"unknown sink type {cfg.type!r}; choose from {', '.join(SINK_CLASSES)}")
    if issubclass(cls, HttpSink):
        return cls(cfg, user_agent=user_agent, clock=clock)
    return cls(cfg)
