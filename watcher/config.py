"""Configuration: TOML (CONTRACT §3) → frozen, validated dataclasses.

Pure core: ``parse(text, env=..., read_file=...)`` takes the file's text, the environment and a file reader
as arguments. Thin shell: ``load(path)`` finds and reads the file and calls ``parse``.
Secrets are wrapped in ``Secret`` as soon as they are read, so no repr, log line or error prints one.

Secret registration for log redaction: ``parse`` stays pure and registers nothing; ``Config.secret_values()``
lists every resolved secret and ``load`` (the shell) hands each one to ``watcher.logs.register_secret``.
Code that calls ``parse`` directly and then logs must do the same.

Error keys are dotted paths; ``sinks[0]`` is the first ``[[sinks]]`` entry. ``parse`` reports every problem it
finds (``errors.ConfigErrors``), not only the first.

Sinks: this module parses the keys every sink has (``SINK_COMMON_KEYS``) and hands the rest of a ``[[sinks]]``
table to its type's parser (``watcher/sinks/<type>.py``, found through ``watcher.sinks.REGISTRY``); the result
is ``SinkConfig.options``. Checks of the world a config points at (writable paths, programs) are in
``watcher/validate.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from watcher.errors import ConfigError, raise_config_errors
from watcher.model import ALL_EVENT_TYPES, DEFAULT_EVENT_TYPES, RESOURCES
from watcher.secret import Secret

DEFAULT_BASE_URL = "https://app.flora.ai/api/v1"
MATCH_KEYS = ("error_code", "project_id", "workspace_id", "technique_id", "technique", "model_id", "run_type")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key: Secret | None = None
    timeout: float = 30.0  # seconds per request
    max_rps: float = 5.0  # all API requests together
    # where the key came from (never the key): "api_key" | "api_key_file" | "credential" | "FLORA_API_KEY"
    api_key_source: str | None = None


@dataclass(frozen=True, slots=True)
class WatchConfig:
    interval: float = 5.0  # seconds between sweep starts
    concurrency: int = 8  # poll requests in flight at most
    workspace_id: tuple[str, ...] = ()
    project_id: tuple[str, ...] = ()
    technique_id: tuple[str, ...] = ()
    events: tuple[str, ...] = DEFAULT_EVENT_TYPES
    state_dir: Path = Path(".")
    poll_max_interval: float = 60.0  # cap of the per-run poll backoff, seconds
    resync_interval: float = 300.0  # seconds between full listings of the active set
    resources: tuple[str, ...] = RESOURCES  # listings to watch: "technique-runs", "generations"
    stalled_after: float = 1800.0  # seconds pending or running without progress → run.stalled; 0 = off


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str | None = None  # "host:port" for /metrics, /healthz, /readyz; None = off


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    retry_horizon: float = 72 * 3600.0  # seconds after which a retrying delivery becomes a dead letter
    backoff_initial: float = 1.0  # first retry delay cap, seconds (full jitter below it)
    backoff_max: float = 600.0  # largest retry delay cap, seconds
    shutdown_grace: float = 10.0  # seconds in-flight deliveries may take to finish on SIGTERM
    keep_delivered: float = 7 * 24 * 3600.0  # seconds delivered events stay in the state store, then pruned


@dataclass(frozen=True, slots=True, init=False)
class SinkConfig:
    """One ``[[sinks]]`` entry: the keys every sink has, and ``options``, the settings of its type (the options
    dataclass of ``watcher/sinks/<type>.py``).

    ``SinkConfig(name=..., type="file", path=...)`` builds the options from keyword fields (code and tests);
    ``SinkConfig(..., options=FileOptions(...))`` takes them as they are.
    """

    name: str
    type: str
    events: tuple[str, ...] = DEFAULT_EVENT_TYPES  # resolved: defaults to [watch].events
    match: dict[str, tuple[str, ...]] = field(default_factory=dict)  # MATCH_KEYS → glob patterns
    timeout: float = 10.0  # seconds per send (HTTP request or exec run)
    options: Any = None  # the type's options dataclass; None only for a type no module registered
    where: str = field(default="", compare=False)  # "sinks[2]": where it was configured, for error keys

    def __init__(self, name: str, type: str, events: tuple[str, ...] = DEFAULT_EVENT_TYPES,
                 match: dict[str, tuple[str, ...]] | None = None, timeout: float = 10.0, options: Any = None,
                 where: str = "", **fields: Any) -> None:
        if options is None:
            from watcher.sinks import REGISTRY

            spec = REGISTRY.get(type)
            if spec is not None:
                options = spec.options(**fields)
            elif fields:
                raise TypeError(f"unknown sink type {type!r}: cannot take {', '.join(fields)}")
        elif fields:
            raise TypeError("give either options or the type's fields, not both")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "events", events)
        object.__setattr__(self, "match", {} if match is None else match)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "where", where)

    def key(self, name: str) -> str:
        """The dotted path of one of this sink's keys in messages: ``sinks[2].path``."""
        return f"{self.where or f'sinks[{self.name!r}]'}.{name}"


