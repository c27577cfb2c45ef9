"""What the status page and ``/api/v1/status`` show, as plain JSON-safe data. Pure: no I/O, no clock.

Everything that came from the FLORA API (technique names, error messages, output URLs) is untrusted text.
Here it is only cut to a sane length and, for URLs, kept only when it is an absolute http(s) URL; escaping is
the renderer's job (the page's script sets ``textContent``, never ``innerHTML``). Sink errors are passed
through ``redact`` (registered secrets) and have URLs replaced, so no sink URL or key reaches the page.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from watcher.model import Event, Run
from watcher.readiness import Readiness
from watcher.render import safe_url
from watcher.store_api import SinkState

RECENT_EVENTS = 100  # transitions shown under "Recent outcomes"
ACTIVE_MAX = 200  # active runs listed (the oldest); the total is always given
FAILURE_WINDOW_MS = 3_600_000  # failures are grouped by error_code over the last hour
TEXT_MAX = 500  # an error message or a text output is cut to this many characters
NAME_MAX = 200  # technique names, ids, codes
OUTPUTS_MAX = 8  # outputs shown per run

OUTPUT_KINDS = {"imageUrl": "image", "videoUrl": "video", "audioUrl": "audio", "text": "text"}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _text(value: object, limit: int = NAME_MAX) -> str | None:
    if value is None or isinstance(value, dict | list | bool):
        return None
    text = str(value)
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ms(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _progress(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        return None
    return max(0.0, min(100.0, float(value)))


def _subject(technique: object, model: object) -> tuple[str | None, str | None]:
    """(technique name or id, model id) of a run or event, whichever the run has."""
    name = None
    if isinstance(technique, dict):
        name = _text(technique.get("name")) or _text(technique.get("technique_id"))
    model_id = _text(model.get("model_id")) if isinstance(model, dict) else None
    return name, model_id


def outputs(raw: object) -> list[dict[str, Any]]:
    """An event's outputs as {kind, label, url | text}: kind image/video/audio/link/text. Unsafe URLs dropped."""
    shown: list[dict[str, Any]] = []
    for i, item in enumerate(raw if isinstance(raw, list) else (), start=1):
        if not isinstance(item, dict) or len(shown) >= OUTPUTS_MAX:
            continue
        kind = OUTPUT_KINDS.get(str(item.get("type")), "link")
        label = _text(item.get("output_id")) or f"output {i}"
        if kind == "text":
            text = _text(item.get("url") if item.get("text") is None else item.get("text"), TEXT_MAX)
            if text is not None:
                shown.append({"kind": "text", "label": label, "text": text})
            continue
        url = safe_url(item.get("url"))
        if url is not None:
            shown.append({"kind": kind, "label": label, "url": url})
    return shown


def active_run(run: Run, now_ms: int) -> dict[str, Any]:
    technique = run.technique.to_dict() if run.technique else None
    name, model = _subject(technique, run.model.to_dict() if run.model else None)
    since = run.created_at if run.created_at is not None else run.started_at
    return {
        "run_id": _text(run.run_id),
        "run_type": _text(run.run_type),
        "technique": name,
        "model": model,
        "project_id": _text(run.project_id),
        "status": _text(run.status),
        "progress": _progress(run.progress),
        "created_at": run.created_at,
        "started_at": run.started_at,
        "age_ms": None if since is None else max(0, now_ms - since),
    }


def active_runs(runs: Iterable[Run], now_ms: int, limit: int | None = None) -> list[dict[str, Any]]:
    """Runs still pending or running, oldest first (the one waiting longest on top); at most ``limit``."""
    def age(run: Run) -> int:
        since = run.created_at if run.created_at is not None else run.started_at
        return 0 if since is None else max(0, now_ms - since)

    active = sorted((r for r in runs if r.active), key=lambda r: (-age(r), r.run_id))
    return [active_run(r, now_ms) for r in active[:limit]]


def recent_event(event: Event) -> dict[str, Any]:
    data = event.data if isinstance(event.data, dict) else {}
    name, model = _subject(data.get("technique"), data.get("model"))
    return {
        "id": event.id,
        "type": event.type,
        "created_at": event.created_at,
        "run_id": _text(data.get("run_id")),
        "run_type": _text(data.get("run_type")),
        "technique": name,
        "model": model,
        "project_id": _text(data.get("project_id")),
        "status": _text(data.get("status")),
        "error_code": _text(data.get("error_code")),
        "error_message": _text(data.get("error_message"), TEXT_MAX),
        "completed_at": _ms(data.get("completed_at")),
        "late": data.get("late") is True,
        "stalled_for": _ms(data.get("stalled_for")),  # run.stalled: how long the run has not moved, ms
        "outputs": outputs(data.get("outputs")),
    }


