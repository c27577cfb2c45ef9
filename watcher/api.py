"""The FLORA API client. Shell: every HTTP exchange with FLORA goes through ``FloraClient``.

Rules (CONTRACT §6, flora-api.md §2-§4, §8):

- One ``aiohttp.ClientSession``. ``Authorization: Bearer …`` is added per request and only when the URL's
  origin (scheme, host, port) is the configured API origin; nothing is ever sent to another origin.
  Redirects are never followed (a 3xx is an error).
- Every request waits on one ``RateLimiter``: a token bucket (``max_rps``) and a global pause that a 429
  sets for all requests. Short retries (tenacity) on connection errors, timeouts, 408/409/429/5xx, at most
  ``max_retries`` per request, honouring ``Retry-After``/``retry-after-ms`` up to ``retry_after_cap``.
- aiohttp errors and HTTP statuses become ``watcher.errors.ApiError`` subclasses here and nowhere else.
  No message, log line or repr carries the key or a URL's query string.
"""

from __future__ import annotations

import collections
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from yarl import URL

from watcher import USER_AGENT
from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.errors import (
    ApiError,
    ApiUnavailableError,
    AuthError,
    BadResponseError,
    ClientRequestError,
    ForeignOriginError,
    NotFoundError,
    RateLimitedError,
    ServerError,
)
from watcher.model import KNOWN_STATUSES, RESOURCE_TECHNIQUE_RUNS, RESOURCES, RUN_TYPE_OF_RESOURCE, Run
from watcher.normalize import (
    ListPage,
    RunMemo,
    parse_error_body,
    parse_list_body,
    parse_list_page,
    parse_run,
    sanitize_snippet,
)
from watcher.policy import full_jitter, parse_retry_after
from watcher.ratelimit import RateLimiter
from watcher.secret import Secret

log = structlog.get_logger("watcher.api")

T = TypeVar("T")

DEFAULT_USER_AGENT = USER_AGENT
MAX_PAGE_LIMIT = 100
DEDUP_PAGES = 10  # a listing drops runs already yielded on this many previous pages
RETRY_BASE = 0.5  # seconds; full jitter below min(RETRY_BASE * 2**n, RETRY_CAP)
RETRY_CAP = 8.0
OUTCOMES = (
    "ok",
    "rate_limited",
    "server_error",
    "network",
    "auth",
    "not_found",
    "client_error",
    "bad_response",
)
_LOG_ONCE_LIMIT = 256  # distinct unknown statuses / foreign hosts remembered for log-once

RequestHook = Callable[[str, str, float], None]  # (route, outcome, seconds)
Origin = tuple[str, str, int | None]


@dataclass(slots=True)
class ApiStats:
    """Counters of one client. ``outcomes`` counts HTTP attempts by outcome (see ``OUTCOMES``)."""

    requests: int = 0  # HTTP attempts sent (API cost), retries included
    retries: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    rate_limit_wait_seconds: float = 0.0  # waited on the global pause after 429s
    throttle_wait_seconds: float = 0.0  # waited on the token bucket (max_rps)
    last_success_ms: int | None = None
    last_failure_ms: int | None = None
    last_error: str | None = None  # message of the last failed attempt (never a secret)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "outcomes": dict(self.outcomes),
            "rate_limit_wait_seconds": round(self.rate_limit_wait_seconds, 3),
            "throttle_wait_seconds": round(self.throttle_wait_seconds, 3),
            "last_success_ms": self.last_success_ms,
            "last_failure_ms": self.last_failure_ms,
            "last_error": self.last_error,
        }


# ------------------------------------------------------------------------------------ pure helpers


def origin_of(url: URL) -> Origin:
    """(scheme, host, port) with the scheme's default port filled in."""
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


def outcome_of(exc: ApiError) -> str:
    """The stats/metrics label of an error."""
    if isinstance(exc, RateLimitedError):
        return "rate_limited"
    if isinstance(exc, ServerError):
        return "server_error"
    if isinstance(exc, ApiUnavailableError):
        return "network"
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, ClientRequestError):
        return "client_error"
    return "bad_response"


