"""What every sink is, and what a sink *type* provides.

A sink only transports: ``send`` returns a ``SendResult`` when the receiver confirmed the event (2xx, exit 0,
fsync done), and raises ``errors.DeliveryError(retryable=..., reason=..., retry_after=..., disable=...)``
otherwise. It never decides *when* to retry: the dispatcher and ``policy.py`` do. A sink never logs or raises
a secret (its URL, signing secret or custom header values).

A sink type is one module under ``watcher/sinks/`` that ends with ``SINK = SinkType(...)``: the keys it
accepts in a ``[[sinks]]`` table beyond the common ones, a frozen options dataclass, the parser that reads
those keys into it, the factory that builds the sink, and optionally its start-time checks (a path it must
write, a program it must run) and the details ``check-config`` prints. ``watcher/sinks/__init__.py`` lists
the modules (one line each). See docs/architecture.md, "Sinks".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from watcher.clock import Clock
from watcher.config import SinkConfig
from watcher.model import Event

if TYPE_CHECKING:
    from watcher.config import Table
    from watcher.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the receiver answered, for ``test-sink`` and debug logs. ``detail`` is never a secret."""

    status: int | None = None  # HTTP status, exec exit code, None for file/stdout
    detail: str = ""  # a short, secret-free summary (e.g. first 200 chars of the response body)


class Sink(Protocol):
    name: str
    config: SinkConfig

    async def start(self) -> None:
        """Open what the sink needs (HTTP session, file). Called once before the first ``send``."""

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        """Deliver one event. ``body`` is the event's stored JSON bytes (``Event.body()``), passed so every retry
        sends exactly the same bytes; sinks that render a message ignore it. Raises ``DeliveryError``."""

    async def close(self) -> None:
        """Release resources. Safe to call twice, and after a failed ``start``."""


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What the daemon hands every sink it builds: HTTP sinks send ``user_agent`` (None: the default
    ``flora-watcher/<version>``) and pace themselves on ``clock``."""

    clock: Clock
    user_agent: str | None = None


def _no_checks(cfg: SinkConfig) -> Iterable[ConfigError]:
    return ()


def _no_details(cfg: SinkConfig) -> Iterable[str]:
    return ()


@dataclass(frozen=True, slots=True)
class SinkType:
    """One sink type: everything the config, the daemon, ``check-config`` and ``test-sink`` need from it.

    - ``name``: the ``type = "..."`` value.
    - ``keys``: the TOML keys this type accepts besides the common ones (``config.SINK_COMMON_KEYS``: name,
      type, events, match, timeout). Any other key is an error naming it.
    - ``options``: a frozen dataclass holding this type's settings; every field has a default, so
      ``SinkConfig(name=..., type=..., **fields)`` works in code and tests. ``Secret`` values in it (also in
      tuples and dict values) are registered for log redaction automatically.
    - ``parse(table) -> options``: reads ``keys`` from the ``[[sinks]]`` table (a ``config.Table``: typed,
      interpolated reads that raise ``ConfigError`` with the key's path, e.g. ``sinks[0].url``). Pure.
    - ``build(cfg, ctx) -> Sink``: a sink, not started.
    - ``check(cfg) -> ConfigErrors``: start-time checks of the world (a path it must write, a program it must
      run), run by ``check-config`` and by ``run`` at start through ``watcher.validate``. Yields, never raises.
    - ``describe(cfg) -> lines``: short secret-free details for ``check-config``'s summary.
    """

    name: str
    keys: tuple[str, ...]
    options: type
    parse: Callable[[Table], Any]
    build: Callable[[SinkConfig, BuildContext], Sink]
    check: Callable[[SinkConfig], Iterable[ConfigError]] = _no_checks
    describe: Callable[[SinkConfig], Iterable[str]] = _no_details
