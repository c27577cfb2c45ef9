"""What the webhook and chat sink modules share: the ``url``/``url_file`` keys, the chat options (``template``),
the HTTP transport, and per-destination pacing.

Each sink owns one ``aiohttp.ClientSession`` (never the API client's, so the API key can never ride along):
no redirects followed, no cookies kept, no proxy or netrc from the environment, ``User-Agent:
flora-watcher/<version>``, the sink's ``timeout`` for the whole request, and at most ``BODY_CAP`` bytes of
any response read. Every outcome that is not a 2xx becomes an ``errors.DeliveryError`` — HTTP answers through
``policy.classify_http``, transport failures here. No message ever contains the URL (webhook URLs are
secrets): errors say "the receiver".
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import structlog

from watcher import USER_AGENT
from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.errors import ConfigError, DeliveryError, Reason
from watcher.model import Event
from watcher.policy import body_snippet, classify_http
from watcher.render import check_template
from watcher.secret import Secret
from watcher.sinks.spec import BuildContext, SendResult, SinkConfig, Table, check_url, sink_secrets

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger("watcher.sinks")

BODY_CAP = 64 * 1024
DEFAULT_USER_AGENT = USER_AGENT
MAX_PACING_WAIT = 30.0  # seconds a sink may wait for its own rate limit before reporting "retry later"


# ---------------------------------------------------------------------------------------------- config

URL_KEYS = ("url", "url_file")
CHAT_KEYS = (*URL_KEYS, "template", "group_wait", "group_by")  # the keys every chat sink accepts
GROUP_FIELDS = ("type", "error_code", "project_id", "technique_id")  # what group_by may name
DEFAULT_GROUP_WAIT = 2.0
DEFAULT_GROUP_BY = ("type", "error_code")


def parse_url(t: Table) -> Secret:
    """``url`` or ``url_file`` (required, a secret): https, or http to a loopback host."""
    values, source = t.secret("url", "url_file")
    if source is None:
        raise ConfigError(t.key("url"), "required (or url_file)")
    check_url(values[0], t.key(source))
    return Secret(values[0])


def parse_template(t: Table) -> str | None:
    """``template``: checked here with ``render.check_template``, the same check the sink applies."""
    template = t.string("template")
    if template is not None:
        try:
            check_template(template)
        except ValueError as exc:
            raise ConfigError(t.key("template"), str(exc)) from None
    return template


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """The settings every chat sink has. A chat module with more keys subclasses it (see google_chat.py)."""

    url: Secret | None = None
    template: str | None = None  # overrides the message text; str.format-style fields from the event
    group_wait: float = DEFAULT_GROUP_WAIT  # seconds after a group's first event to wait for others (0: no wait)
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY  # events alike in these fields become one message


def parse_group_by(t: Table) -> tuple[str, ...]:
    """``group_by``: a list of ``GROUP_FIELDS`` (an empty list groups every event of a burst together)."""
    if not t.has("group_by"):
        return DEFAULT_GROUP_BY
    raw = t.data["group_by"]
    if raw == []:
        return ()
    items = t.strings("group_by")
    assert items is not None
    for value, _, key in items:
        if value not in GROUP_FIELDS:
            raise ConfigError(key, f"unknown group_by field {value!r}; choose from {', '.join(GROUP_FIELDS)}")
    return tuple(dict.fromkeys(value for value, _, _ in items))


def parse_chat(t: Table) -> dict[str, Any]:
    """The ``CHAT_KEYS`` of a chat sink's table, as ``ChatOptions`` fields."""
    return {"url": parse_url(t), "template": parse_template(t),
            "group_wait": t.number("group_wait", DEFAULT_GROUP_WAIT, inclusive=True),
            "group_by": parse_group_by(t)}


# ------------------------------------------------------------------------------------------- transport