def error_for_status(
    status: int,
    *,
    route: str,
    code: str | None,
    message: str | None,
    request_id: str | None,
    retry_after: float | None,
) -> ApiError:
    """The typed error for a non-2xx, non-3xx answer."""
    text = f"{route}: HTTP {status}"
    if code:
        text += f" {code}"
    if message:
        text += f": {message}"
    if request_id:
        text += f" (request-id {request_id})"
    kw: dict[str, Any] = {"status": status, "code": code, "request_id": request_id}
    if status in (401, 403):
        return AuthError(text, **kw)
    if status == 404:
        return NotFoundError(text, **kw)
    if status == 429:
        return RateLimitedError(text, retry_after=retry_after, **kw)
    if status in (408, 409) or status >= 500:
        err = ServerError(text, **kw)
        err.retry_after = retry_after
        return err
    return ClientRequestError(text, **kw)


def _segment(value: str) -> str:
    """One URL path segment, fully percent-encoded (no ``/`` or ``..`` tricks from API-provided ids)."""
    return quote(value, safe="")


def _describe(exc: BaseException) -> str:
    """A short, URL-free description of a transport error."""
    os_error = getattr(exc, "os_error", None)
    reason = getattr(os_error, "strerror", None) if os_error is not None else None
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


# ------------------------------------------------------------------------------------ the client