DEFAULT_LEASE_S = 10.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: Secret | None = None  # postgresql://… (several instances share it); None = SQLite in [watch].state_dir
    lease: float = DEFAULT_LEASE_S  # seconds a sweeper's lease lasts without renewal
    url_source: str | None = None  # "url" | "url_file" | "credential" (never the URL)

    @property
    def backend(self) -> str:
        return "sqlite" if self.url is None else "postgresql"


@dataclass(frozen=True, slots=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    sinks: tuple[SinkConfig, ...] = ()
    source: Path | None = None  # the file it came from, for messages
    store: StoreConfig = field(default_factory=StoreConfig)

    def secret_values(self) -> tuple[str, ...]:
        """Every resolved secret as plain text, for ``watcher.logs.register_secret``. Never log this."""
        values: list[str] = []
        if self.api.api_key is not None:
            values.append(self.api.api_key.reveal())
        for sink in self.sinks:
            for secret in sink_secrets(sink):
                values.extend(_url_secret_parts(secret.reveal()))
        if self.store.url is not None:
            values.extend(_store_url_secret_parts(self.store.url.reveal()))
        return tuple(dict.fromkeys(v for v in values if v))


def sink_secrets(sink: SinkConfig) -> list[Secret]:
    """Every ``Secret`` in a sink's options: fields, tuple items and dict values."""
    found: list[Secret] = []
    if sink.options is None or not dataclasses.is_dataclass(sink.options):
        return found
    for f in dataclasses.fields(sink.options):
        value = getattr(sink.options, f.name)
        items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple | list) else (value,)
        found.extend(item for item in items if isinstance(item, Secret))
    return found


# ------------------------------------------------------------------------------------------- constants

API_KEY_CREDENTIAL = "flora_api_key"  # file name under $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
LOCAL_CONFIG_NAME = "flora-watcher.toml"
SYSTEM_CONFIG_PATH = Path("/etc/flora-watcher/flora-watcher.toml")

TOP_KEYS = ("api", "watch", "server", "delivery", "sinks", "store")
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
SINK_COMMON_KEYS = ("name", "type", "events", "match", "timeout")
_SINK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")
_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VAR_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MISSING: Any = object()
_API_DEFAULTS = ApiConfig()
_WATCH_DEFAULTS = WatchConfig()
_DELIVERY_DEFAULTS = DeliveryConfig()
_SINK_DEFAULT_TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------- ${VAR}