@dataclass(frozen=True, slots=True)
class Reply:
    """A receiver's answer: status, headers (case-insensitive) and at most ``BODY_CAP`` bytes of body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def _strerror(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code).lower()
    return type(exc).__name__


def _transport_error(exc: BaseException, timeout: float) -> DeliveryError:
    """An aiohttp/OS failure as a DeliveryError whose message holds neither the URL nor the exception text."""
    import aiohttp

    if isinstance(exc, TimeoutError):
        return DeliveryError(f"no answer from the receiver within {timeout:g}s", retryable=True,
                             reason=Reason.TIMEOUT)
    if isinstance(exc, aiohttp.InvalidURL):
        return DeliveryError("the receiver URL is not a valid URL", retryable=False, reason=Reason.BAD_CONFIG)
    if isinstance(exc, ValueError) and not isinstance(exc, aiohttp.ClientError):
        return DeliveryError("the request could not be built (invalid URL or header value)", retryable=False,
                             reason=Reason.BAD_CONFIG)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return DeliveryError("cannot resolve the receiver's host name", retryable=True, reason=Reason.NETWORK)
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        return DeliveryError("TLS handshake with the receiver failed (certificate or protocol)", retryable=True,
                             reason=Reason.NETWORK)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return DeliveryError(f"cannot connect to the receiver: {_strerror(exc.os_error)}", retryable=True,
                             reason=Reason.NETWORK)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return DeliveryError("the receiver closed the connection without answering", retryable=True,
                             reason=Reason.NETWORK)
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return DeliveryError("the receiver reset the connection", retryable=True, reason=Reason.NETWORK)
    return DeliveryError(f"network error talking to the receiver ({type(exc).__name__})", retryable=True,
                         reason=Reason.NETWORK)


async def _read_capped(stream: aiohttp.StreamReader, cap: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total < cap:
        chunk = await stream.read(cap - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if stream.at_eof():  # the whole body is in: no further read (one await less per request)
            break
    return b"".join(chunks)


class HttpTransport:
    """One sink's HTTP client. ``post`` returns every HTTP answer and raises only for transport failures."""

    def __init__(self, *, timeout: float, user_agent: str | None = None, body_cap: int = BODY_CAP) -> None:
        self.timeout = timeout
        self.user_agent = user_agent or DEFAULT_USER_AGENT
        self.body_cap = body_cap
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        import aiohttp  # here, not at the top: parsing a config (check-config, status) needs no HTTP client

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": self.user_agent},
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """POST ``body``; raises ``DeliveryError`` (retryable NETWORK/TIMEOUT, or BAD_CONFIG) when no HTTP
        answer came back. Raised outside the ``except`` so no aiohttp exception (whose text may hold the
        URL) is chained to it."""
        import aiohttp

        if self._session is None or self._session.closed:
            await self.start()
        assert self._session is not None
        # aiohttp copies a plain dict into its own header multidict (it would add to a multidict passed in).
        sent = headers if type(headers) is dict else dict(headers)
        failure: DeliveryError | None = None
        try:
            async with self._session.post(url, data=body, headers=sent, allow_redirects=False) as resp:
                data = await _read_capped(resp.content, self.body_cap)
                return Reply(resp.status, resp.headers, data)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            failure = _transport_error(exc, self.timeout)
        raise failure


def secret_needles(cfg: SinkConfig[Any], *, min_length: int = 10) -> tuple[bytes, ...]:
    """Every secret a receiver could echo back: the URL, its path and query, each long path segment and
    query value (the tokens), signing secrets and header values — raw and percent-encoded, longest first."""
    values: list[str] = []
    for secret in sink_secrets(cfg):  # the URL, signing secrets, header values: every Secret in the options
        url = secret.reveal()
        values.append(url)
        try:
            split = urlsplit(url)
            pairs = parse_qsl(split.query, keep_blank_values=True)
        except ValueError:
            split, pairs = None, []
        if split is not None:
            values += [split.path + (f"?{split.query}" if split.query else ""), split.path, split.query]
            values += split.path.split("/")
            values += [v for _, v in pairs]
    variants = {form for v in values for form in (v, unquote(v), quote(v, safe=""), quote(v, safe="/"))}
    kept = sorted((v for v in variants if len(v) >= min_length), key=len, reverse=True)
    return tuple(v.encode("utf-8") for v in kept)


def scrub(body: bytes, needles: tuple[bytes, ...]) -> bytes:
    """``body`` with every needle replaced by ``<secret>``."""
    for needle in needles:
        if needle in body:
            body = body.replace(needle, b"<secret>")
    return body


# ------------------------------------------------------------------------------------------- pacing


class IntervalPacer:
    """At most one send per ``interval`` seconds (Slack and Google Chat: about one message per second per
    webhook). Concurrent senders queue on a lock."""

    def __init__(self, interval: float, clock: Clock) -> None:
        self.interval = interval
        self.clock = clock
        self._next = -math.inf
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            wait = self._next - self.clock.monotonic()
            if wait > 0:
                await self.clock.sleep(wait)
            self._next = self.clock.monotonic() + self.interval

    def observe(self, reply: Reply) -> None:
        return None


def with_query(url: str, param: str) -> str:
    """``url`` with ``param`` (``name=value``) appended to its query unless that name is already there."""
    name = param.split("=", 1)[0] + "="
    base, hash_mark, fragment = url.partition("#")
    if f"?{name}" in base or f"&{name}" in base:
        return url
    joiner = "" if base.endswith(("?", "&")) else ("&" if "?" in base else "?")
    return f"{base}{joiner}{param}{hash_mark}{fragment}"