def failure_groups(counts: Mapping[str | None, int]) -> list[dict[str, Any]]:
    """``store.failure_counts`` → [{error_code, count}], most frequent first."""
    groups = [{"error_code": _text(code), "count": n} for code, n in counts.items() if n]
    groups.sort(key=lambda g: (-int(g["count"] or 0), str(g["error_code"] or "")))
    return groups


def scrub(text: str | None, redact: Callable[[str], str]) -> str | None:
    """A sink error as the page may show it: secrets redacted, URLs replaced (a sink URL is a secret)."""
    if not text:
        return None
    return _text(_URL.sub("<url>", redact(text)), TEXT_MAX)


def sink_health(*, disabled_reason: str | None, consecutive_failures: int, last_success_ms: int | None) -> str:
    if disabled_reason:
        return "disabled"
    if consecutive_failures:
        return "failing"
    return "ok" if last_success_ms else "idle"


def sinks(
    configured: Mapping[str, str], counts: Mapping[str, Mapping[str, int]], states: Mapping[str, SinkState],
    redact: Callable[[str], str],
) -> list[dict[str, Any]]:
    """One entry per configured sink (and per sink that still has deliveries in the store): name, type,
    health, outbox depth, dead letters, last error, disabled reason. ``states``: ``store.sink_states()``."""
    shown = []
    for name in sorted(set(configured) | set(counts)):
        state = states.get(name) or SinkState(name)  # no row yet: never delivered, never failed
        disabled = state.disabled_reason
        failures = state.consecutive_failures
        last_success = state.last_success_ms
        by_state = counts.get(name, {})
        shown.append({
            "name": name,
            "type": configured.get(name),
            "configured": name in configured,
            "health": sink_health(disabled_reason=disabled, consecutive_failures=failures,
                                  last_success_ms=last_success),
            "pending": by_state.get("pending", 0),
            "dead": by_state.get("dead", 0),
            "consecutive_failures": failures,
            "last_success_ms": last_success,
            "last_failure_ms": state.last_failure_ms,
            "last_error": scrub(state.last_error, redact),
            "disabled_reason": scrub(disabled, redact),
        })
    return shown


def readiness(ready: Readiness | None) -> dict[str, Any] | None:
    """``/readyz``'s decision as the document's ``ready``: ``{"ok", "role", "reason"}``."""
    return None if ready is None else {"ok": ready.ready, "role": ready.role, "reason": ready.reason}


def ingress(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``[ingress]`` as the page shows it (``push.Push.status``): where it listens and the counters; None when
    it is off. Only numbers and the address pass (nothing a client sent): the bound one once it listens (a
    configured port 0 shows the port it got), else the configured one."""
    if raw is None:
        return None
    host, port, listen = raw.get("host"), raw.get("port"), raw.get("listen")
    if isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool) and port > 0:
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def count(key: str) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def counts(key: str) -> dict[str, int]:
        value = raw.get(key)
        if not isinstance(value, Mapping):
            return {}
        return {str(k)[:NAME_MAX]: v for k, v in sorted(value.items()) if isinstance(v, int)}

    return {
        "listen": _text(listen), "path": _text(raw.get("path")),
        "accepted": count("accepted"), "duplicate": count("duplicate"), "unrecorded": count("unrecorded"),
        "rejected": counts("rejected"), "confirmed": counts("confirmed"), "confirming": count("confirming"),
        "last_accepted_ms": _ms(raw.get("last_accepted_ms")), "last_rejected_ms": _ms(raw.get("last_rejected_ms")),
    }


def build(
    *, now_ms: int, version: str, runs: Iterable[Run], events: Sequence[Event],
    failures: Mapping[str | None, int], sinks_: list[dict[str, Any]], ready: Readiness | None = None,
    ingress_: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole ``/api/v1/status`` document. ``events``: newest first."""
    runs = list(runs)
    return {
        "version": version,
        "now": now_ms,
        "ready": readiness(ready),
        "active_total": sum(1 for r in runs if r.active),
        "active_runs": active_runs(runs, now_ms, ACTIVE_MAX),
        "recent_events": [recent_event(e) for e in events[:RECENT_EVENTS]],
        "failures_last_hour": failure_groups(failures),
        "sinks": sinks_,
        "ingress": ingress(ingress_),
    }
