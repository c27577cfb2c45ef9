"""Generic webhook: ``POST`` of the event's exact JSON, optionally signed (CONTRACT §5).

Keys: ``url``/``url_file`` (required), ``secret``/``secret_file`` (one or a list, while rotating),
``signature`` ("standard" | "flora"), ``headers`` (a table; values are secrets), ``concurrency`` (requests
in flight at once, default 8; the events of one run stay in order).

Headers: ``Content-Type: application/json``, ``User-Agent: flora-watcher/<version>``, the sink's configured
``headers`` (values are secrets), and the signature headers of ``signature`` (``signing.py``): Standard
Webhooks (``webhook-id``/``webhook-timestamp``/``webhook-signature``) or FLORA's (``Flora-Signature``,
``Flora-Webhook-Id``, ``Flora-Event``). The timestamp is taken at send time, so every retry is signed afresh;
the id is the event id, stable across retries and restarts.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.errors import ConfigError
from watcher.model import Event
from watcher.render import event_body
from watcher.secret import Secret
from watcher.signing import signature_headers, signing_keys
from watcher.sinks.http import URL_KEYS, HttpSink, parse_url
from watcher.sinks.spec import BuildContext, SendResult, SinkConfig, SinkType, Table, check_secret_text

KEYS = (*URL_KEYS, "secret", "secret_file", "signature", "headers", "concurrency")
DEFAULT_CONCURRENCY = 8
SIGNATURES = ("standard", "flora")

# Headers the webhook sink sets itself; a configured header may not replace them.
RESERVED_HEADERS = frozenset({
    "content-type", "content-length", "host", "transfer-encoding", "connection",
    "webhook-id", "webhook-timestamp", "webhook-signature",
    "flora-signature", "flora-webhook-id", "flora-event",
})
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    url: Secret | None = None
    secrets: tuple[Secret, ...] = ()  # signing secrets (several while rotating); empty = unsigned
    signature: str = "standard"  # "standard" (Standard Webhooks) | "flora"
    headers: dict[str, Secret] = field(default_factory=dict)  # extra request headers (values are secret)
    concurrency: int = DEFAULT_CONCURRENCY  # requests in flight at once (the events of one run stay in order)


# ------------------------------------------------------------------------------------------- config


def _check_whsec(value: str, key: str) -> None:
    prefix = "whsec_"
    ok = value.startswith(prefix)
    if ok:
        try:
            ok = bool(base64.b64decode(value[len(prefix):], validate=True))
        except (binascii.Error, ValueError):
            ok = False
    if not ok:
        raise ConfigError(
            key, "not a Standard Webhooks secret ('whsec_' + base64); use one, or set signature = \"flora\""
        )


def _parse_headers(t: Table) -> dict[str, Secret]:
    if not t.has("headers"):
        return {}
    sub = t.table("headers")
    headers: dict[str, Secret] = {}
    for name in sub.data:
        key = sub.key(name)
        if not _HEADER_NAME_RE.match(name):
            raise ConfigError(key, "not a valid HTTP header name")
        if name.lower() in RESERVED_HEADERS:
            raise ConfigError(key, "set by the webhook sink itself; it cannot be overridden")
        value = sub.string(name)
        assert value is not None
        check_secret_text(value, sub.data[name], key)
        headers[name] = Secret(value)
    return headers


def parse(t: Table) -> WebhookOptions:
    url = parse_url(t)
    signature = t.choice("signature", SIGNATURES, "standard")
    secrets, source = t.secret("secret", "secret_file", many=True)
    if t.has("signature") and source is None:
        raise ConfigError(t.key("signature"), "needs secret or secret_file to sign with")
    if signature == "standard" and source is not None:
        for i, value in enumerate(secrets):
            suffix = f"[{i}]" if isinstance(t.data.get(source or ""), list) else ""
            _check_whsec(value, t.key(f"{source}{suffix}"))
    return WebhookOptions(url=url, signature=signature, secrets=tuple(Secret(s) for s in secrets),
                          headers=_parse_headers(t),
                          concurrency=t.integer("concurrency", DEFAULT_CONCURRENCY, minimum=1))


def describe(cfg: SinkConfig) -> list[str]:
    n = len(cfg.options.secrets)
    return [f"signed ({cfg.options.signature}, {n} secret{'s' if n > 1 else ''})"] if n else []


# -------------------------------------------------------------------------------------------- sink


class WebhookSink(HttpSink[WebhookOptions]):
    def __init__(self, cfg: SinkConfig[WebhookOptions], *, user_agent: str | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(cfg, user_agent=user_agent, clock=clock)
        options = cfg.options
        try:
            self._keys = signing_keys(options.signature, [s.reveal() for s in options.secrets])
        except ValueError as exc:
            raise ConfigError(cfg.key("secret"), str(exc)) from None
        for name, value in options.headers.items():
            if name.lower() in RESERVED_HEADERS:
                raise ConfigError(cfg.key(f"headers.{name}"), "set by the webhook sink itself; it cannot be overridden")
            if any(c in value.reveal() for c in "\r\n\0"):
                raise ConfigError(cfg.key(f"headers.{name}"), "contains a line break or NUL character")
        assert options.url is not None  # HttpSink checked it
        # Built once, not per request: the URL and the configured headers (secrets: never logged or shown).
        self._url = options.url.reveal()
        self._headers = {name: value.reveal() for name, value in options.headers.items()}

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        """POST the event. ``body``: the event's JSON exactly as stored (sent byte for byte); by default the
        compact serialisation of ``event``."""
        data = body if body is not None else event_body(event)
        headers = {**self._headers, **signature_headers(
            self.options.signature, event_id=event.id, event_type=event.type,
            timestamp=self.clock.now_ms() // 1000, body=data, keys=self._keys,
        )}
        return await self.post(self._url, data, headers)


def build(cfg: SinkConfig[WebhookOptions], ctx: BuildContext) -> WebhookSink:
    return WebhookSink(cfg, user_agent=ctx.user_agent, clock=ctx.clock)


SINK = SinkType(name="webhook", keys=KEYS, options=WebhookOptions, parse=parse, build=build, describe=describe)