class BucketPacer:
    """Discord's per-webhook bucket: after an answer with ``X-RateLimit-Remaining: 0``, wait for
    ``X-RateLimit-Reset-After`` seconds before the next send. A wait longer than ``max_wait`` is not slept:
    the send fails as retryable RATE_LIMITED with that ``retry_after`` so the dispatcher reschedules it."""

    def __init__(self, clock: Clock, *, max_wait: float = MAX_PACING_WAIT) -> None:
        self.clock = clock
        self.max_wait = max_wait
        self._remaining: int | None = None
        self._reset_at = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            if self._remaining is None:
                return
            if self._remaining > 0:
                self._remaining -= 1
                return
            wait = self._reset_at - self.clock.monotonic()
            if wait > self.max_wait:
                raise DeliveryError(f"rate limit: the receiver's bucket refills in {wait:.1f}s", retryable=True,
                                    reason=Reason.RATE_LIMITED, retry_after=wait)
            if wait > 0:
                await self.clock.sleep(wait)
            self._remaining = None

    def observe(self, reply: Reply) -> None:
        remaining = _number(reply.headers.get("X-RateLimit-Remaining"))
        reset_after = _number(reply.headers.get("X-RateLimit-Reset-After"))
        if remaining is None or reset_after is None:
            return
        self._remaining = max(0, int(remaining))
        self._reset_at = self.clock.monotonic() + reset_after


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


# --------------------------------------------------------------------------------------- base sinks


class UrlOptions(Protocol):
    """What an HTTP sink type's options have: the ``url`` it posts to (a secret)."""

    @property
    def url(self) -> Secret | None: ...


U = TypeVar("U", bound=UrlOptions)
C = TypeVar("C", bound=ChatOptions)


class HttpSink(Generic[U]):
    """Base of every sink that POSTs JSON to its ``url``; ``U`` is its type's options."""

    pacer: IntervalPacer | BucketPacer | None = None

    def __init__(self, cfg: SinkConfig[U], *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        if cfg.options.url is None or not cfg.options.url.reveal():
            raise ConfigError(cfg.key("url"), "required (or url_file)")
        self.name = cfg.name
        self.config = cfg
        self.options: U = cfg.options
        self.clock = clock
        self.http = HttpTransport(timeout=cfg.timeout, user_agent=user_agent)
        self._needles = secret_needles(cfg)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str] | None = None) -> SendResult:
        """Pace, POST ``body`` as JSON, and classify the answer (raises ``DeliveryError`` unless 2xx).
        The answer's body is scrubbed of this sink's secrets before anything quotes it."""
        if self.pacer is not None:
            await self.pacer.acquire()
        reply = await self.http.post(url, body, {"Content-Type": "application/json", **(headers or {})})
        if self.pacer is not None:
            self.pacer.observe(reply)
        answer = scrub(reply.body, self._needles)
        error = classify_http(reply.status, reply.headers, answer, self.clock.now_ms())
        if error is not None:
            raise error
        return SendResult(status=reply.status, detail=body_snippet(answer))


class ChatSink(HttpSink[C]):
    """A chat platform: renders a message (``payload``) and posts it to ``target``; a group of events as one
    message (``group_payload``, ``group_target``): a ``spec.GroupSink``."""

    def __init__(self, cfg: SinkConfig[C], *, user_agent: str | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(cfg, user_agent=user_agent, clock=clock)
        if cfg.options.template is not None:
            try:
                check_template(cfg.options.template)
            except ValueError as exc:
                raise ConfigError(cfg.key("template"), str(exc)) from None

    @classmethod
    def build(cls, cfg: SinkConfig[C], ctx: BuildContext) -> ChatSink[C]:
        """The ``SinkType.build`` of a chat module."""
        return cls(cfg, user_agent=ctx.user_agent, clock=ctx.clock)

    def payload(self, event: Event) -> dict[str, Any]:
        raise NotImplementedError

    def target(self, event: Event) -> str:
        assert self.options.url is not None
        return self.options.url.reveal()

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        """``body`` (the event's JSON, as stored) is accepted for a uniform call and not used: chat sinks
        send a rendered message."""
        try:
            payload = self.payload(event)
        except ValueError as exc:
            raise DeliveryError(str(exc), retryable=False, reason=Reason.BAD_CONFIG) from None
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return await self.post(self.target(event), data)

    def group_payload(self, events: list[Event]) -> dict[str, Any]:
        raise NotImplementedError

    def group_target(self, events: list[Event]) -> str:
        return self.target(events[0])

    async def send_group(self, events: list[Event]) -> SendResult:
        """Deliver a group of events (``group_by``) as one message; a group of one is ``send``'s message."""
        if len(events) == 1:
            return await self.send(events[0])
        try:
            payload = self.group_payload(events)
        except ValueError as exc:
            raise DeliveryError(str(exc), retryable=False, reason=Reason.BAD_CONFIG) from None
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return await self.post(self.group_target(events), data)
