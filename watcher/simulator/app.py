"""The FLORA API simulator's shell: the ``Simulator`` (clock, seeded randomness, counters) and its app.

Routes follow ``shared/flora-api.md``: ``/api/v1/...`` needs ``Authorization: Bearer <key>`` and is subject
to the fault knobs; ``/_sim/...`` is the admin API (no auth, never faulted, not counted). Every response
carries a ``request-id: req_…`` header, and every error FLORA's envelope
``{"error": {"code", "message"[, "fields"]}}``.
Decisions live in ``scenario.py`` (runs, indexes, shapes) and ``faults.py`` (what goes wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from watcher.simulator import faults as faultlib
from watcher.simulator import scenario as sc
from watcher.simulator.callbacks import ATTEMPT_TIMEOUT_S, DEFAULT_SIGNING_SECRET, CallbackSender
from watcher.simulator.faults import Faults

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ClockLike = Callable[[], int]

API_PREFIX = "/api/v1"
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
CREATE_KEYS = frozenset({"inputs", "mode", "callback_url", "idempotency_key"})
GENERATE_KEYS = frozenset({"project_id", "prompt", "type", "workspace_id", "callback_url", "model", "params"})
GENERATION_TYPES = ("image", "video", "audio", "text")
INPUT_KEYS = frozenset({"id", "type", "value"})
INPUT_TYPES = ("text", "imageUrl", "videoUrl")
MODES = ("async", "stream")


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


def _as_clock(clock: Any) -> ClockLike:
    """A ``() -> ms`` callable, an object with ``now_ms()`` (watcher.clock.Clock), or None (real time)."""
    if clock is None:
        return _system_ms
    if hasattr(clock, "now_ms"):
        return clock.now_ms
    return clock


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, fields: Sequence[tuple[str, str]] = (),
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return _json(sc.InputError(message, fields, code=code, status=status).envelope(), status, headers)


_HTTP_ERRORS = {
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "Method not allowed."),
    413: ("payload_too_large", "Request body too large."),
}


def _range(value: Any, name: str) -> int | tuple[int, int]:
    """A JSON number or [min, max] pair of milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return int(value)
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in value)):
        lo, hi = sorted(int(v) for v in value)
        return (lo, hi)
    raise ValueError(f"{name} must be a non-negative number or [min, max]")


def _valid_callback_url(url: Any) -> bool:
    """FLORA accepts only public HTTPS callback URLs (no localhost, *.local, *.internal, private IPs).

    The simulator alone also takes loopback URLs (http or https: 127.0.0.0/8, ::1, localhost), so tests and
    the demo can receive callbacks without TLS or a public host; FLORA itself never calls them."""
    if not isinstance(url, str) or len(url) > 2048:
        return False
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - a bad port raises ValueError here
    except ValueError:
        return False
    if parts.scheme in ("http", "https") and _is_loopback(host):
        return True
    if parts.scheme != "https" or not host or host == "localhost" or host.endswith((".local", ".internal")):
        return False
    if host in ("metadata.google.internal", "169.254.169.254"):
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True
    return ip.is_global


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class _Idempotent:
    body: str
    response: dict[str, Any]
    created_ms: int


