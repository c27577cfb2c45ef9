"""Plain data shared by every layer. Pure: no I/O, no clock, no randomness.

``Run`` is what ``normalize.parse_run`` makes of one API object: snake_case names, timestamps in Unix
milliseconds, absent fields as ``None`` (``outputs`` as an empty tuple). ``Event`` is the contract's event
JSON (CONTRACT §4) as a value; ``Event.to_dict()`` is exactly what receivers get.

``Run``, ``TrackedRun`` and their parts are frozen ``msgspec.Struct`` values: built in C (a sweep at 10,000
active runs makes thousands a second; a frozen dataclass costs ~10x more to build) and never tracked by the
garbage collector (they hold only strings, numbers and each other: no cycle is possible). Change one with
``msgspec.structs.replace``, not ``dataclasses.replace``.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import msgspec

API_VERSION = "flora-watcher.v1"


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


ACTIVE_STATUSES: frozenset[str] = frozenset({RunStatus.PENDING, RunStatus.RUNNING})
TERMINAL_STATUSES: frozenset[str] = frozenset({RunStatus.COMPLETED, RunStatus.FAILED})
KNOWN_STATUSES: frozenset[str] = ACTIVE_STATUSES | TERMINAL_STATUSES


def is_terminal(status: str) -> bool:
    """Only ``completed`` and ``failed`` are terminal; anything else (unknown statuses too) is not."""
    return status in TERMINAL_STATUSES


class EventType(enum.StrEnum):
    STARTED = "run.started"
    COMPLETED = "run.completed"
    FAILED = "run.failed"
    STALLED = "run.stalled"


ALL_EVENT_TYPES: tuple[str, ...] = (EventType.COMPLETED, EventType.FAILED, EventType.STARTED, EventType.STALLED)
DEFAULT_EVENT_TYPES: tuple[str, ...] = (EventType.COMPLETED, EventType.FAILED, EventType.STALLED)


class RunType(enum.StrEnum):
    """``data.run_type``: which FLORA resource a run comes from (``GET /technique-runs`` or ``/generations``)."""

    TECHNIQUE = "technique"
    GENERATION = "generation"

# [watch].resources: the listing endpoints the watcher reads, and the run type each one holds.
RESOURCE_TECHNIQUE_RUNS = "technique-runs"
RESOURCE_GENERATIONS = "generations"
RESOURCES: tuple[str, ...] = (RESOURCE_TECHNIQUE_RUNS, RESOURCE_GENERATIONS)
RUN_TYPE_OF_RESOURCE: dict[str, str] = {RESOURCE_TECHNIQUE_RUNS: "technique", RESOURCE_GENERATIONS: "generation"}

TERMINAL_EVENT_FOR_STATUS: dict[str, str] = {
    RunStatus.COMPLETED: EventType.COMPLETED,
    RunStatus.FAILED: EventType.FAILED,
}


class Technique(msgspec.Struct, frozen=True, gc=False):
    technique_id: str | None
    name: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"technique_id": self.technique_id, "name": self.name}


class Model(msgspec.Struct, frozen=True, gc=False):
    """The model of a generation run (``GET /generations`` items carry ``model {model_id}``)."""

    model_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id}


class Output(msgspec.Struct, frozen=True, gc=False):
    output_id: str | None
    type: str | None
    url: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"output_id": self.output_id, "type": self.type, "url": self.url}


class Run(msgspec.Struct, frozen=True, gc=False):
    """One run (a technique run or a generation) as last observed. ``status`` is the API's string,
    lower-cased; it may be unknown. Generations have ``run_type == "generation"``, a ``model`` and no
    ``technique``."""

    run_id: str
    status: str
    progress: float | None = None
    created_at: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    workspace_id: str | None = None
    project_id: str | None = None
    technique: Technique | None = None
    charged_cost: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    outputs: tuple[Output, ...] = ()
    poll_url: str | None = None
    run_type: str = "technique"
    model: Model | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES  # (``is_terminal``, inlined)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def technique_id(self) -> str | None:
        return self.technique.technique_id if self.technique else None

    @property
    def technique_name(self) -> str | None:
        return self.technique.name if self.technique else None

    @property
    def model_id(self) -> str | None:
        return self.model.model_id if self.model else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict in the API's snake_case shape (used by the state store and events)."""
        return {
            "run_id": self.run_id,
            "run_type": self.run_type,
            "status": self.status,
            "progress": self.progress,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "workspace_id": self.workspace_id,
            "project_id": self.project_id,
            "technique": self.technique.to_dict() if self.technique else None,
            "charged_cost": self.charged_cost,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "outputs": [o.to_dict() for o in self.outputs],
            "poll_url": self.poll_url,
            "model": self.model.to_dict() if self.model else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        """Inverse of ``to_dict`` for data we wrote ourselves (the state store). Not for API input."""
        tech = d.get("technique")
        model = d.get("model")
        return cls(
            run_id=d["run_id"],
            status=d["status"],
            progress=d.get("progress"),
            created_at=d.get("created_at"),
            started_at=d.get("started_at"),
            completed_at=d.get("completed_at"),
            workspace_id=d.get("workspace_id"),
            project_id=d.get("project_id"),
            technique=Technique(tech.get("technique_id"), tech.get("name")) if tech else None,
            charged_cost=d.get("charged_cost"),
            error_code=d.get("error_code"),
            error_message=d.get("error_message"),
            outputs=tuple(Output(o.get("output_id"), o.get("type"), o.get("url")) for o in d.get("outputs") or ()),
            poll_url=d.get("poll_url"),
            run_type=d.get("run_type") or "technique",
            model=Model(model.get("model_id")) if isinstance(model, dict) else None,
        )

    def with_progress(self, progress: float | None) -> Run:
        """This run with another ``progress`` (what a listing that moved only the progress shows)."""
        return msgspec.structs.replace(self, progress=progress)

    def merged_with(self, older: Run) -> Run:
        """This observation, with identity fields the newer one lacks taken from an older observation.

        Single-run GETs do not carry ``technique``, ``project_id``, ``workspace_id`` or ``model``, nor which
        resource the run belongs to; list items do. Returns this observation itself when the older one adds
        nothing (the usual case for a list item: a sweep merges ~17,000 of them at 10,000 active runs).
        """
        if (
            (self.progress is not None or older.progress is None)
            and (self.created_at is not None or older.created_at is None)
            and (self.started_at is not None or older.started_at is None)
            and (self.completed_at is not None or older.completed_at is None)
            and (self.workspace_id or older.workspace_id == self.workspace_id)
            and (self.project_id or older.project_id == self.project_id)
            and (self.technique or older.technique == self.technique)
            and (self.charged_cost is not None or older.charged_cost is None)
            and (self.error_code is not None or older.error_code is None)
            and (self.error_message is not None or older.error_message is None)
            and (self.outputs or older.outputs == self.outputs)
            and (self.poll_url or older.poll_url == self.poll_url)
            and (older.run_type != RunType.GENERATION or self.run_type == older.run_type)
            and (self.model or older.model == self.model)
        ):
            return self
        return Run(
            run_id=self.run_id,
            status=self.status,
            progress=self.progress if self.progress is not None else older.progress,
            created_at=self.created_at if self.created_at is not None else older.created_at,
            started_at=self.started_at if self.started_at is not None else older.started_at,
            completed_at=self.completed_at if self.completed_at is not None else older.completed_at,
            workspace_id=self.workspace_id or older.workspace_id,
            project_id=self.project_id or older.project_id,
            technique=self.technique or older.technique,
            charged_cost=self.charged_cost if self.charged_cost is not None else older.charged_cost,
            error_code=self.error_code if self.error_code is not None else older.error_code,
            error_message=self.error_message if self.error_message is not None else older.error_message,
            outputs=self.outputs or older.outputs,
            poll_url=self.poll_url or older.poll_url,
            # Single-run GETs look the same for both resources (parsed as "technique" by default): what a
            # generations listing said sticks.
            run_type=older.run_type if older.run_type == RunType.GENERATION else self.run_type,
            model=self.model or older.model,
        )


def event_id(run_id: str, event_type: str) -> str:
    """The id of the event for (run, type): the same transition always gets the same id (CONTRACT §4)."""
    digest = hashlib.sha256(f"{run_id}\x00{event_type}".encode()).hexdigest()
    return f"evt_{digest[:24]}"


@dataclass(frozen=True, slots=True)
class Event:
    """One transition event (CONTRACT §4). ``data`` is the JSON-safe ``data`` object, built by transitions."""

    id: str
    type: str
    created_at: int
    data: dict[str, Any] = field(hash=False, compare=False)

    @property
    def run_id(self) -> str:
        return self.data["run_id"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "api_version": API_VERSION,
            "created_at": self.created_at,
            "data": self.data,
        }

    def body(self) -> bytes:
        """The exact bytes receivers get: compact JSON, UTF-8, keys in contract order. Stored once, sent as is."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(id=d["id"], type=d["type"], created_at=d["created_at"], data=d["data"])


class TrackedRun(msgspec.Struct, frozen=True, gc=False):
    """What the watcher remembers of one run between sweeps (persisted in the state store).

    ``run`` is the last observation (merged with older ones for identity fields). Terminal runs stay
    tracked for a while after their event so a repeated read of them is recognised and produces nothing.
    ``poll_attempt``/``next_poll_ms`` drive the per-run poll backoff for runs the listing cannot settle.
    ``stuck_since_ms`` is when the watcher last saw the run's status or progress change (local clock; None
    reads as ``last_change_ms``); ``stalled`` records that its one ``run.stalled`` event was emitted, so a
    restart never reports it again.
    """

    run: Run
    first_seen_ms: int  # local clock
    last_change_ms: int  # local clock, last status change
    poll_attempt: int = 0  # consecutive per-run polls without a change
    next_poll_ms: int | None = None  # when a per-run poll is due; None = the listing settles this run
    stuck_since_ms: int | None = None  # local clock, last status or progress change; None = last_change_ms
    stalled: bool = False  # run.stalled was emitted for this run (at most once, ever)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def terminal(self) -> bool:
        return self.run.status in TERMINAL_STATUSES  # (``Run.terminal``, inlined: read for every run of a sweep)

    @property
    def stuck_since(self) -> int:
        return self.last_change_ms if self.stuck_since_ms is None else self.stuck_since_ms