class FloraClient:
    """Async client for the parts of the FLORA API the watcher uses. Raises only ``ApiError`` subclasses."""

    def __init__(
        self,
        base_url: str,
        api_key: Secret | None,
        *,
        timeout: float = 30,
        max_rps: float = 5,
        max_retries: int = 2,
        retry_after_cap: float = 60,
        clock: Clock = SYSTEM_CLOCK,
        rand: random.Random | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        on_request: RequestHook | None = None,
    ) -> None:
        base = URL(base_url.rstrip("/"))
        if not base.is_absolute() or base.scheme not in ("http", "https") or not base.host:
            raise ValueError("api base_url must be an absolute http(s) URL")
        self._base = base.with_query(None).with_fragment(None).with_user(None).with_password(None)
        self._origin = origin_of(self._base)
        self._key = api_key if api_key else None
        self._timeout = float(timeout)
        self._max_retries = max(0, int(max_retries))
        self._retry_after_cap = float(retry_after_cap)
        self._clock = clock
        self._rand = rand or random.Random()
        self._user_agent = user_agent
        self._on_request = on_request
        self._limiter = RateLimiter(max_rps, clock)
        self._session: aiohttp.ClientSession | None = None
        self._unknown_statuses: set[str] = set()
        self._foreign_hosts: set[str] = set()
        self.stats = ApiStats()
        # True while the caller knows the API is down (outage.OutageLog): failed requests and retries log at
        # debug, so an outage is told by the outage lines, not by every request of every sweep.
        self.quiet_failures = False

    def __repr__(self) -> str:
        return f"FloraClient(base_url={str(self._base)!r}, api_key={self._key!r})"

    @property
    def base_url(self) -> str:
        return str(self._base)

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    # -------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> FloraClient:
        self._ensure_session()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session. Safe to call twice; a later request opens a new session."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self._user_agent, "Accept": "application/json"},
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
            # aiohttp resends an idempotent request once, by itself, when a kept-alive connection drops; that
            # resend would bypass the request budget (ratelimit) and our retry policy, which already retry a
            # dropped connection. aiohttp has no public switch for it (3.9+: ``_retry_connection``).
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
        return self._session

    # -------------------------------------------------------------------------------- URLs

    def _url(self, *segments: str) -> URL:
        path = "/".join(_segment(s) for s in segments)
        return URL(f"{self._base}/{path}", encoded=True)

    def is_api_origin(self, url: URL) -> bool:
        return url.is_absolute() and origin_of(url) == self._origin

    def resolve(self, url: str) -> URL | None:
        """An absolute URL for ``url`` (absolute, or relative to base_url); None when it is not http(s)."""
        try:
            parsed = URL(url)
            if not parsed.is_absolute():
                parsed = URL(f"{self._base}/").join(parsed)
        except (ValueError, TypeError):
            return None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            return None
        return parsed

    # -------------------------------------------------------------------------------- endpoints

    async def pages(
        self,
        *,
        status: str | None = None,
        workspace_id: str | None = None,
        project_id: str | None = None,
        technique_id: str | None = None,
        limit: int = MAX_PAGE_LIMIT,
        max_pages: int = 10_000,
        resource: str = RESOURCE_TECHNIQUE_RUNS,
        cursor: str | None = None,
        memo: RunMemo | None = None,
    ) -> AsyncGenerator[ListPage, None]:
        """Every page of ``GET /technique-runs`` (newest first) with the given filters; with
        ``resource="generations"``, of ``GET /generations`` (whose runs are generations; it takes no
        ``technique_id``, so that filter is not sent).

        Starts at ``cursor`` (a ``next_cursor`` of an earlier listing) when given. Follows ``meta.next_cursor``
        until it is absent, null or empty. Runs already yielded on the last ``DEDUP_PAGES`` pages are dropped
        (pages shift while runs are created; remembering every run of a deep listing would cost memory in
        proportion to it). Stops, and logs ``api.cursor_loop``, when a cursor repeats or after ``max_pages``
        pages. ``memo`` (a ``RunMemo`` the caller keeps between listings) spares parsing runs shown unchanged.
        """
        filters = {
            "status": status,
            "workspace_id": workspace_id,
            "project_id": project_id,
            "technique_id": technique_id if resource == RESOURCE_TECHNIQUE_RUNS else None,
        }
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}")
        route = "list" if resource == RESOURCE_TECHNIQUE_RUNS else "list_generations"
        run_type = RUN_TYPE_OF_RESOURCE[resource]

        def parse(doc: object) -> ListPage:
            return parse_list_page(doc, default_run_type=run_type, memo=memo)

        def fast(body: bytes) -> ListPage | None:  # typed Structs decoded in C; None: not the documented shape
            return parse_list_body(body, default_run_type=run_type, memo=memo)

        params = {"limit": str(max(1, min(MAX_PAGE_LIMIT, int(limit))))}
        params.update({k: str(v) for k, v in filters.items() if v is not None})
        url = self._url(resource)
        recent: collections.deque[set[str]] = collections.deque(maxlen=DEDUP_PAGES)  # run ids, page by page
        seen_cursors: set[str] = set()
        for number in range(1, max_pages + 1):
            query = dict(params, cursor=cursor) if cursor is not None else params
            page = await self._request("GET", url, route=route, parse=parse, params=query, fast=fast)
            if page.skipped:
                log.warning("api.page_items_skipped", route=route, page=number, skipped=page.skipped)
            ids = {run.run_id for run in page.runs}
            if len(ids) == len(page.runs) and all(ids.isdisjoint(earlier) for earlier in recent):
                fresh: tuple[Run, ...] = page.runs  # the usual page: nothing shown twice
            else:
                shown = set().union(*recent)
                kept = []
                ids = set()
                for run in page.runs:
                    if run.run_id not in shown and run.run_id not in ids:
                        ids.add(run.run_id)
                        kept.append(run)
                fresh = tuple(kept)
            recent.append(ids)
            self._note_statuses(fresh)
            yield page if fresh is page.runs else replace(page, runs=fresh)
            next_cursor = page.next_cursor
            if next_cursor is None:
                return
            if next_cursor in seen_cursors or next_cursor == cursor:
                log.warning("api.cursor_loop", route=route, page=number, reason="repeated_cursor")
                return
            seen_cursors.add(next_cursor)
            cursor = next_cursor
        log.warning("api.cursor_loop", route=route, page=max_pages, reason="max_pages")

    async def list_runs(self, **filters: Any) -> AsyncIterator[Run]:
        """Every run of ``pages(**filters)``, flattened."""
        async for page in self.pages(**filters):
            for run in page.runs:
                yield run

    async def get_run(self, run_id: str, *, poll_url: str | None = None, technique_id: str | None = None) -> Run:
        """The current state of one run.

        Tries ``poll_url`` when it is on the API origin; when it is missing, foreign, answers 404/400 or redirects,
        ``/techniques/{technique_id}/runs/{run_id}`` (when the technique is known), then ``/runs/{run_id}``.
        Raises ``NotFoundError`` when every candidate answers 404.
        """
        candidates: list[tuple[URL, bool]] = []  # (url, is the run's own poll_url)
        if poll_url:
            resolved = self.resolve(poll_url)
            if resolved is not None and self.is_api_origin(resolved):
                candidates.append((resolved, True))
            else:
                self._note_foreign(resolved)
        if technique_id:
            candidates.append((self._url("techniques", technique_id, "runs", run_id), False))
        candidates.append((self._url("runs", run_id), False))

        def parse(doc: object) -> Run:
            return parse_run(doc, default_run_id=run_id)

        not_found: NotFoundError | None = None
        tried: set[str] = set()
        for url, is_poll_url in candidates:
            if str(url) in tried:
                continue
            tried.add(str(url))
            try:
                run = await self._request("GET", url, route="get_run", parse=parse)
            except NotFoundError as exc:
                not_found = exc
                continue
            except (ClientRequestError, ForeignOriginError, BadResponseError) as exc:
                # The run's own poll_url refused us (400), or redirected anywhere (never followed): the API's
                # documented paths for the same run are next.
                redirected = exc.status is not None and 300 <= exc.status < 400
                if is_poll_url and (exc.status == 400 or redirected or isinstance(exc, ForeignOriginError)):
                    continue
                raise
            self._note_statuses((run,))
            return run
        if not_found is not None and len(tried) == 1:
            raise not_found
        raise NotFoundError(
            f"get_run: run {run_id} not found at any of {len(tried)} paths",
            status=404,
            code=not_found.code if not_found else None,
            request_id=not_found.request_id if not_found else None,
        )

    async def start_run(self, technique: str, inputs: list[dict[str, Any]], **extra: Any) -> Run:
        """``POST /techniques/{technique}/runs`` with ``{"inputs", "mode": "async", **extra}``; the created run.

        A 429 is retried (the API refused the request); other transient failures are retried only when an
        ``idempotency_key`` is given, so a retry never starts a second run.
        """
        body = {"inputs": inputs, "mode": "async", **extra}

        def parse(doc: object) -> Run:
            return parse_run(doc, default_status="pending")

        return await self._request(
            "POST",
            self._url("techniques", technique, "runs"),
            route="start_run",
            parse=parse,
            json_body=body,
            retry_unsafe="idempotency_key" in extra,
        )

    # -------------------------------------------------------------------------------- one request

    async def _request(
        self,
        method: str,
        url: URL,
        *,
        route: str,
        parse: Callable[[object], T],
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        retry_unsafe: bool = True,
        fast: Callable[[bytes], T | None] | None = None,
    ) -> T:
        """One logical request: rate-limited attempts with short retries; raises ``ApiError``. ``fast``: reads a
        2xx body by itself when it can (None: it cannot; then ``json.loads`` and ``parse``)."""

        def should_retry(exc: BaseException) -> bool:
            return self._should_retry(exc, retry_unsafe=retry_unsafe)

        def before_sleep(state: RetryCallState) -> None:
            self._before_sleep(route, state)

        # The first attempt goes without tenacity (a sweep at 10,000 active runs makes ~35 requests a second, and
        # building a retry loop for each cost a tenth of the client's CPU); a failure it should retry enters the
        # loop as its attempt 1, so waits, logs and the attempt count are those of a loop from the start.
        try:
            return await self._attempt(method, url, route, parse, params, json_body, fast)
        except ApiError as exc:
            if self._max_retries == 0 or not should_retry(exc):
                self._log_failure(route, exc)
                raise
            first: ApiError | None = exc

        async def attempt() -> T:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return await self._attempt(method, url, route, parse, params, json_body, fast)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_retries + 1),
            retry=retry_if_exception(should_retry),
            wait=self._retry_wait,
            sleep=self._clock.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return await retrying(attempt)
        except ApiError as exc:
            self._log_failure(route, exc)
            raise

    async def _attempt(
        self,
        method: str,
        url: URL,
        route: str,
        parse: Callable[[object], T],
        params: Mapping[str, str] | None,
        json_body: Any,
        fast: Callable[[bytes], T | None] | None = None,
    ) -> T:
        if not self.is_api_origin(url):
            raise ForeignOriginError(f"{route}: refusing to request another origin ({url.host})")
        waited = await self._limiter.acquire()
        self.stats.rate_limit_wait_seconds += waited.paused
        self.stats.throttle_wait_seconds += waited.throttled
        headers = {}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        started = self._clock.monotonic()
        self.stats.requests += 1
        try:
            result = await self._exchange(method, url, route, parse, params, json_body, headers, fast)
        except ApiError as exc:
            self._record(route, outcome_of(exc), started, exc)
            raise
        self._record(route, "ok", started, None)
        self._limiter.on_success()
        return result

    async def _exchange(
        self,
        method: str,
        url: URL,
        route: str,
        parse: Callable[[object], T],
        params: Mapping[str, str] | None,
        json_body: Any,
        headers: dict[str, str],
        fast: Callable[[bytes], T | None] | None = None,
    ) -> T:
        session = self._ensure_session()
        try:
            async with session.request(
                method,
                url,
                params=params,
                json=json_body,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                status = resp.status
                resp_headers = resp.headers
        except TimeoutError:
            raise ApiUnavailableError(f"{route}: no answer within {self._timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise ApiUnavailableError(f"{route}: cannot reach the API ({_describe(exc)})") from None
        request_id = self._redact(sanitize_snippet(self._redact(resp_headers.get("request-id")) or "", 100))
        if 200 <= status < 300:
            return self._parse_body(body, status, route, parse, request_id, fast)
        if 300 <= status < 400:
            raise self._redirect_error(url, resp_headers.get("Location"), status, route, request_id)
        code, message = parse_error_body(self._redact_body(body))  # redact before snippets cut the key
        retry_after = parse_retry_after(resp_headers, self._clock.now_ms())
        error = error_for_status(
            status,
            route=route,
            code=code,
            message=message,
            request_id=request_id,
            retry_after=retry_after,
        )
        if isinstance(error, RateLimitedError):
            pause = self._limiter.on_rate_limited(
                retry_after, rand=self._rand.random(), retry_after_cap=self._retry_after_cap
            )
            log.warning(
                "api.rate_limited",
                route=route,
                retry_after=retry_after,
                pause=round(pause, 3),
                strikes=self._limiter.strikes,
                request_id=error.request_id,
            )
        raise error

    def _parse_body(
        self, body: bytes, status: int, route: str, parse: Callable[[object], T], request_id: str | None,
        fast: Callable[[bytes], T | None] | None = None,
    ) -> T:
        try:
            if fast is not None and (done := fast(body)) is not None:
                return done
        except BadResponseError as exc:
            raise BadResponseError(
                f"{route}: {self._redact(exc.message)}", status=status, request_id=request_id
            ) from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise BadResponseError(
                f"{route}: HTTP {status} body is not JSON", status=status, request_id=request_id
            ) from None
        except RecursionError:  # nested deeper than the parser's stack: hostile or broken, never a run
            raise BadResponseError(
                f"{route}: HTTP {status} body is nested too deeply", status=status, request_id=request_id
            ) from None
        try:
            return parse(doc)
        except BadResponseError as exc:
            raise BadResponseError(
                f"{route}: {self._redact(exc.message)}", status=status, request_id=request_id
            ) from None

    def _redirect_error(
        self, url: URL, location: str | None, status: int, route: str, request_id: str | None
    ) -> ApiError:
        target = None
        if location:
            try:
                target = url.join(URL(location))
            except (ValueError, TypeError):
                target = None
        if target is not None and not self.is_api_origin(target):
            return ForeignOriginError(
                f"{route}: HTTP {status} redirect to another origin ({target.host}) not followed",
                status=status,
                request_id=request_id,
            )
        return BadResponseError(f"{route}: HTTP {status} redirect not followed", status=status, request_id=request_id)

    # -------------------------------------------------------------------------------- retries

    def _should_retry(self, exc: BaseException, *, retry_unsafe: bool) -> bool:
        if not isinstance(exc, ApiError) or not exc.retryable:
            return False
        retry_after = exc.retry_after
        if retry_after is not None and retry_after > self._retry_after_cap:
            return False  # the server wants a longer break than a quick retry; the caller decides
        return isinstance(exc, RateLimitedError) or retry_unsafe

    def _retry_wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitedError):
            return 0.0  # the limiter's global pause does the waiting, for every request alike
        retry_after = exc.retry_after if isinstance(exc, ApiError) else None
        if retry_after is not None:
            return min(retry_after, self._retry_after_cap)
        return full_jitter(state.attempt_number - 1, self._rand.random(), base=RETRY_BASE, cap=RETRY_CAP)

    def _before_sleep(self, route: str, state: RetryCallState) -> None:
        self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        sleep = state.next_action.sleep if state.next_action else 0.0
        (log.debug if self.quiet_failures else log.info)(
            "api.retry_scheduled",
            route=route,
            attempt=state.attempt_number,
            wait=round(max(sleep, self._limiter.pause_remaining()), 3),
            outcome=outcome_of(exc) if isinstance(exc, ApiError) else None,
            status=exc.status if isinstance(exc, ApiError) else None,
            error=exc.message if isinstance(exc, ApiError) else None,
        )

    # -------------------------------------------------------------------------------- bookkeeping

    def _key_forms(self) -> tuple[str, ...]:
        """The key as it may be echoed back: verbatim and percent-encoded."""
        if self._key is None or not self._key.reveal():
            return ()
        key = self._key.reveal()
        return tuple(dict.fromkeys((key, quote(key, safe=""))))

    def _redact(self, text: str | None) -> str | None:
        """``text`` with the API key masked (a server or proxy may echo our Authorization header)."""
        if text:
            for form in self._key_forms():
                text = text.replace(form, "<secret>")
        return text

    def _redact_body(self, body: bytes) -> bytes:
        for form in self._key_forms():
            body = body.replace(form.encode(), b"<secret>")
        return body

    def _record(self, route: str, outcome: str, started: float, exc: ApiError | None) -> None:
        seconds = max(0.0, self._clock.monotonic() - started)
        self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
        if exc is None:
            self.stats.last_success_ms = self._clock.now_ms()
        else:
            self.stats.last_failure_ms = self._clock.now_ms()
            self.stats.last_error = exc.message
        if self._on_request is not None:
            try:
                self._on_request(route, outcome, seconds)
            except Exception as hook_exc:
                log.warning("api.request_hook_failed", route=route, error=type(hook_exc).__name__)

    def _log_failure(self, route: str, exc: ApiError) -> None:
        level = log.debug if isinstance(exc, NotFoundError) or self.quiet_failures else log.warning
        level(
            "api.request_failed",
            route=route,
            outcome=outcome_of(exc),
            status=exc.status,
            code=exc.code,
            request_id=exc.request_id,
            error=exc.message,
        )

    def _note_statuses(self, runs: tuple[Run, ...] | list[Run]) -> None:
        for run in runs:
            if run.status not in KNOWN_STATUSES and run.status not in self._unknown_statuses:
                if len(self._unknown_statuses) < _LOG_ONCE_LIMIT:
                    self._unknown_statuses.add(run.status)
                log.warning("api.unknown_status", run_id=self._redact(run.run_id), status=self._redact(run.status))

    def _note_foreign(self, url: URL | None) -> None:
        host = self._redact((url.host if url is not None else None) or "?") or "?"
        if host in self._foreign_hosts:
            return
        if len(self._foreign_hosts) < _LOG_ONCE_LIMIT:
            self._foreign_hosts.add(host)
        log.warning("api.foreign_poll_url", host=host, action="fetched via the API's own run paths instead")
