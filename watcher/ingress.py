"""The ingress (``[ingress]``, CONTRACT §9): FLORA's own signed run callbacks, on a listener of their own.

Shell (aiohttp.web). One handler, in the order that makes a flood of bad requests cheap:

1. another path → 404, another method → 405 (string compares);
2. a ``Content-Length`` over 256 KiB → 413 without reading the body (the connection is closed);
3. no ``Flora-Signature``, a header of the wrong shape, or a ``t`` outside ``tolerance`` → 401, still without
   reading the body and without any HMAC;
4. the body, read once as bytes (at most 256 KiB, else 413; a body that trickles in for more than 10 s: 408);
5. the HMAC over the raw bytes, constant time, every ``v1`` against every configured secret → 401;
6. the envelope → 400;
7. the delivery recorded durably (``record``: True when its id is new, False for a replay), then 200 — or 503
   when it could not be recorded, so FLORA tries again later. Nothing is done for the run before this point,
   and what follows (confirming the run with the API) happens after the answer (``on_accepted``).

Nothing an unauthenticated client sends changes state: only a verified delivery is recorded, and even then the
API's view of the run, not the callback, decides any event. Refusals are counted by reason (``IngressStats``,
the metrics) and logged as one summary line a minute at most (``RejectionSummary``), never a line a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.crashpoints import crash_point
from watcher.errors import StoreError, WatcherError
from watcher.signing import (
    Callback,
    CallbackRejected,
    Rejection,
    check_hmac,
    check_timestamp,
    parse_callback,
    parse_flora_signature,
)

log = structlog.get_logger("watcher.ingress")

MAX_BODY = 256 * 1024  # bytes (CONTRACT §9: 413 above)
READ_TIMEOUT_S = 10.0  # for the whole body, once the headers are in
SUMMARY_EVERY_S = 60.0  # refusals are logged as one line at most this often

Record = Callable[[Callback], Awaitable[bool]]  # durably record a delivery: True when its id is new
Accepted = Callable[[Callback], None]  # told after the answer: the run is to be confirmed
Outcome = Callable[[str, "Rejection | None"], None]  # ("accepted" | "duplicate" | "rejected" | "unrecorded", why)


_REFUSALS = {reason: json.dumps({"error": reason.value}, separators=(",", ":")).encode() for reason in Rejection}

# ------------------------------------------------------------------------------------------------ pure


@dataclass(slots=True)
class RejectionSummary:
    """Refusals counted between two log lines: ``note`` each one, ``due(now)`` says when a line is owed (the
    first refusal after a quiet minute at once, then at most one a minute); ``take()`` returns the counts and
    starts over."""

    every_s: float = SUMMARY_EVERY_S
    counts: Counter[str] = field(default_factory=Counter)
    last_logged: float | None = None

    def note(self, reason: Rejection) -> None:
        self.counts[reason.value] += 1

    def due(self, now: float) -> bool:
        return bool(self.counts) and (self.last_logged is None or now - self.last_logged >= self.every_s)

    def take(self, now: float) -> dict[str, int]:
        counts, self.counts = dict(sorted(self.counts.items())), Counter()
        self.last_logged = now
        return counts


@dataclass(slots=True)
class IngressStats:
    """What the ingress has seen since it started (``status``, the page, the metrics)."""

    received: int = 0
    accepted: int = 0  # genuine deliveries recorded for the first time
    duplicate: int = 0  # genuine deliveries whose id was recorded before (FLORA's retries, replays)
    unrecorded: int = 0  # genuine deliveries the store could not record (answered 503)
    rejected: Counter[str] = field(default_factory=Counter)  # by Rejection value
    last_accepted_ms: int | None = None
    last_rejected_ms: int | None = None

    def snapshot(self) -> dict[str, object]:
        return {"received": self.received, "accepted": self.accepted, "duplicate": self.duplicate,
                "unrecorded": self.unrecorded, "rejected": dict(sorted(self.rejected.items())),
                "last_accepted_ms": self.last_accepted_ms, "last_rejected_ms": self.last_rejected_ms}


# ------------------------------------------------------------------------------------------------ shell


def _answer(status: int, body: dict[str, object] | bytes, *, close: bool = False,
            headers: dict[str, str] | None = None) -> web.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    response = web.Response(status=status, body=raw, content_type="application/json", headers=headers)
    if close:
        response.force_close()
    return response


class Ingress:
    """The callback endpoint. ``keys`` are the HMAC keys (``signing.flora_key`` of each secret);
    ``tolerance_s`` the accepted age of ``t`` both ways (0: unchecked)."""

    def __init__(self, *, path: str, keys: Sequence[bytes], tolerance_s: float, record: Record,
                 on_accepted: Accepted | None = None, on_outcome: Outcome | None = None,
                 clock: Clock = SYSTEM_CLOCK, max_body: int = MAX_BODY) -> None:
        if not keys:
            raise ValueError("the ingress needs at least one signing secret")
        self.path = path
        self.keys = tuple(keys)
        self.tolerance_s = tolerance_s
        self.record = record
        self.on_accepted = on_accepted or (lambda cb: None)
        self.on_outcome = on_outcome or (lambda outcome, reason: None)
        self.clock = clock
        self.max_body = max_body
        self.stats = IngressStats()
        self.summary = RejectionSummary()
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.host: str | None = None
        self.port: int | None = None

    # -- one request

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.received += 1
        try:
            callback = await self._verified(request)
        except CallbackRejected as exc:
            return self._refuse(exc)
        try:
            new = await self.record(callback)
        except (StoreError, WatcherError, OSError) as exc:
            self.stats.unrecorded += 1
            self.on_outcome("unrecorded", None)
            log.error("ingress.unrecorded", delivery_id=callback.delivery_id, run_id=callback.run_id,
                      error=str(exc)[:300], note="answered 503: FLORA delivers it again later")
            return _answer(503, {"error": "not recorded, try again"})
        now_ms = self.clock.now_ms()
        self.stats.last_accepted_ms = now_ms
        if not new:
            self.stats.duplicate += 1
            self.on_outcome("duplicate", None)
            log.debug("ingress.duplicate", delivery_id=callback.delivery_id, run_id=callback.run_id)
            return _answer(200, {"received": True, "duplicate": True})
        self.stats.accepted += 1
        self.on_outcome("accepted", None)
        log.debug("ingress.accepted", delivery_id=callback.delivery_id, run_id=callback.run_id, type=callback.type)
        response = _answer(200, {"received": True, "duplicate": False})
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client may be gone: it is recorded anyway
            await response.prepare(request)
            await response.write_eof()
        crash_point("callback_answered")
        self.on_accepted(callback)
        return response

    async def _verified(self, request: web.Request) -> Callback:
        """The request's callback, or CallbackRejected: every check that needs no body comes first."""
        if request.path != self.path:
            raise CallbackRejected(Rejection.PATH, "not the callback path")
        if request.method != "POST":
            raise CallbackRejected(Rejection.METHOD, "only POST")
        length = request.content_length
        if length is not None and length > self.max_body:
            raise CallbackRejected(Rejection.TOO_LARGE, f"Content-Length {length} over {self.max_body}")
        now_s = self.clock.now_ms() / 1000
        sig = parse_flora_signature(request.headers.get("Flora-Signature"))
        check_timestamp(sig.timestamp, now_s, self.tolerance_s)
        body = await self._body(request)
        return parse_callback(body, timestamp=check_hmac(body, sig, self.keys))

    async def _body(self, request: web.Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > self.max_body:
                        raise CallbackRejected(Rejection.TOO_LARGE, f"body over {self.max_body} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise CallbackRejected(Rejection.SLOW_BODY, f"body not received within {READ_TIMEOUT_S:g}s") from None
        return b"".join(chunks)

    def _refuse(self, exc: CallbackRejected) -> web.Response:
        reason = exc.reason
        self.stats.rejected[reason.value] += 1
        self.stats.last_rejected_ms = self.clock.now_ms()
        self.summary.note(reason)
        self.on_outcome("rejected", reason)
        self._log_summary_if_due()
        headers = {"Allow": "POST"} if reason is Rejection.METHOD else None
        return _answer(reason.status, _REFUSALS[reason], headers=headers,
                       close=reason in (Rejection.TOO_LARGE, Rejection.SLOW_BODY))

    def _log_summary_if_due(self, *, closing: bool = False) -> None:
        now = self.clock.monotonic()
        if self.summary.due(now) or (closing and self.summary.counts):
            counts = self.summary.take(now)
            log.warning("ingress.rejected", total=sum(counts.values()), by_reason=counts,
                        window_s=self.summary.every_s,
                        note="requests that are not genuine FLORA callbacks; nothing was changed")

    # -- serving

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0: any free port; ``self.port`` tells which): connections are accepted from
        the moment this returns. WatcherError when the address cannot be bound."""
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            self._listener = await self._listen(runner, host, port)
        except OSError as exc:
            await runner.cleanup()
            raise WatcherError(f"ingress.listen: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._runner = runner
        self.host, self.port = self._listener.sockets[0].getsockname()[:2]
        self._ticker = asyncio.create_task(self._summaries(), name="ingress-summaries")
        log.info("ingress.listening", host=self.host, port=self.port, path=self.path)

    @staticmethod
    async def _listen(runner: web.AppRunner, host: str, port: int) -> asyncio.Server:
        assert runner.server is not None
        return await asyncio.get_running_loop().create_server(runner.server, host, port, reuse_address=True)

    async def serve(self) -> None:
        """The daemon's supervised task ``ingress``: waits on the listening socket until cancelled; it ends (a
        crash, restarted) when the socket is closed under it, and a restart binds the same address again."""
        assert self._runner is not None and self._listener is not None
        if not self._listener.is_serving():
            self._listener = await self._listen(self._runner, self.host or "127.0.0.1", self.port or 0)
            log.info("ingress.listening", host=self.host, port=self.port, path=self.path, again=True)
        await self._listener.serve_forever()

    async def _summaries(self) -> None:
        """The refusals of a minute that ended without another one are logged too. (Real time: this only
        decides when a line is written, and a test clock that moves on every sleep would spin here.)"""
        while True:
            await asyncio.sleep(self.summary.every_s)
            self._log_summary_if_due()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        self._log_summary_if_due(closing=True)  # what the last minute refused
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()  # ends the open connections too
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None

