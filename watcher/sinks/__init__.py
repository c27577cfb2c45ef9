"""The sink registry: type name → ``SinkType`` (``base.py``). A new sink type is one module under
``watcher/sinks/`` ending with ``SINK = SinkType(...)``, plus one line in ``BUILTIN`` below.

Everything else asks the registry: ``config.py`` (which keys a type takes, its parser), the daemon and
``test-sink`` (``build_sink``), ``check-config`` and ``run`` (``validate.check_start`` → ``SinkType.check``).
"""

from __future__ import annotations

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import SinkConfig
from watcher.errors import ConfigError
from watcher.sinks import discord, exec, file, google_chat, slack, stdout, teams, webhook
from watcher.sinks.base import BuildContext, SendResult, Sink, SinkType

BUILTIN: tuple[SinkType, ...] = (
    webhook.SINK,
    slack.SINK,
    discord.SINK,
    teams.SINK,
    google_chat.SINK,
    file.SINK,
    stdout.SINK,
    exec.SINK,
)

REGISTRY: dict[str, SinkType] = {}

__all__ = ["REGISTRY", "BuildContext", "SendResult", "Sink", "SinkType", "build_sink", "register", "unregister"]


def register(spec: SinkType) -> None:
    """Make ``spec.name`` a configurable ``type``. Registering a name twice is a programming error."""
    if spec.name in REGISTRY and REGISTRY[spec.name] is not spec:
        raise ValueError(f"sink type {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec


def unregister(name: str) -> None:
    """Forget a registered type (tests)."""
    REGISTRY.pop(name, None)


for _spec in BUILTIN:
    register(_spec)


def build_sink(cfg: SinkConfig, *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK) -> Sink:
    """A sink for ``cfg`` (not started: call ``await sink.start()``). HTTP sinks send ``user_agent``
    (default ``flora-watcher/<version>``) and pace themselves on ``clock``. Raises ConfigError for a
    configuration the sink cannot use (unknown type, missing url/path/command, invalid secret or template)."""
    spec = REGISTRY.get(cfg.type)
    if spec is None:
        raise ConfigError(cfg.key("type"), f"unknown sink type {cfg.type!r}; choose from {', '.join(REGISTRY)}")
    return spec.build(cfg, BuildContext(clock=clock, user_agent=user_agent))
