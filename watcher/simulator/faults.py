"""Fault knobs of the simulator and the pure decisions made from them.

``Faults`` is plain data, changed at runtime through ``POST /_sim/faults``. ``plan_request`` decides what
happens to one API request from the knobs, the request's index and a ``random.Random`` the caller owns
(seeded, so a run of faults is reproducible). The body rewrites (camelCase, seconds, malformed) are pure too.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RETRY_AFTER_MODES = ("seconds", "http-date", "ms")
MALFORMED_KINDS = ("truncated", "html", "wrong_shape")
BURST_STATUSES = (500, 503, 502)

BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong, and how often. Every share is a probability in [0, 1] per API request."""

    latency_ms: float = 0.0  # added to every API response
    latency_jitter_ms: float = 0.0  # plus uniform [0, jitter)
    rate_limit_share: float = 0.0  # answered 429 rate_limited
    retry_after: float | None = 1.0  # seconds advertised on 429s; None → no header at all
    retry_after_mode: str = "seconds"  # "seconds" | "http-date" (both Retry-After) | "ms" (retry-after-ms)
    error_burst: tuple[int, int] | None = None  # (N, K): the last K of every N API requests fail with 5xx
    malformed_share: float = 0.0  # 200 with a truncated / non-JSON / wrong-shape body
    camel_case: bool = False  # run objects in camelCase (runId, createdAt, pollUrl, ...)
    seconds_timestamps: bool = False  # created_at/started_at/completed_at in Unix seconds
    nulls: bool = False  # optional fields that do not apply sent as null instead of omitted
    stall_share: float = 0.0  # the response waits stall_ms before it is sent
    stall_ms: float = 5_000.0
    reset_share: float = 0.0  # the connection is dropped without a response
    charged_cost_delay_ms: int = 0  # charged_cost stays absent this long after a run turns terminal
    generations_status: int | None = None  # GET /generations answers this error (e.g. 404, 403) instead
    technique_runs_status: int | None = None  # GET /technique-runs answers this error instead
    # Run callbacks (callback_url). Delay, early and drop apply to the runs created while they are set.
    callback_delay_ms: float = 0.0  # the first attempt this long after the run ends
    callback_early_ms: float = 0.0  # ...or this long before the API shows it ended (a callback that beats it)
    callback_drop_share: float = 0.0  # share of callbacks never sent (what polling must still catch)
    callback_duplicate_share: float = 0.0  # share of attempts sent twice (at-least-once delivery)

    def __post_init__(self) -> None:
        for name in ("rate_limit_share", "malformed_share", "stall_share", "reset_share", "callback_drop_share",
                     "callback_duplicate_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("latency_ms", "latency_jitter_ms", "stall_ms", "charged_cost_delay_ms", "callback_delay_ms",
                     "callback_early_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if self.retry_after_mode not in RETRY_AFTER_MODES:
            raise ValueError(f"retry_after_mode must be one of {', '.join(RETRY_AFTER_MODES)}")
        for name in ("generations_status", "technique_runs_status"):
            value = getattr(self, name)
            if value is not None and not 400 <= value <= 599:
                raise ValueError(f"{name} must be an HTTP error status (400-599) or null")
        if self.error_burst is not None:
            every, count = self.error_burst
            if not 0 <= count <= every or every < 1:
                raise ValueError("error_burst must be (N, K) with N >= 1 and 0 <= K <= N")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["error_burst"] = list(self.error_burst) if self.error_burst else None
        return data


def updated(faults: Faults, changes: Mapping[str, Any]) -> Faults:
    """``faults`` with ``changes`` applied (JSON-friendly values); ValueError names an unknown or bad knob."""
    known = {f.name for f in dataclasses.fields(Faults)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown fault knob(s): {', '.join(unknown)}")
    clean = dict(changes)
    burst = clean.get("error_burst")
    if burst is not None:
        if not isinstance(burst, list | tuple) or len(burst) != 2:
            raise ValueError("error_burst must be [N, K] or null")
        clean["error_burst"] = (int(burst[0]), int(burst[1]))
    try:
        return dataclasses.replace(faults, **clean)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to do to one API request: at most one of reset, rate_limited, error_status, malformed."""

    delay_ms: float = 0.0
    stall_ms: float = 0.0
    reset: bool = False
    rate_limited: bool = False
    error_status: int | None = None
    malformed: str | None = None

    @property
    def name(self) -> str | None:
        """The exclusive fault's name for counters (stalls and latency aside), or None."""
        if self.reset:
            return "reset"
        if self.rate_limited:
            return "rate_limited"
        if self.error_status is not None:
            return f"burst_{self.error_status}"
        if self.malformed:
            return f"malformed_{self.malformed}"
        return None


def burst_status(faults: Faults, index: int) -> int | None:
    """The 5xx status for API request number ``index`` (from 0) under ``error_burst``, else None."""
    if faults.error_burst is None:
        return None
    every, count = faults.error_burst
    position = index % every
    if position < every - count:
        return None
    return BURST_STATUSES[(index // every + position) % len(BURST_STATUSES)]


def plan_request(faults: Faults, index: int, rng: random.Random) -> FaultPlan:
    """Decide the fate of API request number ``index``. Draws from ``rng`` only for knobs that are on."""
    delay = faults.latency_ms + (rng.random() * faults.latency_jitter_ms if faults.latency_jitter_ms else 0.0)
    stall = faults.stall_ms if faults.stall_share and rng.random() < faults.stall_share else 0.0
    if faults.reset_share and rng.random() < faults.reset_share:
        return FaultPlan(delay_ms=delay, stall_ms=stall, reset=True)
    if faults.rate_limit_share and rng.random() < faults.rate_limit_share:
        return FaultPlan(delay_ms=delay, stall_ms=stall, rate_limited=True)
    status = burst_status(faults, index)
    if status is not None:
        return FaultPlan(delay_ms=delay, stall_ms=stall, error_status=status)
    if faults.malformed_share and rng.random() < faults.malformed_share:
        return FaultPlan(delay_ms=delay, stall_ms=stall, malformed=rng.choice(MALFORMED_KINDS))
    return FaultPlan(delay_ms=delay, stall_ms=stall)


def retry_after_headers(faults: Faults, now_ms: int) -> dict[str, str]:
    """Headers of a 429 under ``faults`` (none when ``retry_after`` is None)."""
    wait = faults.retry_after
    if wait is None:
        return {}
    if faults.retry_after_mode == "ms":
        return {"retry-after-ms": str(round(wait * 1000))}
    if faults.retry_after_mode == "http-date":
        # HTTP-dates have whole-second resolution: round up so the client never comes back early.
        when = -(-(now_ms + round(wait * 1000)) // 1000)
        return {"Retry-After": email.utils.formatdate(when, usegmt=True)}
    return {"Retry-After": str(int(wait)) if float(wait).is_integer() else str(wait)}


# ------------------------------------------------------------------------------------------------ bodies

_TIMESTAMP_KEYS = ("created_at", "started_at", "completed_at")


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.capitalize() for part in rest)


def camel_case_run(obj: Any) -> Any:
    """Every key of a run object (and its nested technique/outputs) in camelCase, as before SDK 0.3.0."""
    if isinstance(obj, dict):
        return {_camel(k): camel_case_run(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camel_case_run(v) for v in obj]
    return obj


def seconds_run(run: dict[str, Any]) -> dict[str, Any]:
    """The run object with its millisecond timestamps as whole Unix seconds."""
    out = dict(run)
    for key in _TIMESTAMP_KEYS:
        if isinstance(out.get(key), int):
            out[key] = out[key] // 1000
    return out


def rewrite_run(run: dict[str, Any], faults: Faults) -> dict[str, Any]:
    """Apply the shape knobs (seconds, camelCase) to one snake_case run object."""
    if faults.seconds_timestamps:
        run = seconds_run(run)
    if faults.camel_case:
        run = camel_case_run(run)
    return run


def malformed_body(kind: str, good: bytes) -> tuple[bytes, str]:
    """(body, content type) of a broken 200 made from the good JSON body ``good``."""
    if kind == "truncated":
        return good[: max(1, len(good) // 2)], "application/json"
    if kind == "html":
        return b"<html><body><h1>Service temporarily unavailable</h1></body></html>", "text/html"
    if kind == "wrong_shape":
        return json.dumps({"data": None, "items": "unavailable"}).encode(), "application/json"
    raise ValueError(f"unknown malformed kind {kind!r}")
