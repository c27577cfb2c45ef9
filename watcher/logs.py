"""Logging: structlog set up once, for our own events and for stdlib ``logging`` (aiohttp, asyncio) alike.

Everything goes through one stdlib handler on the root logger whose ``ProcessorFormatter`` runs the same
chain for both: ISO-8601 UTC timestamp, level, logger name, plain traceback text (never frame locals),
then secret redaction, then the renderer (console lines on a terminal, JSON lines otherwise). Logs go to
stderr: stdout belongs to the stdout sink.

Redaction replaces every value handed to ``register_secret`` (``config.load`` registers the API key, sink
URLs, signing secrets and header values) and masks well-known secret shapes by pattern, in event text, keys,
values, nested containers and exception text. ``redact(text)`` is the same masking for text shown to users.
A masked value reads ``<secret>``, the marker sinks use for a receiver's echo of their URL or secret (docs/sinks.md).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO
from urllib.parse import quote

import structlog

from watcher.secret import Secret

REDACTED = "<secret>"  # the one visible marker for a masked secret (logs, sink errors, Secret's repr)
MIN_SECRET_LENGTH = 6  # shorter registered values would redact ordinary words

FORMATS = ("auto", "console", "json")
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# ------------------------------------------------------------------------------------------ redaction

_lock = threading.Lock()
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None

# (pattern, replacement), applied in order after the registered secrets.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization header values
    (re.compile(r"(?i)\b(bearer|basic)\s+(?!<secret>)[A-Za-z0-9\-._~+/]{8,}=*"), rf"\1 {REDACTED}"),
    # FLORA API keys and webhook signing secrets: the prefix is not secret, the rest is
    (re.compile(r"\b(sk_(?:live|test)_)[A-Za-z0-9_\-]+"), rf"\1{REDACTED}"),
    (re.compile(r"\b(whsec_)[A-Za-z0-9+/=_\-]+"), rf"\1{REDACTED}"),
    # chat webhook URLs whose path is the credential
    (re.compile(r"(?i)(hooks\.slack\.com/(?:services|workflows|triggers)/)[^\s\"'<>]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(/api(?:/v\d+)?/webhooks/)[^\s\"'<>]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(\.webhook\.office\.com/webhookb2/)[^\s\"'<>]+"), rf"\1{REDACTED}"),
    # query-string credentials (Google Chat key/token, Teams Workflows sig, generic tokens)
    (
        re.compile(r"(?i)([?&](?:key|token|sig|signature|access_token|api_key|apikey)=)[^&\s\"'<>#]+"),
        rf"\1{REDACTED}",
    ),
    # (key=value forms are handled by _KEY_VALUE below: they need a look at the value)
)

# key=value / "key": "value" / key: value where the key names a secret. The look-behind anchors at the start
# of an identifier (linear time on long a_b_c_… runs). A quoted value or one right after "=" is a secret
# whatever it looks like; after "key: " in prose only a secret-shaped value is (FLORA's own error text reads
# "invalid_api_key: The API key is invalid…", and "The" is not a key).
_KEY_VALUE = re.compile(
    r"(?i)(?<![A-Za-z0-9_-])((?:[A-Za-z0-9]+[_-])*(?:api[_-]?key|apikey|authorization|secrets?|token|"
    r"password|passwd))([\"']?)(\s*[:=])(\s*)([\"']?)((?:(?:bearer|basic)\s+)?)([^\s\"'&,;)}\]]+)"
)
_SECRET_SHAPED = re.compile(r"[A-Za-z0-9._~+/=\-]{8,}")


def _looks_like_a_secret(value: str) -> bool:
    """A token, not a word: 8+ characters of a token alphabet with a digit in them, or 20+ of them."""
    return bool(_SECRET_SHAPED.fullmatch(value)) and (len(value) >= 20 or any(c.isdigit() for c in value))


def _mask_key_value(m: re.Match[str]) -> str:
    key, key_quote, sep, space, value_quote, scheme, value = m.groups()
    if value.startswith(REDACTED):
        return m.group(0)
    loose = not value_quote and not key_quote and bool(space) and not scheme
    if loose and not _looks_like_a_secret(value):
        return m.group(0)
    return f"{key}{key_quote}{sep}{space}{value_quote}{REDACTED}"


_SENSITIVE_KEY_NAMES = (
    "api_key", "apikey", "authorization", "secret", "secrets", "token", "password", "passwd", "cookie",
)


def register_secret(value: str) -> None:
    """Redact ``value`` (and its URL-encoded form) from every log line from now on. Values shorter than
    ``MIN_SECRET_LENGTH`` are ignored."""
    global _secret_re
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    variants = {value, quote(value, safe=""), quote(value, safe="/:")}
    with _lock:
        if variants <= _secrets:
            return
        _secrets.update(v for v in variants if len(v) >= MIN_SECRET_LENGTH)
        ordered = sorted(_secrets, key=len, reverse=True)  # longest first: a secret containing another
        _secret_re = re.compile("|".join(re.escape(s) for s in ordered))


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secret_re
    with _lock:
        _secrets.clear()
        _secret_re = None


def redact(text: str) -> str:
    """``text`` with registered secrets and secret-shaped substrings replaced by ``<secret>``."""
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for regex, replacement in _PATTERNS:
        text = regex.sub(replacement, text)
    return _KEY_VALUE.sub(_mask_key_value, text)


def is_sensitive_key(key: str) -> bool:
    """Whether a field named ``key`` holds a secret (``api_key``, ``Authorization``, ``webhook_secret`` …)."""
    name = key.lower().replace("-", "_")
    return any(name == n or name.endswith("_" + n) for n in _SENSITIVE_KEY_NAMES)


def _is_a_number_not_a_credential(key: str, value: Any) -> bool:
    """An integer under a ``token`` key is a count or a fencing token (``sweeper.lease_acquired token=7``), which
    an operator needs when debugging a failover; every credential flora-watcher holds is text (or a ``Secret``),
    so a string under the same key is still masked, and so is any value under the other sensitive names."""
    name = key.lower().replace("-", "_")
    return (name == "token" or name.endswith("_token")) and isinstance(value, int) and not isinstance(value, bool)


def redact_value(value: Any, _depth: int = 0) -> Any:
    """Redact a log value of any shape. Containers are rebuilt; other objects become redacted text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Secret):
        return str(value)
    if _depth > 16:
        return "<…>"
    if isinstance(value, dict):
        return {
            redact(str(k)): (
                REDACTED if is_sensitive_key(str(k)) and v not in (None, "") and not isinstance(v, bool)
                and not _is_a_number_not_a_credential(str(k), v)
                else redact_value(v, _depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, _depth + 1) for v in value]
    if isinstance(value, BaseException):
        text = str(value)
        return redact(f"{type(value).__name__}: {text}" if text else type(value).__name__)
    return redact(str(value))


def redact_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: runs after exception formatting, right before the renderer."""
    redacted = redact_value(dict(event_dict))
    event_dict.clear()
    event_dict.update(redacted)
    return event_dict


# -------------------------------------------------------------------------------------------- set-up

_KEY_ORDER = ("timestamp", "level", "logger", "event")


def _order_keys(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    first = {k: event_dict[k] for k in _KEY_ORDER if k in event_dict}
    return {**first, **{k: v for k, v in event_dict.items() if k not in first}}


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


_handler: logging.Handler | None = None
_hidden_info_events: frozenset[str] = frozenset()


def hide_info_events(names: Iterable[str]) -> None:
    """Stop printing info-level lines with these event names (the live view shows them in its table instead);
    ``()`` prints them again. Warnings and errors with the same names are always printed."""
    global _hidden_info_events
    _hidden_info_events = frozenset(names)


def _not_hidden(record: logging.LogRecord) -> bool:
    if not _hidden_info_events or record.levelno != logging.INFO or not isinstance(record.msg, dict):
        return True
    return record.msg.get("event") not in _hidden_info_events


def _drop_none(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Console lines leave out fields that are None (``status=None`` says nothing); JSON keeps them as null."""
    for key in [k for k, v in event_dict.items() if v is None]:
        del event_dict[key]
    return event_dict


def _shared_processors() -> list[Callable[..., Any]]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(fmt: str, stream: TextIO) -> list[Callable[..., Any]]:
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    if fmt == "auto":
        fmt = "console" if is_tty else "json"
    if fmt == "console":
        colors = is_tty and "NO_COLOR" not in os.environ
        plain = structlog.dev.plain_traceback  # never rich's show_locals
        return [_drop_none, structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=plain)]
    return [_order_keys, structlog.processors.JSONRenderer()]


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog and stdlib logging. Safe to call again (replaces the previous set-up).

    ``fmt``: ``auto`` (console on a TTY, JSON lines otherwise), ``console`` or ``json``. ``stream``:
    where lines go (default: the current ``sys.stderr``).
    """
    global _handler
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; choose from {', '.join(FORMATS)}")
    try:
        numeric_level = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; choose from {', '.join(LEVELS)}") from None

    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=False,  # so tests can use structlog.testing.capture_logs
    )
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.addFilter(_not_hidden)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,  # plain traceback text: no frame locals
                redact_event,
                *_renderer(fmt, stream if stream is not None else sys.stderr),
            ],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    # psycopg's pool warns at every reconnection attempt ("error connecting in 'pool-1'", "discarding broken
    # connection"): a database outage is told by the store.* lines instead, once, with the server's reason.
    logging.getLogger("psycopg.pool").setLevel(max(numeric_level, logging.ERROR))
    _handler = handler


def get_logger(name: str) -> Any:
    """A structlog logger named ``name`` (use dotted event names: ``log.info("sweep.finished", runs=3)``)."""
    return structlog.stdlib.get_logger(name)


def register_secrets(values: Iterable[str]) -> None:
    """``register_secret`` for each value."""
    for value in values:
        register_secret(value)
