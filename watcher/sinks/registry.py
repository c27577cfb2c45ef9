"""The sink registry: type name → ``SinkType`` (``spec.py``). A new sink type is one module under
``watcher/sinks/`` ending with ``SINK = SinkType(...)``, plus one line in ``BUILTIN`` below.

Everything else asks the registry: the CLI and the daemon hand ``REGISTRY`` to ``config.load`` (which keys a type
takes, its parser), the daemon and ``test-sink`` build through ``build_sink``, and ``check-config`` and ``run``
ask each type's ``check`` (``validate.check_start``). Nothing the sink modules import imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.errors import ConfigError
from watcher.sinks import apprise, discord, exec, file, google_chat, slack, stdout, teams, webhook
from watcher.sinks.spec import BuildContext, Sink, SinkConfig, SinkType

BUILTIN: tuple[SinkType[Any], ...] = (
    webhook.SINK,
    slack.SINK,
    discord.SINK,
    teams.SINK,
    google_chat.SINK,
    file.SINK,
    stdout.SINK,
    exec.SINK,
    apprise.SINK,  # the optional extra flora-watcher[apprise]; the package is imported only when one is configured
)

REGISTRY: dict[str, SinkType[Any]] = {}


def register(spec: SinkType[Any]) -> None:
    """Make ``spec.name`` a configurable ``type``. Registering a name twice is a programming error."""
    if spec.name in REGISTRY and REGISTRY[spec.name] is not spec:
        raise ValueError(f"sink type {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec


def unregister(name: str) -> None:
    """Forget a registered type (tests)."""
    REGISTRY.pop(name, None)


for _spec in BUILTIN:
    register(_spec)


def build_sink(cfg: SinkConfig[Any], *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK,
               sink_types: Mapping[str, SinkType[Any]] = REGISTRY) -> Sink:
    """A sink for ``cfg`` (not started: call ``await sink.start()``). HTTP sinks send ``user_agent``
    (default ``flora-watcher/<version>``) and pace themselves on ``clock``. Raises ConfigError for a
    configuration the sink cannot use (unknown type, missing url/path/command, invalid secret or template)."""
    spec = sink_types.get(cfg.type)
    if spec is None:
        raise ConfigError(cfg.key("type"), f"unknown sink type {cfg.type!r}; choose from {', '.join(sink_types)}")
    return spec.build(cfg, BuildContext(clock=clock, user_agent=user_agent))


def sink_config(name: str, type: str, **fields: Any) -> SinkConfig[Any]:
    """A configured sink of a registered ``type`` from keyword fields, common and the type's own
    (``sink_config("journal", "file", path=p, events=("run.failed",))``): ``SinkType.configure`` by name."""
    spec = REGISTRY.get(type)
    if spec is None:
        raise TypeError(f"unknown sink type {type!r}")
    return spec.configure(name, **fields)
