"""Configuration: TOML (CONTRACT §3) → the frozen dataclasses of ``settings.py``.

Pure core: ``parse(text, env=..., read_file=..., sink_types=...)`` takes the file's text, the environment, a file
reader and the sink types as arguments. Thin shell: ``load(path, sink_types=...)`` finds and reads the file and
calls ``parse``. Secrets are wrapped in ``Secret`` as soon as they are read, so no repr, log line or error prints
one.

Secret registration for log redaction: ``parse`` stays pure and registers nothing; ``Config.secret_values()``
lists every resolved secret and ``load`` (the shell) hands each one to ``watcher.logs.register_secret``.
Code that calls ``parse`` directly and then logs must do the same.

Error keys are dotted paths; ``sinks[0]`` is the first ``[[sinks]]`` entry. ``parse`` reports every problem it
finds (``errors.ConfigErrors``), not only the first.

Sinks: this module parses the keys every sink has (``SINK_COMMON_KEYS``) and hands the rest of a ``[[sinks]]``
table to its type's parser. It never imports a sink module: the caller passes the sink types
(``sink_types``, a name → ``SinkType`` mapping; the CLI and the daemon pass ``watcher.sinks.registry.REGISTRY``),
so the imports run sinks → spec ← config and never config → sinks. Checks of the world a config points at
(writable paths, programs) are in ``watcher/validate.py``.

The dataclasses (``Config``, ``ApiConfig``, ...) live in ``watcher/settings.py`` and ``SinkConfig`` in
``watcher/sinks/spec.py``; they are imported here too, for code that reads them from ``watcher.config``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from watcher.errors import ConfigError, raise_config_errors
from watcher.model import ALL_EVENT_TYPES, DEFAULT_EVENT_TYPES, RESOURCES
from watcher.secret import Secret
from watcher.settings import (
    DEFAULT_BASE_URL,
    DEFAULT_INGRESS_PATH,
    DEFAULT_LEASE_S,
    DEFAULT_TOLERANCE_S,
    ApiConfig,
    Config,
    DeliveryConfig,
    IngressConfig,
    ServerConfig,
    StoreConfig,
    WatchConfig,
)
from watcher.sinks.spec import DEFAULT_SINK_TIMEOUT, SINK_COMMON_KEYS, SinkConfig, SinkType, check_url
from watcher.table import MISSING, ReadContext, Table, choices_text, hint, interpolate, os_reason, type_name

__all__ = [
    "API_KEYS", "DEFAULT_BASE_URL", "DEFAULT_INGRESS_PATH", "DEFAULT_LEASE_S", "DELIVERY_KEYS", "INGRESS_KEYS",
    "MATCH_KEYS", "SERVER_KEYS", "SINK_COMMON_KEYS", "WATCH_KEYS", "ApiConfig", "Config", "DeliveryConfig",
    "IngressConfig", "ServerConfig", "SinkConfig",
    "SinkTypes", "StoreConfig", "Table", "WatchConfig", "check_url", "default_state_dir", "find_config",
    "interpolate", "load", "parse", "parse_listen", "read_text", "type_name",
]

SinkTypes = Mapping[str, SinkType[Any]]  # sink type name → its SinkType (watcher.sinks.registry.REGISTRY)
MATCH_KEYS = ("error_code", "project_id", "workspace_id", "technique_id", "technique", "model_id", "run_type")

# ------------------------------------------------------------------------------------------- constants

API_KEY_CREDENTIAL = "flora_api_key"  # file name under $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
LOCAL_CONFIG_NAME = "flora-watcher.toml"
SYSTEM_CONFIG_PATH = Path("/etc/flora-watcher/flora-watcher.toml")

TOP_KEYS = ("api", "watch", "server", "delivery", "sinks", "store", "ingress")
INGRESS_KEYS = ("listen", "path", "signing_secret", "signing_secret_file", "tolerance")
SIGNING_SECRET_CREDENTIAL = "flora_signing_secret"  # file name under $CREDENTIALS_DIRECTORY (LoadCredential=)
SIGNING_SECRET_PREFIX = "whsec_"
STORE_KEYS = ("url", "url_file", "lease")
STORE_URL_CREDENTIAL = "flora_store_url"  # file name under $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
STORE_SCHEMES = ("postgresql", "postgres")
API_KEYS = ("base_url", "api_key", "api_key_file", "timeout", "max_rps")
WATCH_KEYS = (
    "interval", "concurrency", "workspace_id", "project_id", "technique_id", "events", "state_dir",
    "poll_max_interval", "resync_interval", "resources", "stalled_after",
)
SERVER_KEYS = ("listen",)
DELIVERY_KEYS = ("retry_horizon", "backoff_initial", "backoff_max", "shutdown_grace", "keep_delivered")
_SINK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")
_API_DEFAULTS = ApiConfig()
_WATCH_DEFAULTS = WatchConfig()
_DELIVERY_DEFAULTS = DeliveryConfig()


_LISTEN_FORM = 'expected host:port, e.g. "127.0.0.1:9464" or "[::1]:9464"'


def parse_listen(listen: str, key: str = "server.listen") -> tuple[str, int]:
    """``"host:port"`` → (host, port). IPv6 hosts go in brackets (``"[::1]:9464"``); port 0 picks a free port.

    Raises ConfigError (under ``key``) with a one-line reason. The config check and the server use this one
    parser, so ``check-config`` accepts exactly the addresses the daemon can listen on.
    """
    text = listen.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(key, _LISTEN_FORM)
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key, f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if ":" in host:
            raise ConfigError(key, f"IPv6 needs brackets, e.g. [::1]:9464 (got {listen!r})")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(key, _LISTEN_FORM)
    return host, int(port_text)


# ----------------------------------------------------------------------------------------- sections


def _parse_api(t: Table, *, require_api_key: bool) -> ApiConfig:
    t.check_keys(API_KEYS)
    env = t.ctx.env
    base_key = t.key("base_url")
    base_url = t.string("base_url")
    if base_url is None:
        base_url = env.get("FLORA_BASE_URL") or DEFAULT_BASE_URL
        if base_url != DEFAULT_BASE_URL:
            base_key = f"{base_key} (from $FLORA_BASE_URL)"
    base_url = base_url.rstrip("/")
    check_url(base_url, base_key, allow_query=False)

    api_key, source = _resolve_api_key(t)
    if api_key is None and require_api_key:
        raise ConfigError(
            t.key("api_key"),
            "no API key: set api.api_key or api.api_key_file, provide the flora_api_key credential, "
            "or export FLORA_API_KEY",
        )
    return ApiConfig(
        base_url=base_url,
        api_key=api_key,
        timeout=t.number("timeout", _API_DEFAULTS.timeout),
        max_rps=t.number("max_rps", _API_DEFAULTS.max_rps),
        api_key_source=source,
    )


def _check_api_key(value: str, key: str) -> None:
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(key, "contains whitespace or control characters")


def _credential(t: Table, name: str, field: str) -> tuple[str, str] | None:
    """The systemd credential ``$CREDENTIALS_DIRECTORY/<name>`` (``LoadCredential=``) standing in for ``field``:
    (value, key path for messages), or None when there is no such credential."""
    cred_dir = t.ctx.env.get("CREDENTIALS_DIRECTORY")
    if not cred_dir:
        return None
    path = Path(cred_dir) / name
    key = f"{t.key(field)} (credential {name})"
    try:
        t.ctx.read_file(str(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {os_reason(exc)}") from None
    return t.ctx.read_secret_file(path, key), key


def _resolve_api_key(t: Table) -> tuple[Secret | None, str | None]:
    """First found wins: api_key, api_key_file, $CREDENTIALS_DIRECTORY/flora_api_key, $FLORA_API_KEY."""
    values, source = t.secret("api_key", "api_key_file")
    if source is not None:
        _check_api_key(values[0], t.key(source))
        return Secret(values[0]), source
    env = t.ctx.env
    found = _credential(t, API_KEY_CREDENTIAL, "api_key")
    if found is not None:
        value, key = found
        _check_api_key(value, key)
        return Secret(value), "credential"
    value = env.get("FLORA_API_KEY", "")
    if value:
        _check_api_key(value, f"{t.key('api_key')} (from $FLORA_API_KEY)")
        return Secret(value), "FLORA_API_KEY"
    return None, None


def _event_types(t: Table, name: str, allowed: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
    items = t.strings(name)
    if items is None:
        return default
    for value, _, key in items:
        if value not in ALL_EVENT_TYPES:
            choose = f"choose from {choices_text(ALL_EVENT_TYPES)}" + hint(value, ALL_EVENT_TYPES)
            raise ConfigError(key, f"unknown event {value!r}; {choose}")
        if value not in allowed:
            raise ConfigError(key, f"event {value!r} is not enabled in [watch].events; add it there first")
    return tuple(dict.fromkeys(str(value) for value, _, _ in items))


def default_state_dir(env: Mapping[str, str]) -> Path:
    """$STATE_DIRECTORY (its first entry), else $XDG_STATE_HOME/flora-watcher,
    else $HOME/.local/state/flora-watcher."""
    state_directory = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_directory:
        return Path(state_directory)
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "flora-watcher"
    home = env.get("HOME", "")
    if home:
        return Path(home) / ".local" / "state" / "flora-watcher"
    raise ConfigError(
        "watch.state_dir", "no default: set watch.state_dir, $STATE_DIRECTORY, $XDG_STATE_HOME or $HOME"
    )


def _parse_watch(t: Table) -> WatchConfig:
    t.check_keys(WATCH_KEYS)
    state_dir = t.path("state_dir")
    return WatchConfig(
        interval=t.number("interval", _WATCH_DEFAULTS.interval),
        concurrency=t.integer("concurrency", _WATCH_DEFAULTS.concurrency, minimum=1),
        workspace_id=t.non_empty_strings("workspace_id") or (),
        project_id=t.non_empty_strings("project_id") or (),
        technique_id=t.non_empty_strings("technique_id") or (),
        events=_event_types(t, "events", ALL_EVENT_TYPES, DEFAULT_EVENT_TYPES),
        state_dir=state_dir if state_dir is not None else default_state_dir(t.ctx.env),
        poll_max_interval=t.number("poll_max_interval", _WATCH_DEFAULTS.poll_max_interval),
        resync_interval=t.number("resync_interval", _WATCH_DEFAULTS.resync_interval),
        resources=_resources(t.non_empty_strings("resources"), t.key("resources")),
        stalled_after=t.number("stalled_after", _WATCH_DEFAULTS.stalled_after, inclusive=True),
    )


def _resources(values: tuple[str, ...] | None, key: str) -> tuple[str, ...]:
    """[watch].resources: which listings to watch (default: both), each at most once."""
    if values is None:
        return RESOURCES
    for i, value in enumerate(values):
        if value not in RESOURCES:
            choose = f"choose from {choices_text(RESOURCES)}" + hint(value, RESOURCES)
            raise ConfigError(f"{key}[{i}]", f"unknown resource {value!r}; {choose}")
    return values


def _parse_server(t: Table) -> ServerConfig:
    t.check_keys(SERVER_KEYS)
    listen = t.string("listen")
    if listen is not None:
        parse_listen(listen, t.key("listen"))
    return ServerConfig(listen=listen)


def _parse_delivery(t: Table) -> DeliveryConfig:
    t.check_keys(DELIVERY_KEYS)
    initial = t.number("backoff_initial", _DELIVERY_DEFAULTS.backoff_initial)
    maximum = t.number("backoff_max", _DELIVERY_DEFAULTS.backoff_max)
    if maximum < initial:
        raise ConfigError(t.key("backoff_max"), f"must be at least backoff_initial ({initial:g})")
    return DeliveryConfig(
        retry_horizon=t.number("retry_horizon", _DELIVERY_DEFAULTS.retry_horizon),
        backoff_initial=initial,
        backoff_max=maximum,
        shutdown_grace=t.number("shutdown_grace", _DELIVERY_DEFAULTS.shutdown_grace, inclusive=True),
        keep_delivered=t.number("keep_delivered", _DELIVERY_DEFAULTS.keep_delivered),
    )


def _check_store_url(value: str, key: str) -> None:
    try:
        split = urlsplit(value)
    except ValueError:
        raise ConfigError(key, "is not a valid URL") from None
    if split.scheme not in STORE_SCHEMES:
        raise ConfigError(key, "expected a postgresql://user@host/dbname URL (leave it out for SQLite)")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ConfigError(key, "contains whitespace or control characters")


def _parse_store(t: Table) -> StoreConfig:
    """[store]: url / url_file / $CREDENTIALS_DIRECTORY/flora_store_url (first found wins), lease."""
    t.check_keys(STORE_KEYS)
    lease = t.number("lease", DEFAULT_LEASE_S)
    values, source = t.secret("url", "url_file")
    url = values[0] if source is not None else None
    found = _credential(t, STORE_URL_CREDENTIAL, "url") if url is None else None
    if found is not None:
        url, source = found[0], "credential"
    if url is None:
        return StoreConfig(lease=lease)
    _check_store_url(url, t.key("url_file" if source == "url_file" else "url"))
    return StoreConfig(url=Secret(url), lease=lease, url_source=source)


def _parse_ingress(t: Table, server: ServerConfig | None) -> IngressConfig:
    """[ingress]: listen (none: off), path, the signing secret(s) — signing_secret / signing_secret_file /
    $CREDENTIALS_DIRECTORY/flora_signing_secret, first found wins; a list while rotating — and tolerance."""
    t.check_keys(INGRESS_KEYS)
    listen = t.string("listen")
    if listen is not None:
        address = parse_listen(listen, t.key("listen"))
        if server is not None and server.listen is not None and address[1] != 0 and (
                address == parse_listen(server.listen)):
            raise ConfigError(t.key("listen"), "must differ from server.listen (the ingress is a listener of its own)")
    path = t.string("path", DEFAULT_INGRESS_PATH) or DEFAULT_INGRESS_PATH
    if not path.startswith("/") or len(path) > 200 or any(c.isspace() or ord(c) < 32 or c in "?#" for c in path):
        raise ConfigError(t.key("path"), 'expected a URL path such as "/flora/callbacks" (no query, no spaces)')
    tolerance = t.number("tolerance", DEFAULT_TOLERANCE_S, inclusive=True)
    values, source = t.secret("signing_secret", "signing_secret_file", many=True)
    key = t.key(source or "signing_secret")
    if source is None:
        found = _credential(t, SIGNING_SECRET_CREDENTIAL, "signing_secret")
        if found is not None:
            values, source, key = (found[0],), "credential", found[1]
    for value in values:
        if not value.startswith(SIGNING_SECRET_PREFIX) or len(value) <= len(SIGNING_SECRET_PREFIX):
            raise ConfigError(key, "expected the workspace's signing secret as FLORA shows it: 'whsec_…', the whole "
                                   "string (the prefix is part of the key)")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            raise ConfigError(key, "contains whitespace or control characters")
    if listen is not None and not values:
        raise ConfigError(t.key("signing_secret"),
                          "ingress.listen needs the signing secret: set ingress.signing_secret or "
                          "ingress.signing_secret_file, or provide the flora_signing_secret credential")
    return IngressConfig(listen=listen, path=path, signing_secrets=tuple(Secret(v) for v in values),
                         tolerance=tolerance, secret_source=source)


# -------------------------------------------------------------------------------------------- sinks


def _parse_match(t: Table) -> dict[str, tuple[str, ...]]:
    if not t.has("match"):
        return {}
    sub = t.table("match")
    sub.check_keys(MATCH_KEYS)
    return {name: sub.non_empty_strings(name) or () for name in sub.data}


def _parse_sink(t: Table, watch_events: tuple[str, ...], registry: SinkTypes) -> SinkConfig[Any]:
    """The common keys here; the rest goes to the sink type's own parser (``watcher/sinks/<type>.py``).
    Every problem found is reported (``ConfigErrors``), not only the first."""
    errors: list[ConfigError] = []

    def attempt(read: Callable[[], Any], default: Any = None) -> Any:
        try:
            return read()
        except ConfigError as exc:
            errors.append(exc)
            return default

    def read_name() -> str:
        name = t.required_string("name", "a unique name for logs, metrics and test-sink")
        if not _SINK_NAME_RE.match(name):
            raise ConfigError(t.key("name"), "may only contain letters, digits, '_', '.' and '-'")
        return name

    def read_type() -> str:
        sink_type = t.required_string("type", choices_text(registry))
        if sink_type not in registry:
            choose = f"choose from {choices_text(registry)}" + hint(sink_type, registry)
            raise ConfigError(t.key("type"), f"unknown sink type {sink_type!r}; {choose}")
        return sink_type

    name = attempt(read_name, "")
    sink_type = attempt(read_type)
    if sink_type is not None:
        every_key = frozenset(SINK_COMMON_KEYS).union(*(spec.keys for spec in registry.values()))
        attempt(lambda: t.check_keys((*SINK_COMMON_KEYS, *registry[sink_type].keys), elsewhere=every_key,
                                     kind=sink_type))
    events = attempt(lambda: _event_types(t, "events", watch_events, watch_events), watch_events)
    match = attempt(lambda: _parse_match(t), {})
    timeout = attempt(lambda: t.number("timeout", DEFAULT_SINK_TIMEOUT), DEFAULT_SINK_TIMEOUT)
    options = attempt(lambda: registry[sink_type].parse(t)) if sink_type is not None else None
    raise_config_errors(errors)
    return SinkConfig(name=name, type=sink_type, events=events, match=match, timeout=timeout, options=options,
                      where=t.prefix)


def _parse_sinks(root: Table, watch_events: tuple[str, ...], registry: SinkTypes) -> tuple[SinkConfig[Any], ...]:
    raw = root.data.get("sinks", MISSING)
    if raw is MISSING or raw == []:
        if "stdout" not in registry:
            raise ConfigError("sinks", "no [[sinks]] configured, and no stdout sink type to print events with")
        return (registry["stdout"].configure("console", format="text", events=watch_events),)
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError("sinks", "must be an array of tables: write each sink as a [[sinks]] section")
    sinks: list[SinkConfig[Any]] = []
    errors: list[ConfigError] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = Table(item, f"sinks[{i}]", root.ctx)
        try:
            sink = _parse_sink(t, watch_events, registry)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if sink.name in first_index:
            errors.append(ConfigError(
                t.key("name"), f"duplicate sink name {sink.name!r} (also sinks[{first_index[sink.name]}])"
            ))
            continue
        first_index[sink.name] = i
        sinks.append(sink)
    raise_config_errors(errors)
    return tuple(sinks)


# ------------------------------------------------------------------------------------------- public


def parse(
    text: str,
    *,
    env: Mapping[str, str],
    read_file: Callable[[str], str],
    sink_types: SinkTypes,
    source: Path | None = None,
    require_api_key: bool = True,
) -> Config:
    """Parse and validate config text. Pure: ``env``, ``read_file`` (raises OSError) and ``sink_types`` (what a
    ``[[sinks]]`` table's ``type`` may name) are the only inputs.

    Relative paths (``*_file``, ``path``, ``state_dir``) resolve against ``source.parent``; without a
    ``source`` they stay as given. Raises ``ConfigError`` with a dotted key and a one-line, secret-free
    message.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = f" in {source}" if source is not None else ""
        raise ConfigError("", f"invalid TOML{where}: {exc}") from None
    ctx = ReadContext(env=env, read_file=read_file, base_dir=source.parent if source is not None else None)
    root = Table(doc, "", ctx)
    errors: list[ConfigError] = []

    def attempt(read: Callable[[], Any]) -> Any:
        try:
            return read()
        except ConfigError as exc:
            errors.append(exc)
            return None

    attempt(lambda: root.check_keys(TOP_KEYS))
    api = attempt(lambda: _parse_api(root.table("api"), require_api_key=require_api_key))
    watch = attempt(lambda: _parse_watch(root.table("watch")))
    server = attempt(lambda: _parse_server(root.table("server")))
    delivery = attempt(lambda: _parse_delivery(root.table("delivery")))
    # With [watch] broken, check the sinks' events against every type, not against a guess.
    sinks = attempt(lambda: _parse_sinks(root, watch.events if watch is not None else ALL_EVENT_TYPES,
                                         sink_types))
    store = attempt(lambda: _parse_store(root.table("store")))
    ingress = attempt(lambda: _parse_ingress(root.table("ingress"), server))
    raise_config_errors(errors)
    return Config(api=api, watch=watch, server=server, delivery=delivery, sinks=sinks, source=source, store=store,
                  ingress=ingress)


def find_config(env: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file to use when ``-c`` is absent: $FLORA_WATCHER_CONFIG (even if missing, so the error
    names it), else ./flora-watcher.toml, else /etc/flora-watcher/flora-watcher.toml, else None."""
    explicit = env.get("FLORA_WATCHER_CONFIG", "")
    if explicit:
        return cwd / explicit  # an absolute path stays absolute
    for candidate in (cwd / LOCAL_CONFIG_NAME, SYSTEM_CONFIG_PATH):
        if candidate.is_file():
            return candidate
    return None


def read_text(path: str) -> str:
    """The default ``read_file``: UTF-8 text; every failure is an OSError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OSError(f"not valid UTF-8 (byte {exc.start})") from None


def load(
    path: str | Path | None = None,
    *,
    sink_types: SinkTypes,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    require_api_key: bool = True,
) -> Config:
    """Find and read the config (``path`` is ``-c FILE``), parse it, and register its secrets for redaction.

    No ``path`` and no file found anywhere → all defaults (``source=None``), so ``FLORA_API_KEY=... run``
    works without a file.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    origin = ""
    if path is not None:
        source: Path | None = cwd / path
    else:
        source = find_config(env, cwd)
        if source is not None and env.get("FLORA_WATCHER_CONFIG"):
            origin = " (from $FLORA_WATCHER_CONFIG)"
    text = ""
    if source is not None:
        try:
            text = read_text(str(source))
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {source}{origin}: {os_reason(exc)}") from None
    config = parse(text, env=env, read_file=read_text, sink_types=sink_types, source=source,
                   require_api_key=require_api_key)
    from watcher import logs

    logs.register_secrets(config.secret_values())
    return config
