"""The sink contract: what a sink is, what a sink *type* provides, and what one configured sink holds.

A leaf module: it imports only ``errors``, ``model``, ``secret`` and ``table`` (no aiohttp, no structlog, no sink
module, not ``config``). Sink modules, ``config.py``, the registry and the engine all import it; it imports none
of them (docs/architecture.md, "Import direction").

**A sink** only transports: ``send`` returns a ``SendResult`` when the receiver confirmed the event (2xx, exit 0,
fsync done), and raises ``errors.DeliveryError(retryable=..., reason=..., retry_after=..., disable=...)``
otherwise. It never decides *when* to retry: the dispatcher and ``policy.py`` do. A sink never logs or raises a
secret (its URL, signing secret or custom header values). A chat sink also sends a group of events as one
message (``GroupSink.send_group``).

**A sink type** is one module under ``watcher/sinks/`` that ends with ``SINK = SinkType(...)``, plus one line in
``BUILTIN`` in ``watcher/sinks/registry.py``. Writing one:

1. A frozen dataclass of the type's settings, every field defaulted (``SinkType.configure`` builds it from
   keyword fields in code and tests). ``Secret`` values in it (also in tuples and dict values) are registered
   for log redaction and scrubbed from receivers' answers without further code (``sink_secrets``).
2. ``parse(table) -> options``: reads the type's own keys from its ``[[sinks]]`` table through ``Table``
   (typed, ``${VAR}``-interpolated reads, ``*_file`` twins via ``Table.secret``, errors keyed
   ``sinks[N].<key>``); ``check_url`` for a URL it will call. Pure. ``config.py`` reads the common keys
   (``SINK_COMMON_KEYS``) and refuses every key the type did not list in ``keys``.
3. ``build(cfg, ctx) -> Sink``: the sink, not started. It may raise ``ConfigError`` for settings it cannot use.
4. Optionally ``check(cfg)``: start-time checks of the world (a path it appends to, a program it runs),
   yielding ``ConfigError``s; and ``describe(cfg)``: short secret-free details for ``check-config``.

``tests/sinks/test_contract.py`` then runs the shared checks on it (builds, starts, sends, closes; retry
verdicts for HTTP types; no secret leaks); ``tests/sinks/test_new_sink_type.py`` is a complete type in a test.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from watcher.errors import ConfigError
from watcher.model import DEFAULT_EVENT_TYPES
from watcher.secret import Secret
from watcher.table import Table, check_secret_text, type_name

if TYPE_CHECKING:
    from watcher.clock import Clock
    from watcher.model import Event

__all__ = [
    "DEFAULT_SINK_TIMEOUT", "SINK_COMMON_KEYS", "BuildContext", "GroupSink", "SendResult", "Sink", "SinkConfig",
    "SinkType", "Table", "check_secret_text", "check_url", "delivery_targets", "sink_secrets", "type_name",
]

OptionsT = TypeVar("OptionsT")

SINK_COMMON_KEYS = ("name", "type", "events", "match", "timeout")  # read by config.py for every sink type
DEFAULT_SINK_TIMEOUT = 10.0  # seconds per send (HTTP request or exec run)


# ------------------------------------------------------------------------------------ a configured sink


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkConfig(Generic[OptionsT]):
    """One ``[[sinks]]`` entry: the keys every sink has, and ``options``, the settings of its type (the options
    dataclass of ``watcher/sinks/<type>.py``). ``SinkType.configure`` (or ``registry.sink_config``) builds one
    from keyword fields."""

    name: str
    type: str
    options: OptionsT
    events: tuple[str, ...] = DEFAULT_EVENT_TYPES  # resolved: defaults to [watch].events
    match: dict[str, tuple[str, ...]] = field(default_factory=dict)  # config.MATCH_KEYS → glob patterns
    timeout: float = DEFAULT_SINK_TIMEOUT
    where: str = field(default="", compare=False)  # "sinks[2]": where it was configured, for error keys

    def key(self, name: str) -> str:
        """The dotted path of one of this sink's keys in messages: ``sinks[2].path``."""
        return f"{self.where or f'sinks[{self.name!r}]'}.{name}"


def sink_secrets(sink: SinkConfig[Any]) -> list[Secret]:
    """Every ``Secret`` in a sink's options: fields, tuple items and dict values."""
    found: list[Secret] = []
    if not dataclasses.is_dataclass(sink.options) or isinstance(sink.options, type):
        return found
    for f in dataclasses.fields(sink.options):
        value = getattr(sink.options, f.name)
        items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple | list) else (value,)
        found.extend(item for item in items if isinstance(item, Secret))
    return found


