"""Every error flora-watcher raises on purpose. Pure: no I/O.

Wire errors (aiohttp, sqlite, subprocess) are translated into these types at the shell boundary
(``api.py``, ``store.py``, ``sinks/*``) and nowhere else, so the core never sees a transport exception.
Messages never contain secrets: callers pass already-masked text.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class WatcherError(Exception):
    """Base class for all flora-watcher errors."""


class ConfigError(WatcherError):
    """The configuration is invalid. ``key`` is the dotted path of the offending key (e.g. ``sinks[2].url``)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def problems(self) -> tuple[ConfigError, ...]:
        """Every problem this error stands for, one line each (``ConfigErrors`` holds several)."""
        return (self,)


class ConfigErrors(ConfigError):
    """Several configuration problems found at once (``check-config`` reports them all, one line each).
    ``key`` and ``message`` are the first one's; ``str()`` joins them all with "; " (one line, for logs)."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors = tuple(p for e in errors for p in e.problems())
        if not self.errors:
            raise ValueError("ConfigErrors needs at least one error")
        first = self.errors[0]
        super().__init__(first.key, first.message)
        self.args = ("; ".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return str(self.args[0])

    def problems(self) -> tuple[ConfigError, ...]:
        return self.errors


def raise_config_errors(errors: Iterable[ConfigError]) -> None:
    """Raise nothing for no errors, the error itself for one, ``ConfigErrors`` for several."""
    found = [p for e in errors for p in e.problems()]
    if len(found) == 1:
        raise found[0]
    if found:
        raise ConfigErrors(found)


class UsageError(WatcherError):
    """A command was given arguments it cannot work with (beyond what argparse checks): exit status 2."""


# ---------------------------------------------------------------------------------------------------- API


class ApiError(WatcherError):
    """An error talking to the FLORA API.

    ``status`` is the HTTP status (None for transport errors), ``code`` FLORA's ``error.code`` when the body
    carried the documented envelope, ``request_id`` the ``request-id`` response header. ``retry_after``:
    seconds the API asked us to wait (429, 503 … with Retry-After), else None.
    """

    retryable: bool = False
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        super().__init__(message)


class AuthError(ApiError):
    """401/403: the key is missing, revoked or lacks permission. Never retried; fatal for the daemon."""


class NotFoundError(ApiError):
    """404: the run does not exist or belongs to another workspace."""


class RateLimitedError(ApiError):
    """429. ``retry_after`` is seconds from the response headers, or None when the API gave none."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(ApiError):
    """408/409/5xx: transient on the API side."""

    retryable = True  # retry_after: seconds from Retry-After/retry-after-ms when the server sent one


class ApiUnavailableError(ApiError):
    """Connection refused/reset, DNS failure or timeout: no HTTP answer at all."""

    retryable = True


class BadResponseError(ApiError):
    """The API answered 2xx but the body was not what FLORA documents (not JSON, wrong shape)."""


class ClientRequestError(ApiError):
    """Any other 4xx (400, 402, 422, ...): our request was refused; not retried."""


class ForeignOriginError(ApiError):
    """A URL (poll_url or redirect) points outside the configured API origin; the key is never sent there."""


# ---------------------------------------------------------------------------------------------- delivery


class Reason(enum.StrEnum):
    """Why a delivery attempt failed. Values double as metric labels."""

    NETWORK = "network"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    GONE = "gone"
    BAD_CONFIG = "bad_config"
    EXEC_FAILED = "exec_failed"
    SERVICE_FAILED = "service_failed"  # Apprise: the service refused or failed, and Apprise does not say why
    IO_ERROR = "io_error"
    EXPIRED = "expired"


class DeliveryError(WatcherError):
    """A sink could not deliver an event.

    ``retryable``: whether trying again later may succeed. ``retry_after``: seconds the receiver asked us to
    wait (Retry-After / Discord ``retry_after``), or None. ``disable``: the destination is gone for good
    (HTTP 410) and the sink must be disabled. ``status``: the receiver's HTTP status when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        reason: Reason,
        retry_after: float | None = None,
        disable: bool = False,
        status: int | None = None,
    ) -> None:
        self.message = message
        self.retryable = retryable
        self.reason = reason
        self.retry_after = retry_after
        self.disable = disable
        self.status = status
        super().__init__(message)


class StoreError(WatcherError):
    """The state store cannot be opened or written, and waiting will not fix it (corruption, a schema written by
    a newer version, a file that is read-only or gone, an SQL error). The daemon stops (exit 1) on one."""


class StoreUnavailable(StoreError):
    """The state store is away for now, an outage to wait out: PostgreSQL down, restarting or refusing the
    connection (a wrong password too: it can be fixed on the server), SQLite locked beyond its busy timeout,
    the disk full, an I/O error. Whatever asked retries with backoff (a write that failed so may or may not
    have been committed: the engine's writes are safe to repeat)."""
