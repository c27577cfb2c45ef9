"""What a parsed configuration is: frozen dataclasses, one per TOML section, and ``Config`` holding them all.

A leaf module for everything that only *reads* a config (the engine, ``policy.py``, the sinks' own settings
are in ``sinks/spec.py``): it imports no parser, no sink module and nothing that does I/O. ``config.py`` builds
these from TOML (``parse``/``load``); code and tests may build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from watcher.model import DEFAULT_EVENT_TYPES, RESOURCES
from watcher.secret import Secret
from watcher.sinks.spec import SinkConfig, sink_secrets

DEFAULT_BASE_URL = "https://app.flora.ai/api/v1"


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


DEFAULT_LEASE_S = 10.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: Secret | None = None  # postgresql://… (several instances share it); None = SQLite in [watch].state_dir
    lease: float = DEFAULT_LEASE_S  # seconds a sweeper's lease lasts without renewal
    url_source: str | None = None  # "url" | "url_file" | "credential" (never the URL)

    @property
    def backend(self) -> str:
        return "sqlite" if self.url is None else "postgresql"


DEFAULT_INGRESS_PATH = "/flora/callbacks"
DEFAULT_TOLERANCE_S = 600.0


@dataclass(frozen=True, slots=True)
class IngressConfig:
    """``[ingress]`` (CONTRACT §9): FLORA's own signed run callbacks, on a listener of their own."""

    listen: str | None = None  # "host:port"; None = off
    path: str = DEFAULT_INGRESS_PATH
    signing_secrets: tuple[Secret, ...] = ()  # the workspace's whsec_… (several while rotating: any verifies)
    tolerance: float = DEFAULT_TOLERANCE_S  # seconds a signature's t may be off, either way; 0 = unchecked
    secret_source: str | None = None  # "signing_secret" | "signing_secret_file" | "credential" (never the secret)

    @property
    def enabled(self) -> bool:
        return self.listen is not None


@dataclass(frozen=True, slots=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    sinks: tuple[SinkConfig[Any], ...] = ()
    source: Path | None = None  # the file it came from, for messages
    store: StoreConfig = field(default_factory=StoreConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)

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
        values.extend(s.reveal() for s in self.ingress.signing_secrets)
        return tuple(dict.fromkeys(v for v in values if v))


# ------------------------------------------------------------------------------------- reloads (SIGHUP)

# What a running daemon cannot take from a reloaded config: the state store it has open (and, for SQLite, the
# directory holding its file and lock) and the addresses it listens on. A reload keeps them as they are; the
# next start uses the new ones.
RESTART_KEYS = ("watch.state_dir", "store.url", "store.lease", "server.listen", "ingress.listen")


def restart_only_changes(running: Config, new: Config) -> tuple[str, ...]:
    """Pure: the keys of ``RESTART_KEYS`` that ``new`` changes (in that order); names only, never a value (the
    store URL holds a password). ``watch.state_dir`` counts only while the running state is SQLite, and
    ``store.lease`` only for a PostgreSQL store: elsewhere they are not used."""
    changed = []
    if running.store.url is None and Path(running.watch.state_dir) != Path(new.watch.state_dir):
        changed.append("watch.state_dir")
    if running.store.url != new.store.url:
        changed.append("store.url")
    if running.store.url is not None and running.store.lease != new.store.lease:
        changed.append("store.lease")
    if running.server.listen != new.server.listen:
        changed.append("server.listen")
    if running.ingress.listen != new.ingress.listen:
        changed.append("ingress.listen")
    return tuple(changed)


def in_force(running: Config, new: Config) -> Config:
    """Pure: what a reload puts in force: ``new``, with the ``RESTART_KEYS`` as ``running`` has them. A listener
    that ``new`` turns off keeps its running section whole (``[ingress]`` without ``listen`` may lack the
    signing secret the running listener verifies with)."""
    if new.ingress.enabled or not running.ingress.enabled:
        ingress = replace(new.ingress, listen=running.ingress.listen)
    else:
        ingress = running.ingress
    pinned = replace(new, watch=replace(new.watch, state_dir=running.watch.state_dir), store=running.store,
                     server=running.server, ingress=ingress)
    return new if pinned == new else pinned


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