def interpolate(value: str, env: Mapping[str, str], key: str = "") -> str:
    """Replace every ``${VAR}`` in ``value`` from ``env``; ``$$`` is a literal ``$``; a lone ``$`` stays.

    Raises ``ConfigError(key, ...)`` naming the variable (never a value) when it is not set, and on an
    unterminated ``${`` or an invalid variable name.
    """
    out: list[str] = []
    i = 0
    while True:
        j = value.find("$", i)
        if j < 0:
            out.append(value[i:])
            return "".join(out)
        out.append(value[i:j])
        nxt = value[j + 1 : j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = value.find("}", j + 2)
            if end < 0:
                raise ConfigError(key, "unterminated '${' (write '$$' for a literal '$')")
            name = value[j + 2 : end]
            if not _VAR_NAME_RE.match(name):
                raise ConfigError(key, "invalid variable name in '${...}' (letters, digits and _ only)")
            if name not in env:
                raise ConfigError(key, f"environment variable {name} is not set")
            out.append(env[name])
            i = end + 1
        else:
            out.append("$")
            i = j + 1


# ------------------------------------------------------------------------------------------ helpers


def type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choices(choices: Iterable[str]) -> str:
    return ", ".join(choices)


def _empty_message(raw: str) -> str:
    refs = _VAR_REF_RE.findall(raw)
    return f"is empty (${refs[0]} is set to an empty string)" if refs else "is empty"


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


def check_secret_text(value: str, raw: str, key: str) -> None:
    if not value:
        raise ConfigError(key, _empty_message(raw))
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(key, "contains a line break or NUL character")


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


def _url_secret_parts(url: str) -> list[str]:
    """The URL and its path+query: clients log either form; both must be redacted."""
    parts = [url]
    try:
        split = urlsplit(url)
    except ValueError:
        return parts
    tail = split.path + (f"?{split.query}" if split.query else "")
    if len(tail) >= 8:
        parts.append(tail)
    return parts


@dataclass(frozen=True, slots=True)
class _Ctx:
    env: Mapping[str, str]
    read_file: Callable[[str], str]
    base_dir: Path | None

    def resolve_path(self, raw: str, key: str) -> Path:
        if not raw:
            raise ConfigError(key, "must not be empty")
        if raw == "~" or raw.startswith("~/"):
            home = self.env.get("HOME")
            if not home:
                raise ConfigError(key, "starts with ~ but $HOME is not set")
            raw = home + raw[1:]
        path = Path(raw)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return Path(os.path.normpath(path))  # cfg/../state prints as state: same file, readable

    def read_secret_file(self, path: Path, key: str) -> str:
        try:
            content = self.read_file(str(path))
        except OSError as exc:
            raise ConfigError(key, f"cannot read {path}: {_os_reason(exc)}") from None
        value = content.rstrip("\r\n")
        if not value:
            raise ConfigError(key, f"{path} is empty")
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(key, f"{path} holds more than one line (or a NUL character)")
        return value


class Table:
    """One TOML table with its dotted path: typed, interpolated reads and strict key checks."""

    __slots__ = ("ctx", "data", "prefix")

    def __init__(self, data: dict[str, Any], prefix: str, ctx: _Ctx) -> None:
        self.data = data
        self.prefix = prefix
        self.ctx = ctx

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def has(self, name: str) -> bool:
        return name in self.data

    def check_keys(self, allowed: Iterable[str], *, elsewhere: Iterable[str] = (), kind: str = "") -> None:
        """Every key not in ``allowed`` is an error (all of them are reported); keys in ``elsewhere`` belong to
        another kind of sink."""
        allowed = tuple(allowed)
        elsewhere = frozenset(elsewhere)
        errors = [
            ConfigError(self.key(name), f"does not apply to a {kind} sink") if name in elsewhere
            else ConfigError(self.key(name), "unknown key" + _hint(name, allowed))
            for name in self.data if name not in allowed
        ]
        raise_config_errors(errors)

    def table(self, name: str) -> Table:
        raw = self.data.get(name, _MISSING)
        if raw is _MISSING:
            raw = {}
        elif not isinstance(raw, dict):
            raise ConfigError(self.key(name), f"must be a table, got {type_name(raw)}")
        return Table(raw, self.key(name), self.ctx)

    def _interpolated(self, raw: Any, key: str) -> str:
        if not isinstance(raw, str):
            raise ConfigError(key, f"must be a string, got {type_name(raw)}")
        return interpolate(raw, self.ctx.env, key)

    def string(self, name: str, default: str | None = None) -> str | None:
        raw = self.data.get(name, _MISSING)
        if raw is _MISSING:
            return default
        return self._interpolated(raw, self.key(name))

    def required_string(self, name: str, what: str = "") -> str:
        value = self.string(name)
        if value is None:
            raise ConfigError(self.key(name), "required" + (f" ({what})" if what else ""))
        if not value:
            raise ConfigError(self.key(name), _empty_message(self.data[name]))
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        assert value is not None
        if value not in choices:
            raise ConfigError(
                self.key(name), f"must be one of {_choices(choices)}, got {value!r}" + _hint(value, choices)
            )
        return value

    def strings(self, name: str) -> tuple[tuple[str, str, str], ...] | None:
        """A string or a non-empty list of strings → ((value, raw, key), ...); None when absent."""
        raw = self.data.get(name, _MISSING)
        if raw is _MISSING:
            return None
        key = self.key(name)
        if isinstance(raw, str):
            return ((self._interpolated(raw, key), raw, key),)
        if not isinstance(raw, list):
            raise ConfigError(key, f"must be a string or an array of strings, got {type_name(raw)}")
        if not raw:
            raise ConfigError(key, "must not be an empty array (leave the key out instead)")
        keys = [f"{key}[{i}]" for i in range(len(raw))]
        return tuple((self._interpolated(item, k), item, k) for item, k in zip(raw, keys, strict=True))

    def non_empty_strings(self, name: str) -> tuple[str, ...] | None:
        items = self.strings(name)
        if items is None:
            return None
        for value, raw, key in items:
            if not value:
                raise ConfigError(key, _empty_message(raw))
        return tuple(dict.fromkeys(value for value, _, _ in items))

    def number(self, name: str, default: float, *, minimum: float = 0.0, inclusive: bool = False) -> float:
        raw = self.data.get(name, _MISSING)
        if raw is _MISSING:
            return default
        key = self.key(name)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(key, f"must be a number, got {type_name(raw)}")
        if not math.isfinite(raw):
            raise ConfigError(key, "must be a finite number")
        if raw < minimum or (raw == minimum and not inclusive):
            bound = "at least" if inclusive else "greater than"
            raise ConfigError(key, f"must be {bound} {minimum:g}, got {raw:g}")
        return float(raw)

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        raw = self.data.get(name, _MISSING)
        if raw is _MISSING:
            return default
        key = self.key(name)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(key, f"must be an integer, got {type_name(raw)}")
        if raw < minimum:
            raise ConfigError(key, f"must be at least {minimum}, got {raw}")
        return raw

    def path(self, name: str) -> Path | None:
        value = self.string(name)
        return None if value is None else self.ctx.resolve_path(value, self.key(name))

    def secret(self, name: str, file_name: str, *, many: bool = False) -> tuple[tuple[str, ...], str | None]:
        """Read ``name`` or its ``*_file`` twin → (values, which key was used). Both given is an error."""
        if self.has(name) and self.has(file_name):
            raise ConfigError(self.key(name), f"set either {name} or {file_name}, not both")
        if self.has(name):
            items = self.strings(name) if many else ((self._interpolated(self.data[name], self.key(name)),
                                                      self.data[name], self.key(name)),)
            assert items is not None
            for value, raw, key in items:
                check_secret_text(value, raw, key)
            return tuple(value for value, _, _ in items), name
        if self.has(file_name):
            items = self.strings(file_name) if many else (
                (self._interpolated(self.data[file_name], self.key(file_name)), "", self.key(file_name)),
            )
            assert items is not None
            values = tuple(
                self.ctx.read_secret_file(self.ctx.resolve_path(raw_path, key), key)
                for raw_path, _, key in items
            )
            return values, file_name
        return (), None


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
        raise ConfigError(key, f"cannot read {path}: {_os_reason(exc)}") from None
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
            choose = f"choose from {_choices(ALL_EVENT_TYPES)}" + _hint(value, ALL_EVENT_TYPES)
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
            choose = f"choose from {_choices(RESOURCES)}" + _hint(value, RESOURCES)
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


def _store_url_secret_parts(url: str) -> list[str]:
    """The whole store URL and its password: either must never be printed."""
    parts = [url]
    try:
        password = urlsplit(url).password
    except ValueError:
        return parts
    if password and len(password) >= 4:
        parts.append(password)
    return parts


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


# -------------------------------------------------------------------------------------------- sinks


def _parse_match(t: Table) -> dict[str, tuple[str, ...]]:
    if not t.has("match"):
        return {}
    sub = t.table("match")
    sub.check_keys(MATCH_KEYS)
    return {name: sub.non_empty_strings(name) or () for name in sub.data}


def _registry() -> Mapping[str, Any]:
    from watcher.sinks import REGISTRY  # here, not at the top: sink modules import this module

    return REGISTRY


def _parse_sink(t: Table, watch_events: tuple[str, ...]) -> SinkConfig:
    """The common keys here; the rest goes to the sink type's own parser (``watcher/sinks/<type>.py``).
    Every problem found is reported (``ConfigErrors``), not only the first."""
    registry = _registry()
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
        sink_type = t.required_string("type", _choices(registry))
        if sink_type not in registry:
            choose = f"choose from {_choices(registry)}" + _hint(sink_type, registry)
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
    timeout = attempt(lambda: t.number("timeout", _SINK_DEFAULT_TIMEOUT), _SINK_DEFAULT_TIMEOUT)
    options = attempt(lambda: registry[sink_type].parse(t)) if sink_type is not None else None
    raise_config_errors(errors)
    return SinkConfig(name=name, type=sink_type, events=events, match=match, timeout=timeout, options=options,
                      where=t.prefix)


def _parse_sinks(root: Table, watch_events: tuple[str, ...]) -> tuple[SinkConfig, ...]:
    raw = root.data.get("sinks", _MISSING)
    if raw is _MISSING or raw == []:
        return (SinkConfig(name="console", type="stdout", format="text", events=watch_events),)
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError("sinks", "must be an array of tables: write each sink as a [[sinks]] section")
    sinks: list[SinkConfig] = []
    errors: list[ConfigError] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = Table(item, f"sinks[{i}]", root.ctx)
        try:
            sink = _parse_sink(t, watch_events)
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
    source: Path | None = None,
    require_api_key: bool = True,
) -> Config:
    """Parse and validate config text. Pure: ``env`` and ``read_file`` (raises OSError) are the only inputs.

    Relative paths (``*_file``, ``path``, ``state_dir``) resolve against ``source.parent``; without a
    ``source`` they stay as given. Raises ``ConfigError`` with a dotted key and a one-line, secret-free
    message.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = f" in {source}" if source is not None else ""
        raise ConfigError("", f"invalid TOML{where}: {exc}") from None
    ctx = _Ctx(env=env, read_file=read_file, base_dir=source.parent if source is not None else None)
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
    sinks = attempt(lambda: _parse_sinks(root, watch.events if watch is not None else ALL_EVENT_TYPES))
    store = attempt(lambda: _parse_store(root.table("store")))
    raise_config_errors(errors)
    return Config(api=api, watch=watch, server=server, delivery=delivery, sinks=sinks, source=source, store=store)


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
            raise ConfigError("", f"cannot read config file {source}{origin}: {_os_reason(exc)}") from None
    config = parse(text, env=env, read_file=read_text, source=source, require_api_key=require_api_key)
    from watcher import logs

    logs.register_secrets(config.secret_values())
    return config