class Simulator:
    """A FLORA API on loopback: runs on their own clocks, fault knobs, counters and an admin API.

    ``clock`` returns Unix ms (default: real time); a manual one makes tests deterministic. ``seed`` fixes
    run ids, durations, outcomes and fault draws. ``pending_ms``/``running_ms``/``fail_ratio`` are the
    defaults for runs created without them (``create_run`` and ``POST /techniques/{slug}/runs``); each
    duration is a number or a ``(min, max)`` range. ``public_base_url`` (``…/api/v1``) is advertised in
    ``poll_url`` instead of the request's own origin. Runs created with a ``callback_url`` get FLORA's signed
    callback when they end (``callbacks.py``), signed with ``signing_secret`` (several: one ``v1`` each, as
    during a rotation); ``callbacks`` holds their schedule and what became of each attempt.
    """

    def __init__(
        self,
        api_key: str = "sk_test_sim",
        seed: int = 1,
        clock: ClockLike | None = None,
        faults: Faults | None = None,
        *,
        public_base_url: str | None = None,
        pending_ms: int | tuple[int, int] = 1_000,
        running_ms: int | tuple[int, int] = 3_000,
        fail_ratio: float = 0.2,
        signing_secret: str | Sequence[str] = DEFAULT_SIGNING_SECRET,
        callback_timeout_s: float = ATTEMPT_TIMEOUT_S,
    ) -> None:
        self._api_key = api_key
        self._clock = _as_clock(clock)
        self._rng = random.Random(seed)  # run data: ids, durations, outcomes
        self._fault_rng = random.Random(f"faults:{seed}")  # separate, so faults never change the runs
        self._id_rng = random.Random(f"request-ids:{seed}")
        self.faults = faults or Faults()
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.defaults: dict[str, Any] = {"pending_ms": pending_ms, "running_ms": running_ms, "fail_ratio": fail_ratio}
        self.scenario = sc.Scenario()
        self._api_requests = 0
        self._requests: Counter[tuple[str, str]] = Counter()
        self._fault_counts: Counter[str] = Counter()
        self._stats_since = self._clock()
        self._idempotency: dict[str, _Idempotent] = {}
        secrets = (signing_secret,) if isinstance(signing_secret, str) else tuple(signing_secret)
        self.callbacks = CallbackSender(
            self._clock, lambda: self.faults, secrets=secrets, rng=random.Random(f"callbacks:{seed}"),
            poll_s=None if clock is None else 0.01, timeout_s=callback_timeout_s)
        self._callback_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Simulator runs={len(self.scenario.runs)} faults={self.faults!r}>"

    # ---------------------------------------------------------------------------------------- Python API

    def now_ms(self) -> int:
        """Advance every run to the clock's current instant and return it."""
        self.scenario.advance(self._clock(), self._rng)
        return self.scenario.now_ms

    def create_run(
        self,
        technique: str = "cctv-cam",
        project_id: str | None = None,
        workspace_id: str | None = None,
        pending_ms: int | Sequence[int] | None = None,
        running_ms: int | Sequence[int] | None = None,
        outcome: str | None = None,
        error_code: str | None = None,
        created_at: int | None = None,
        poll_url: str | None = None,
        *,
        fail_ratio: float | None = None,
        kind: str = sc.TECHNIQUE,
        model: str | None = None,
        stall_ms: int = 0,
        callback_url: str | None = None,
    ) -> str:
        """Create one run and return its id.

        ``technique`` is a slug or ``tech_`` id. ``pending_ms``/``running_ms`` are a number or ``(min, max)``;
        None takes the simulator's defaults. ``outcome=None`` draws failed with ``fail_ratio`` (failed when
        ``error_code`` is given). ``created_at`` (Unix ms) in the past makes a run that is already running or
        terminal. ``poll_url`` overrides the run's advertised poll URL. ``kind="generation"`` makes a
        generation of ``model`` (a model id from ``scenario.MODELS``; default the first) instead.
        ``stall_ms`` makes a stuck run: its progress stands still that long halfway through running (a long
        ``pending_ms`` makes one stuck in pending). ``callback_url``: FLORA's signed callback goes there when
        the run ends (loopback URLs are allowed here, unlike at FLORA).
        """
        if callback_url is not None and not _valid_callback_url(callback_url):
            raise ValueError("callback_url must be a public HTTPS URL (or, in the simulator, a loopback one)")
        if kind == sc.GENERATION:
            info = sc.MODELS_BY_ID.get(model or sc.MODELS[0].technique_id)
            if info is None:
                known = ", ".join(m.technique_id for m in sc.MODELS)
                raise ValueError(f"unknown model {model!r}; known: {known}")
        elif kind == sc.TECHNIQUE:
            found = sc.TECHNIQUES_BY_KEY.get(technique)
            if found is None:
                known = ", ".join(t.slug for t in sc.TECHNIQUES)
                raise ValueError(f"unknown technique {technique!r}; known: {known}")
            info = found
        else:
            raise ValueError(f"kind must be 'technique' or 'generation', not {kind!r}")
        now = self.now_ms()
        run = sc.build_run(
            self._rng, seq=self.scenario.next_seq, now_ms=now, technique=info,
            project_id=project_id or self._rng.choice(sc.PROJECTS),
            workspace_id=workspace_id or sc.WORKSPACE_ID,
            created_at=created_at,
            pending_ms=self.defaults["pending_ms"] if pending_ms is None else pending_ms,
            running_ms=self.defaults["running_ms"] if running_ms is None else running_ms,
            outcome=outcome,
            fail_ratio=self.defaults["fail_ratio"] if fail_ratio is None else fail_ratio,
            error_code=error_code,
            poll_url=poll_url,
            kind=kind,
            stall_ms=stall_ms,
        )
        self.scenario.add(run)
        self.scenario.advance(now, self._rng)
        if callback_url is not None:
            self.callbacks.schedule(run, callback_url)
        return run.run_id

    def create_generation(self, model: str | None = None, **kwargs: Any) -> str:
        """``create_run(kind="generation", model=model, **kwargs)``: one generation run; returns its id."""
        return self.create_run(kind=sc.GENERATION, model=model, **kwargs)

    def create_runs(self, count: int, **kwargs: Any) -> list[str]:
        """``count`` runs made by ``create_run(**kwargs)``. ``created_at`` may be a ``(min, max)`` range."""
        created_at = kwargs.pop("created_at", None)
        ids = []
        for _ in range(count):
            when = created_at
            if isinstance(created_at, list | tuple):
                when = self._rng.randint(*sorted(created_at))
            ids.append(self.create_run(created_at=when, **kwargs))
        return ids

    def transitions(self, since_ms: int = 0) -> list[dict[str, Any]]:
        """Ground truth: every terminal transition with ``completed_at >= since_ms``, oldest first."""
        self.now_ms()
        return [t.to_dict() for t in self.scenario.transitions(since_ms)]

    def run_truth(self, run_id: str) -> dict[str, Any] | None:
        now = self.now_ms()
        run = self.scenario.runs.get(run_id)
        return sc.run_truth(run, self.scenario.status_of(run_id), now) if run else None

    def start_generator(
        self,
        rate: float,
        *,
        duration_ms: tuple[int, int] = (20_000, 120_000),
        pending_ms: tuple[int, int] = (0, 2_000),
        fail_ratio: float = 0.2,
        techniques: Sequence[str] = (),
        projects: Sequence[str] = (),
        warm: bool = False,
        stop_after_ms: int | None = None,
        generation_share: float = 0.0,
    ) -> dict[str, Any]:
        """Create ``rate`` runs per second from now on. ``warm`` backdates the start by the longest duration,
        so the steady state (about rate x mean duration active runs) holds from the first request.
        ``generation_share`` of the runs are generations."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        if not 0.0 <= generation_share <= 1.0:
            raise ValueError("generation_share must be between 0 and 1")
        for slug in techniques:
            if slug not in sc.TECHNIQUES_BY_KEY:
                raise ValueError(f"unknown technique {slug!r}")
        now = self.now_ms()
        lo, hi = sorted(duration_ms)
        start = now - hi if warm else now
        self.scenario.set_generator(sc.GeneratorSpec(
            rate=rate, start_ms=start, duration_ms=(lo, hi), pending_ms=(min(pending_ms), max(pending_ms)),
            fail_ratio=fail_ratio, techniques=tuple(sc.TECHNIQUES_BY_KEY[s].slug for s in techniques),
            projects=tuple(projects), stop_ms=None if stop_after_ms is None else now + stop_after_ms,
            generation_share=generation_share,
        ))
        return self.generator_status()

    def stop_generator(self) -> None:
        self.now_ms()  # runs due before the stop still get created
        self.scenario.set_generator(None)

    def generator_status(self) -> dict[str, Any]:
        spec = self.scenario.generator
        if spec is None:
            return {"running": False}
        return {"running": True, "rate": spec.rate, "start_ms": spec.start_ms, "stop_ms": spec.stop_ms,
                "duration_ms": list(spec.duration_ms), "pending_ms": list(spec.pending_ms),
                "fail_ratio": spec.fail_ratio, "generation_share": spec.generation_share}

    def set_faults(self, **changes: Any) -> Faults:
        self.faults = faultlib.updated(self.faults, changes)
        return self.faults

    def stats(self) -> dict[str, Any]:
        """API request counters by route and status, injected faults, and runs by status."""
        now = self.now_ms()  # runs counted as of now
        by_route: dict[str, dict[str, int]] = {}
        by_status: Counter[str] = Counter()
        for (route, status), n in sorted(self._requests.items()):
            by_route.setdefault(route, {})[status] = n
            by_status[status] += n
        return {
            "requests_total": sum(self._requests.values()),
            "by_route": by_route,
            "by_status": dict(sorted(by_status.items())),
            "faults": dict(sorted(self._fault_counts.items())),
            "runs": self.scenario.counts(),
            "runs_by_kind": {kind: self.scenario.counts(kind) for kind in sc.KINDS},
            "callbacks": self.callbacks.stats(),
            "since_ms": self._stats_since,
            "now_ms": now,
        }

    def reset_stats(self) -> None:
        self._requests.clear()
        self._fault_counts.clear()
        self._stats_since = self._clock()

    def check_key(self, authorization: str | None) -> tuple[str, str] | None:
        """None when the header carries our key, else FLORA's (code, message) for the 401."""
        if not authorization or not authorization.strip():
            return "unauthorized", "Missing API key. Send it as 'Authorization: Bearer <key>'."
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._api_key.encode()):
            return "invalid_api_key", "The API key is invalid or has been revoked."
        return None

    # ---------------------------------------------------------------------------------------- the app

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 20)
        app.on_response_prepare.append(self._add_request_id)
        app.on_startup.append(self._start_callbacks)
        app.on_cleanup.append(self._stop_callbacks)
        r = app.router
        r.add_get(f"{API_PREFIX}/technique-runs", self._list_runs)
        r.add_get(f"{API_PREFIX}/techniques/{{technique}}/runs/{{run_id}}", self._get_technique_run)
        r.add_post(f"{API_PREFIX}/techniques/{{technique}}/runs", self._create_run)
        r.add_get(f"{API_PREFIX}/runs/{{run_id}}", self._get_run)
        r.add_get(f"{API_PREFIX}/generations", self._list_generations)
        r.add_post(f"{API_PREFIX}/generate", self._create_generation)
        r.add_get("/_sim/stats", self._admin_stats)
        r.add_post("/_sim/stats/reset", self._admin_stats_reset)
        r.add_post("/_sim/runs", self._admin_create_runs)
        r.add_get("/_sim/runs/{run_id}", self._admin_run)
        r.add_get("/_sim/transitions", self._admin_transitions)
        r.add_get("/_sim/faults", self._admin_faults)
        r.add_post("/_sim/faults", self._admin_faults)
        r.add_get("/_sim/generator", self._admin_generator)
        r.add_post("/_sim/generator", self._admin_generator)
        r.add_get("/_sim/callbacks", self._admin_callbacks)
        return app

    async def _start_callbacks(self, app: web.Application) -> None:
        if self._callback_task is None:
            self._callback_task = asyncio.create_task(self.callbacks.run(), name="simulator-callbacks")

    async def _stop_callbacks(self, app: web.Application) -> None:
        task, self._callback_task = self._callback_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.callbacks.close()

    async def _add_request_id(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["request-id"] = f"req_{self._id_rng.getrandbits(96):024x}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await self._guarded(request, handler)
        route = request.match_info.route.resource
        name = f"{request.method} {route.canonical if route is not None else 'unmatched'}"
        response = await self._serve_api(request, handler)
        self._requests[(name, "reset" if isinstance(response, _Dropped) else str(response.status))] += 1
        return response

    async def _serve_api(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        plan = faultlib.plan_request(self.faults, self._api_requests, self._fault_rng)
        self._api_requests += 1
        if plan.stall_ms:
            self._fault_counts["stall"] += 1
        if plan.delay_ms or plan.stall_ms:
            await asyncio.sleep((plan.delay_ms + plan.stall_ms) / 1000)
        if plan.reset:
            self._fault_counts[plan.name or "reset"] += 1
            if request.transport is not None:
                request.transport.abort()
            return _Dropped()
        denied = self.check_key(request.headers.get("Authorization"))
        if denied:
            return error_response(401, *denied)
        if plan.name:
            self._fault_counts[plan.name] += 1
        if plan.rate_limited:
            return error_response(429, "rate_limited", "Too many requests. Slow down and retry later.",
                                  headers=faultlib.retry_after_headers(self.faults, self._clock()))
        if plan.error_status == 502:
            return web.Response(status=502, text=faultlib.BAD_GATEWAY_HTML, content_type="text/html")
        if plan.error_status == 503:
            return error_response(503, "service_unavailable", "The service is temporarily unavailable.")
        if plan.error_status is not None:
            return error_response(plan.error_status, "internal_error", "An internal error occurred.")
        response = await self._guarded(request, handler)
        if (plan.malformed and isinstance(response, web.Response) and response.status < 300
                and isinstance(response.body, bytes | bytearray) and response.body):
            body, content_type = faultlib.malformed_body(plan.malformed, bytes(response.body))
            return web.Response(body=body, status=response.status, content_type=content_type)
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run the handler; map aiohttp's HTTP errors and our InputError to FLORA's envelope."""
        try:
            return await handler(request)
        except sc.InputError as exc:
            return _json(exc.envelope(), exc.status)
        except web.HTTPException as exc:
            code, message = _HTTP_ERRORS.get(exc.status, ("unknown_error", exc.reason))
            return error_response(exc.status, code, message)

    def _api_base(self, request: web.Request) -> str:
        return self.public_base_url or f"{request.scheme}://{request.host}{API_PREFIX}"

    def _render(self, run: sc.SimRun, request: web.Request, *, item: bool) -> dict[str, Any]:
        shape = sc.list_item if item else sc.single_run
        body = shape(run, self.scenario.now_ms, api_base=self._api_base(request),
                     cost_delay_ms=self.faults.charged_cost_delay_ms, nulls=self.faults.nulls)
        return faultlib.rewrite_run(body, self.faults)

    # ---------------------------------------------------------------------------------------- API routes

    async def _list_runs(self, request: web.Request) -> web.Response:
        if self.faults.technique_runs_status is not None:
            return _listing_refused(self.faults.technique_runs_status)
        return self._list(request, sc.TECHNIQUE, "technique_runs")

    async def _list_generations(self, request: web.Request) -> web.Response:
        if self.faults.generations_status is not None:  # an API (or a key) without the generations resource
            return _listing_refused(self.faults.generations_status)
        return self._list(request, sc.GENERATION, "generations")

    def _list(self, request: web.Request, kind: str, key: str) -> web.Response:
        query = sc.parse_list_query(request.query, kind)
        self.now_ms()
        runs, total = self.scenario.page(query)
        return _json({
            key: [self._render(run, request, item=True) for run in runs],
            "meta": {"next_cursor": sc.next_cursor(query, len(runs), total), "total_estimate": total},
        })

    def _find_run(self, run_id: str) -> sc.SimRun:
        self.now_ms()
        run = self.scenario.runs.get(run_id)
        if run is None:
            raise sc.InputError(
                "Run not found. Check you have not switched workspaces between create and poll.",
                code="not_found", status=404)
        return run

    async def _get_technique_run(self, request: web.Request) -> web.Response:
        run = self._find_run(request.match_info["run_id"])
        if run.kind != sc.TECHNIQUE or request.match_info["technique"] not in (
            run.technique.slug, run.technique.technique_id
        ):
            raise sc.InputError("Run not found for this technique.", code="not_found", status=404)
        return _json(self._render(run, request, item=False))

    async def _get_run(self, request: web.Request) -> web.Response:
        return _json(self._render(self._find_run(request.match_info["run_id"]), request, item=False))

    async def _create_run(self, request: web.Request) -> web.Response:
        info = sc.TECHNIQUES_BY_KEY.get(request.match_info["technique"])
        if info is None:
            raise sc.InputError("Technique not found.", code="not_found", status=404)
        try:
            body = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise sc.InputError("Request body must be valid JSON.", code="invalid_json") from None
        _validate_create(body)
        now = self.now_ms()
        key = body.get("idempotency_key")
        canonical = json.dumps([info.slug, body], sort_keys=True)
        if key is not None:
            self._idempotency = {k: v for k, v in self._idempotency.items()
                                 if now - v.created_ms < IDEMPOTENCY_TTL_MS}
            seen = self._idempotency.get(key)
            if seen is not None and seen.body != canonical:
                raise sc.InputError("This idempotency key was already used with a different request body.",
                                    code="idempotency_conflict", status=422)
            if seen is not None:
                return _json(seen.response, 201, {"idempotent-replayed": "true"})
        run_id = self.create_run(info.slug, created_at=now, callback_url=body.get("callback_url"))
        response = self._render(self.scenario.runs[run_id], request, item=False)
        quote_key = "chargedCost" if self.faults.camel_case else "charged_cost"
        response.setdefault(quote_key, info.price_usd)  # a quote at create time (flora-api.md §6)
        if key is not None:
            self._idempotency[key] = _Idempotent(canonical, response, now)
        return _json(response, 201)

    async def _create_generation(self, request: web.Request) -> web.Response:
        """``POST /generate``: a generation run; the answer is a run ticket (flora-api.md §3), 201."""
        try:
            body = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise sc.InputError("Request body must be valid JSON.", code="invalid_json") from None
        _validate_generate(body)
        model = body.get("model") or sc.MODEL_FOR_TYPE[body["type"]].technique_id
        info = sc.MODELS_BY_ID.get(model)
        if info is None:
            raise sc.InputError("Model not found.", [("model", "Use a model id returned by GET /models")],
                                code="not_found", status=404)
        now = self.now_ms()
        run_id = self.create_generation(model, project_id=body["project_id"], workspace_id=body["workspace_id"],
                                        created_at=now, callback_url=body.get("callback_url"))
        run = self.scenario.runs[run_id]
        ticket = {
            "run_id": run_id,
            "type": sc.GENERATION,
            "charged_cost": info.price_usd,  # a quote (flora-api.md §6)
            "estimated_seconds": max(1, round((run.completed_at - run.created_at) / 1000)),
            "poll_url": sc.technique_poll_url(self._api_base(request), run),
            "project_id": run.project_id,
            "model": {"model_id": info.technique_id},
            "technique": None,
            "action": None,
        }
        return _json(faultlib.rewrite_run(ticket, self.faults), 201)

    # ---------------------------------------------------------------------------------------- admin routes

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return _json(self.stats())

    async def _admin_stats_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return _json(self.stats())

    async def _admin_body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise sc.InputError("Request body must be valid JSON.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise sc.InputError("Request body must be a JSON object.")
        return body

    async def _admin_create_runs(self, request: web.Request) -> web.Response:
        body = await self._admin_body(request)
        passed = ("technique", "project_id", "workspace_id", "outcome", "error_code", "poll_url",
                  "fail_ratio", "kind", "model", "stall_ms", "callback_url")
        allowed = {*passed, "count", "pending_ms", "running_ms", "created_at", "created_at_offset_ms"}
        try:
            _no_unknown(body, allowed)
            count = int(body.get("count", 1))
            if not 1 <= count <= 100_000:
                raise ValueError("count must be between 1 and 100000")
            kwargs: dict[str, Any] = {k: body[k] for k in passed if k in body}
            for name in ("pending_ms", "running_ms"):
                if name in body:
                    kwargs[name] = _range(body[name], name)
            kwargs["created_at"] = self._created_at(body)
            run_ids = self.create_runs(count, **kwargs)
        except (ValueError, TypeError) as exc:
            raise sc.InputError(str(exc)) from None
        return _json({"run_ids": run_ids, "now_ms": self.scenario.now_ms}, 201)

    def _created_at(self, body: Mapping[str, Any]) -> int | tuple[int, int] | None:
        if "created_at" in body:
            return int(body["created_at"])
        if "created_at_offset_ms" not in body:
            return None
        offset = body["created_at_offset_ms"]
        now = self.now_ms()
        if isinstance(offset, list) and len(offset) == 2:
            lo, hi = sorted(int(v) for v in offset)
            return (now + lo, now + hi)
        return now + int(offset)

    async def _admin_callbacks(self, request: web.Request) -> web.Response:
        """Every callback delivery (``?run_id=`` one run's) with its attempts, and the counters."""
        run_id = request.query.get("run_id")
        deliveries = [d.to_dict() for d in self.callbacks.deliveries.values() if run_id in (None, d.run_id)]
        return _json({"deliveries": deliveries, "stats": self.callbacks.stats(), "now_ms": self.now_ms()})

    async def _admin_run(self, request: web.Request) -> web.Response:
        truth = self.run_truth(request.match_info["run_id"])
        if truth is None:
            raise sc.InputError("No such run.", code="not_found", status=404)
        return _json(truth)

    async def _admin_transitions(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since_ms", "0"))
        except ValueError:
            raise sc.InputError("Invalid since_ms.", [("since_ms", "Expected an integer")]) from None
        return _json({"transitions": self.transitions(since), "now_ms": self.scenario.now_ms})

    async def _admin_faults(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                self.set_faults(**await self._admin_body(request))
            except ValueError as exc:
                raise sc.InputError(str(exc)) from None
        return _json(self.faults.to_dict())

    async def _admin_generator(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return _json(self.generator_status())
        body = await self._admin_body(request)
        try:
            _no_unknown(body, {"rate", "duration_ms", "duration_s", "pending_ms", "fail_ratio", "techniques",
                               "projects", "warm", "stop_after_s", "stop", "generation_share"})
            if body.get("stop") or not body.get("rate"):
                self.stop_generator()
                return _json(self.generator_status())
            duration = body.get("duration_ms") or [int(s * 1000) for s in body.get("duration_s", (20, 120))]
            status = self.start_generator(
                float(body["rate"]),
                duration_ms=_pair(_range(duration, "duration_ms")),
                pending_ms=_pair(_range(body.get("pending_ms", [0, 2000]), "pending_ms")),
                fail_ratio=float(body.get("fail_ratio", 0.2)),
                techniques=tuple(body.get("techniques") or ()),
                projects=tuple(body.get("projects") or ()),
                warm=bool(body.get("warm", False)),
                stop_after_ms=None if body.get("stop_after_s") is None else int(body["stop_after_s"] * 1000),
                generation_share=float(body.get("generation_share", 0.0)),
            )
        except (ValueError, TypeError) as exc:
            raise sc.InputError(str(exc)) from None
        return _json(status)


def _listing_refused(status: int) -> web.Response:
    code, message = {403: ("forbidden", "This API key may not list these runs.")}.get(
        status, _HTTP_ERRORS.get(status, ("unknown_error", "The request failed.")))
    return error_response(status, code, message)


class _Dropped(web.Response):
    """What a reset request "returns": the connection is already aborted, so nothing reaches the client."""

    def __init__(self) -> None:
        super().__init__(status=499)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return value if isinstance(value, tuple) else (value, value)


def _no_unknown(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s): {', '.join(unknown)}")


def _validate_create(body: Any) -> None:
    """FLORA's schema for a technique run: inputs[{id, type, value}], mode, callback_url?, idempotency_key?"""
    if not isinstance(body, dict):
        raise sc.InputError("Invalid request body.", [("body", "Expected an object")])
    problems = [(key, "Unrecognized key") for key in sorted(set(body) - CREATE_KEYS)]
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        problems.append(("inputs", "Required" if inputs is None else "Expected an array"))
    else:
        for i, item in enumerate(inputs):
            problems.extend(_input_problems(i, item))
    if body.get("mode") not in MODES:
        problems.append(("mode", "Expected 'async' | 'stream'"))
    if "callback_url" in body and not _valid_callback_url(body["callback_url"]):
        problems.append(("callback_url", "Must be a public HTTPS URL"))
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
        problems.append(("idempotency_key", "Expected a string of 1 to 255 characters"))
    if problems:
        raise sc.InputError("Invalid request body.", problems)


def _validate_generate(body: Any) -> None:
    """FLORA's schema for ``POST /generate``: project_id, prompt, type, workspace_id; callback_url?, model?,
    params?"""
    if not isinstance(body, dict):
        raise sc.InputError("Invalid request body.", [("body", "Expected an object")])
    problems = [(key, "Unrecognized key") for key in sorted(set(body) - GENERATE_KEYS)]
    for key, prefix in (("project_id", "prj_"), ("workspace_id", "ws_")):
        value = body.get(key)
        if not isinstance(value, str) or not value.startswith(prefix) or len(value) <= len(prefix):
            problems.append((key, f"Expected an id starting with {prefix}"))
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        problems.append(("prompt", "Expected a non-empty string"))
    if body.get("type") not in GENERATION_TYPES:
        problems.append(("type", "Expected 'image' | 'video' | 'audio' | 'text'"))
    if "model" in body and (not isinstance(body["model"], str) or not body["model"]):
        problems.append(("model", "Expected a model id"))
    if "params" in body and not isinstance(body["params"], dict):
        problems.append(("params", "Expected an object"))
    if "callback_url" in body and not _valid_callback_url(body["callback_url"]):
        problems.append(("callback_url", "Must be a public HTTPS URL"))
    if problems:
        raise sc.InputError("Invalid request body.", problems)


def _input_problems(i: int, item: Any) -> list[tuple[str, str]]:
    if not isinstance(item, dict):
        return [(f"inputs.{i}", "Expected an object")]
    problems = [(f"inputs.{i}.{k}", "Unrecognized key") for k in sorted(set(item) - INPUT_KEYS)]
    if not isinstance(item.get("id"), str) or not item["id"]:
        problems.append((f"inputs.{i}.id", "Expected a non-empty string"))
    if item.get("type") not in INPUT_TYPES:
        problems.append((f"inputs.{i}.type", "Expected 'text' | 'imageUrl' | 'videoUrl'"))
    if not isinstance(item.get("value"), str):
        problems.append((f"inputs.{i}.value", "Expected a string"))
    return problems


# ---------------------------------------------------------------------------------------- serving


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    sim: Simulator
    host: str
    port: int

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base, e.g. ``http://127.0.0.1:PORT/api/v1``."""
        return self.origin + API_PREFIX

    @property
    def admin_url(self) -> str:
        return self.origin + "/_sim"


@asynccontextmanager
async def run_simulator(
    api_key: str = "sk_test_sim",
    seed: int = 1,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sim: Simulator | None = None,
    shutdown_timeout: float = 1.0,
    **kwargs: Any,
) -> AsyncIterator[RunningSimulator]:
    """Serve a Simulator (``sim``, or a new one from ``api_key``, ``seed`` and ``kwargs``) on ``host:port``.

    ``port=0`` lets the OS choose; ``running.base_url`` tells which. Stalled requests are cut after
    ``shutdown_timeout`` seconds on exit.
    """
    sim = sim or Simulator(api_key=api_key, seed=seed, **kwargs)
    runner = web.AppRunner(sim.make_app(), access_log=None, handle_signals=False,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield RunningSimulator(sim, host, bound_port)
    finally:
        await runner.cleanup()
