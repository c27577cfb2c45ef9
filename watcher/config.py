"""Configuration: TOML (CONTRACT §3) → frozen, validated dataclasses.

Pure core: ``parse(text, env=..., read_file=...)`` takes the file's text, the environment and a file reader
as arguments. Thin shell: ``load(path)`` finds and reads the file and calls ``parse``.
Secrets are wrapped in ``Secret`` as soon as they are read, so no repr, log line or error prints one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from watcher.model import DEFAULT_EVENT_TYPES
from watcher.secret import Secret

DEFAULT_BASE_URL = "https://app.flora.ai/api/v1"
SINK_TYPES = ("webhook", "slack", "discord", "teams", "google_chat", "file", "stdout", "exec")
CHAT_SINK_TYPES = ("slack", "discord", "teams", "google_chat")
MATCH_KEYS = ("error_code", "project_id", "workspace_id", "technique_id", "technique")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key: Secret | None = None
    timeout: float = 30.0  # seconds per request
    max_rps: float = 5.0  # all API requests together


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


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str | None = None  # "host:port" for /metrics, /healthz, /readyz; None = off


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    retry_horizon: float = 72 * 3600.0  # seconds after which a retrying delivery becomes a dead letter
    backoff_initial: float = 1.0  # first retry delay cap, seconds (full jitter below it)
    backoff_max: float = 600.0  # largest retry delay cap, seconds
    shutdown_grace: float = 10.0  # seconds in-flight deliveries may take to finish on SIGTERM


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """One ``[[sinks]]`` entry. Fields that do not apply to ``type`` keep their defaults."""

    name: str
    type: str
    events: tuple[str, ...] = DEFAULT_EVENT_TYPES  # resolved: defaults to [watch].events
    match: dict[str, tuple[str, ...]] = field(default_factory=dict)  # MATCH_KEYS → glob patterns
    timeout: float = 10.0  # seconds per send (HTTP request or exec run)
    # webhook + chat sinks
    url: Secret | None = None
    # webhook
    secrets: tuple[Secret, ...] = ()  # signing secrets (several while rotating); empty = unsigned
    signature: str = "standard"  # "standard" (Standard Webhooks) | "flora"
    headers: dict[str, Secret] = field(default_factory=dict)  # extra request headers (values are secret)
    # chat sinks
    template: str | None = None  # overrides the message text; str.format-style fields from the event
    thread: str = "run"  # google_chat: "run" | "project" | "none"
    # file
    path: Path | None = None
    # stdout
    format: str = "text"  # "text" | "json"
    # exec
    command: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    sinks: tuple[SinkConfig, ...] = ()
    source: Path | None = None  # the file it came from, for messages