def delivery_targets(sinks: Iterable[SinkConfig[Any]]) -> tuple[SinkConfig[Any], ...]:
    """Where deliveries go: every configured sink, or, for a type whose options split it (``targets(cfg)``, the
    apprise sink: one per URL), each of its parts. A target is a configured sink of its own name
    (``alerts:tgram``): the sweep routes events to it, the outbox holds one delivery per (event, target), and it
    has its own worker, retries, breaker, dead letters and health. Pure."""
    out: list[SinkConfig[Any]] = []
    for sink in sinks:
        split = getattr(sink.options, "targets", None)
        out.extend(split(sink) if callable(split) else (sink,))
    return tuple(out)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, key: str, *, allow_query: bool = True) -> None:
    """http(s) URL with a host; ``http://`` only for loopback hosts. Errors never echo the URL."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ConfigError(key, "URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(key, "not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(key, "must be an https:// URL (http:// only for loopback hosts)")
    host = parts.hostname
    if not host:
        raise ConfigError(key, "URL has no host")
    if scheme == "http" and not _is_loopback(host):
        raise ConfigError(key, "http:// is only allowed for loopback hosts (127.0.0.0/8, ::1, localhost); use https://")
    if not allow_query and (parts.query or parts.fragment):
        raise ConfigError(key, "must not have a query string or fragment")


# ------------------------------------------------------------------------------------------- a sink


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the receiver answered, for ``test-sink`` and debug logs. ``detail`` is never a secret."""

    status: int | None = None  # HTTP status, exec exit code, None for file/stdout
    detail: str = ""  # a short, secret-free summary (e.g. first 200 chars of the response body)


class Sink(Protocol):
    name: str
    config: SinkConfig[Any]

    async def start(self) -> None:
        """Open what the sink needs (HTTP session, file). Called once before the first ``send``."""

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        """Deliver one event. ``body`` is the event's stored JSON bytes (``Event.body()``), passed so every retry
        sends exactly the same bytes; sinks that render a message ignore it. Raises ``DeliveryError``."""

    async def close(self) -> None:
        """Release resources. Safe to call twice, and after a failed ``start``."""


@runtime_checkable
class GroupSink(Sink, Protocol):
    """A sink that can send several events as one message (the chat sinks). Its options have ``group_wait``
    (seconds to wait for more) and ``group_by`` (what makes events one message); the dispatcher forms the
    groups and records a group's deliveries together."""

    async def send_group(self, events: list[Event]) -> SendResult:
        """Deliver ``events`` as one message; a group of one is ``send``'s message. Raises ``DeliveryError``."""


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A sink that writes many events at once (the file sink: one write, one fsync); the dispatcher hands it
    batches of due deliveries and records their outcomes together."""

    async def send_many(self, events: list[Event], bodies: list[bytes | None]) -> SendResult:
        """Deliver every event of ``events`` (``bodies``: their stored JSON, as for ``send``), all or none.
        Raises ``DeliveryError``."""


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What the daemon hands every sink it builds: HTTP sinks send ``user_agent`` (None: the default
    ``flora-watcher/<version>``) and pace themselves on ``clock``."""

    clock: Clock
    user_agent: str | None = None


# -------------------------------------------------------------------------------------- a sink type


def _no_checks(cfg: SinkConfig[Any]) -> Iterable[ConfigError]:
    return ()


def _no_details(cfg: SinkConfig[Any]) -> Iterable[str]:
    return ()


@dataclass(frozen=True, slots=True)
class SinkType(Generic[OptionsT]):
    """One sink type: everything the config, the daemon, ``check-config`` and ``test-sink`` need from it.

    - ``name``: the ``type = "..."`` value.
    - ``keys``: the TOML keys this type accepts besides ``SINK_COMMON_KEYS``. Any other key is an error naming
      it (``sinks[2].format: does not apply to a webhook sink``).
    - ``options``: the frozen dataclass of this type's settings, every field defaulted.
    - ``parse(table) -> options``: reads ``keys`` from the ``[[sinks]]`` table. Pure.
    - ``build(cfg, ctx) -> Sink``: a sink, not started.
    - ``check(cfg) -> ConfigErrors``: start-time checks of the world, run by ``check-config`` and by ``run`` at
      start through ``watcher.validate``. Yields, never raises.
    - ``describe(cfg) -> lines``: short secret-free details for ``check-config``'s summary.
    """

    name: str
    keys: tuple[str, ...]
    options: type[OptionsT]
    parse: Callable[[Table], OptionsT]
    build: Callable[[SinkConfig[OptionsT], BuildContext], Sink]
    check: Callable[[SinkConfig[OptionsT]], Iterable[ConfigError]] = _no_checks
    describe: Callable[[SinkConfig[OptionsT]], Iterable[str]] = _no_details

    def configure(self, name: str, *, events: tuple[str, ...] = DEFAULT_EVENT_TYPES,
                  match: Mapping[str, tuple[str, ...]] | None = None, timeout: float = DEFAULT_SINK_TIMEOUT,
                  where: str = "", **fields: Any) -> SinkConfig[OptionsT]:
        """A configured sink of this type from keyword fields: the common ones, and the options' own
        (``file.SINK.configure("journal", path=p)``); what ``parse`` reads from TOML, for code and tests."""
        return SinkConfig(name=name, type=self.name, options=self.options(**fields), events=events,
                          match=dict(match or {}), timeout=timeout, where=where)
