"""The simulator's world, without I/O: techniques, runs on their own clocks, indexes, cursors, wire shapes.

Pure: nothing here reads a clock or a random source. Callers pass ``now_ms`` (Unix milliseconds) and a
``random.Random`` in. A run's whole timeline (when it starts, when it ends, how it ends) is fixed when it is
built, so its status at any instant is a function of that instant; ``Scenario`` keeps indexes of the
statuses as of the latest instant it was advanced to, so a listing page costs O(limit + log n).

Time only moves forward inside a ``Scenario``: advancing to an earlier instant is a no-op, so a status seen
once is never taken back.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
STATUSES: tuple[str, ...] = (PENDING, RUNNING, COMPLETED, FAILED)
TERMINAL: frozenset[str] = frozenset({COMPLETED, FAILED})

# The two run resources: technique runs (GET /technique-runs) and generations (GET /generations).
TECHNIQUE = "technique"
GENERATION = "generation"
KINDS: tuple[str, ...] = (TECHNIQUE, GENERATION)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

# ------------------------------------------------------------------------------------------------ catalog


@dataclass(frozen=True, slots=True)
class TechniqueInfo:
    slug: str
    technique_id: str
    name: str
    output_type: str  # imageUrl | videoUrl | audioUrl | text
    outputs: int  # how many outputs a completed run carries
    price_usd: float


TECHNIQUES: tuple[TechniqueInfo, ...] = (
    TechniqueInfo("cctv-cam", "tech_c7c1a3f0", "CCTV Cam", "imageUrl", 1, 0.05),
    TechniqueInfo("product-shot", "tech_5e2b9d14", "Product Shot", "imageUrl", 2, 0.08),
    TechniqueInfo("storyboard-animate", "tech_9a04c6e2", "Storyboard Animate", "videoUrl", 1, 0.42),
    TechniqueInfo("voiceover", "tech_3f8d21b7", "Voiceover", "audioUrl", 1, 0.03),
    TechniqueInfo("caption-writer", "tech_b61e07a9", "Caption Writer", "text", 1, 0.01),
)
TECHNIQUES_BY_KEY: dict[str, TechniqueInfo] = {
    **{t.slug: t for t in TECHNIQUES},
    **{t.technique_id: t for t in TECHNIQUES},
}

# Generation models (``POST /generate`` ``model``; ``GET /generations`` items' ``model.model_id``). A model's
# catalog entry has a technique's shape: ``slug`` and ``technique_id`` are the model id, ``name`` its label.
MODELS: tuple[TechniqueInfo, ...] = (
    TechniqueInfo("flux-1.1-pro", "flux-1.1-pro", "FLUX1.1 [pro]", "imageUrl", 1, 0.04),
    TechniqueInfo("kling-v2.1", "kling-v2.1", "Kling 2.1", "videoUrl", 1, 0.35),
    TechniqueInfo("eleven-multilingual-v2", "eleven-multilingual-v2", "Eleven Multilingual v2", "audioUrl", 1, 0.02),
    TechniqueInfo("gpt-4.1-mini", "gpt-4.1-mini", "GPT-4.1 mini", "text", 1, 0.01),
)
MODELS_BY_ID: dict[str, TechniqueInfo] = {m.technique_id: m for m in MODELS}
MODEL_FOR_TYPE: dict[str, TechniqueInfo] = dict(zip(("image", "video", "audio", "text"), MODELS, strict=True))

WORKSPACE_ID = "ws_sim4f10ra"
PROJECTS: tuple[str, ...] = ("prj_sim1alpha", "prj_sim2bravo", "prj_sim3charlie")

MEDIA_BASE = "https://media.flora.ai/sim"
_EXTENSIONS = {"imageUrl": "png", "videoUrl": "mp4", "audioUrl": "mp3"}

# Run-level failures in both naming styles FLORA is known to use (flora-api.md §4), with realistic text.
ERRORS: tuple[tuple[str, str], ...] = (
    ("GPU_PROVIDER_ERROR", "The provider failed to complete the generation."),
    ("GENERATION_PROVIDER_TIMEOUT", "The generation provider did not respond within 300 seconds."),
    ("GENERATION_PROMPT_MODERATED", "The prompt was rejected by the provider's content moderation."),
    ("LLM_REFUSAL", "The language model refused to complete this request."),
    ("GENERATION_QUEUE_TOO_LARGE", "Too many generations are queued for this workspace. Try again later."),
    ("GENERATION_DOWNSTREAM_SERVICE_ERROR", "The downstream model service is throttling requests."),
    ("provider_error", "Provider returned an error: upstream model unavailable."),
    ("model_timeout", "The model did not finish within its time limit."),
    ("safety_blocked", "The output was blocked by safety filters."),
    ("input_unreachable", "An input URL could not be downloaded."),
)
ERROR_MESSAGES: dict[str, str] = dict(ERRORS)


def error_message_for(code: str) -> str:
    return ERROR_MESSAGES.get(code, f"The run failed ({code}).")


# ------------------------------------------------------------------------------------------------ runs


@dataclass(frozen=True, slots=True)
class SimRun:
    """One run's whole life, fixed at creation. ``started_at``/``completed_at`` are the planned instants."""

    run_id: str
    seq: int  # creation order; breaks created_at ties (newer seq = newer)
    technique: TechniqueInfo
    project_id: str
    workspace_id: str
    created_at: int
    started_at: int
    completed_at: int
    outcome: str  # completed | failed
    error_code: str | None = None
    error_message: str | None = None
    charged_cost: float = 0.0
    outputs: tuple[tuple[str, str, str], ...] = ()  # (output_id, type, url)
    poll_url: str | None = None  # override; None → built from the serving origin
    kind: str = TECHNIQUE  # TECHNIQUE | GENERATION (then ``technique`` is the model's catalog entry)
    stall_ms: int = 0  # progress stands still this long in the middle of the running phase

    @property
    def model_id(self) -> str | None:
        return self.technique.technique_id if self.kind == GENERATION else None

    def status_at(self, now_ms: int) -> str:
        if now_ms < self.started_at:
            return PENDING
        if now_ms < self.completed_at:
            return RUNNING
        return self.outcome

    def progress_at(self, now_ms: int) -> float:
        """0 while pending, growing while running, 100 once terminal (failed runs too)."""
        status = self.status_at(now_ms)
        if status == PENDING:
            return 0.0
        if status in TERMINAL:
            return 100.0
        span = self.completed_at - self.started_at - self.stall_ms
        if span <= 0:
            return 0.0
        elapsed = now_ms - self.started_at
        if self.stall_ms:  # the stall starts halfway through the work
            halfway = span // 2
            elapsed = elapsed if elapsed <= halfway else max(halfway, elapsed - self.stall_ms)
        return round(min(99.9, 100.0 * elapsed / span), 1)

    @property
    def sort_key(self) -> tuple[int, int]:
        """Ascending order of this key is newest first."""
        return (-self.created_at, -self.seq)


def _draw(value: int | Sequence[int], rng: random.Random) -> int:
    if isinstance(value, int | float):
        return max(0, int(value))
    lo, hi = (int(v) for v in value)
    if hi < lo:
        lo, hi = hi, lo
    return max(0, rng.randint(lo, hi))


_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_run_id(rng: random.Random) -> str:
    return "run_" + "".join(rng.choice(_ID_ALPHABET) for _ in range(20))


def build_run(
    rng: random.Random,
    *,
    seq: int,
    now_ms: int,
    technique: TechniqueInfo,
    project_id: str,
    workspace_id: str,
    created_at: int | None,
    pending_ms: int | Sequence[int],
    running_ms: int | Sequence[int],
    outcome: str | None,
    fail_ratio: float,
    error_code: str | None,
    poll_url: str | None,
    kind: str = TECHNIQUE,
    stall_ms: int = 0,
) -> SimRun:
    """A new run with its whole timeline drawn from ``rng``.

    ``pending_ms``/``running_ms`` are a number or a ``[min, max]`` range. ``outcome=None`` means failed when
    ``error_code`` is given, else failed with probability ``fail_ratio``. ``kind=GENERATION`` makes a
    generation (``technique`` is then a model from ``MODELS``). ``stall_ms`` is added to the running phase,
    with progress standing still for that long halfway through.
    """
    run_id = new_run_id(rng)
    created = now_ms if created_at is None else int(created_at)
    started = created + _draw(pending_ms, rng)
    completed = started + _draw(running_ms, rng) + max(0, int(stall_ms))
    if outcome is None:
        outcome = FAILED if error_code or rng.random() < fail_ratio else COMPLETED
    if outcome not in TERMINAL:
        raise ValueError(f"outcome must be 'completed' or 'failed', not {outcome!r}")
    if outcome == FAILED:
        code = error_code or rng.choice(ERRORS)[0]
        return SimRun(
            run_id, seq, technique, project_id, workspace_id, created, started, completed, FAILED,
            error_code=code, error_message=error_message_for(code), charged_cost=0.0, poll_url=poll_url,
            kind=kind, stall_ms=max(0, int(stall_ms)),
        )
    return SimRun(
        run_id, seq, technique, project_id, workspace_id, created, started, completed, COMPLETED,
        charged_cost=technique.price_usd, outputs=make_outputs(run_id, technique), poll_url=poll_url,
        kind=kind, stall_ms=max(0, int(stall_ms)),
    )


def make_outputs(run_id: str, technique: TechniqueInfo) -> tuple[tuple[str, str, str], ...]:
    outputs = []
    for i in range(1, technique.outputs + 1):
        if technique.output_type == "text":
            url = f"{technique.name} result for {run_id}: a quiet street at dusk, seen through a lens."
        else:
            url = f"{MEDIA_BASE}/{run_id}/output_{i}.{_EXTENSIONS[technique.output_type]}"
        outputs.append((f"output_{i}", technique.output_type, url))
    return tuple(outputs)


# ------------------------------------------------------------------------------------------------ generator


@dataclass(frozen=True, slots=True)
class GeneratorSpec:
    """Steady load: ``rate`` runs per second created from ``start_ms`` on, until ``stop_ms`` (if any)."""

    rate: float
    start_ms: int
    duration_ms: tuple[int, int] = (20_000, 120_000)  # created → terminal
    pending_ms: tuple[int, int] = (0, 2_000)  # part of the duration spent pending
    fail_ratio: float = 0.2
    techniques: tuple[str, ...] = ()  # slugs; empty → the whole catalog
    projects: tuple[str, ...] = ()  # empty → PROJECTS
    workspace_id: str = WORKSPACE_ID
    stop_ms: int | None = None
    generation_share: float = 0.0  # this share of the runs are generations (of a model from MODELS)

    def due_count(self, now_ms: int) -> int:
        """How many runs this generator has created by ``now_ms`` (the i-th at start_ms + i/rate)."""
        if self.rate <= 0:
            return 0
        end = now_ms if self.stop_ms is None else min(now_ms, self.stop_ms)
        if end < self.start_ms:
            return 0
        return int((end - self.start_ms) * self.rate / 1000.0) + 1

    def created_at(self, index: int) -> int:
        return self.start_ms + int(index * 1000.0 / self.rate)


# ------------------------------------------------------------------------------------------------ indexes


@dataclass(frozen=True, slots=True)
class Transition:
    run_id: str
    status: str
    error_code: str | None
    completed_at: int
    kind: str = TECHNIQUE

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "error_code": self.error_code,
                "completed_at": self.completed_at, "kind": self.kind}


_START, _FINISH = 1, 2


@dataclass(slots=True)
class _Generated:
    spec: GeneratorSpec
    created: int = 0


class Scenario:
    """Every run, indexed by status and by recency, advanced lazily to the latest instant it was shown.

    Index entries are ``(-created_at, -seq, run_id)``, so ascending order is newest first. Technique runs and
    generations share one clock and one id space but have their own indexes (their own listings).
    """

    def __init__(self) -> None:
        self.runs: dict[str, SimRun] = {}
        self.now_ms = 0
        self.next_seq = 0
        self._status: dict[str, str] = {}
        self._all_by_kind: dict[str, list[tuple[int, int, str]]] = {k: [] for k in KINDS}
        self._by_kind_status: dict[str, dict[str, list[tuple[int, int, str]]]] = {
            k: {s: [] for s in STATUSES} for k in KINDS
        }
        self._due: list[tuple[int, int, int, str]] = []  # (when, seq, phase, run_id), a heap
        self._transition_keys: list[tuple[int, str]] = []  # (completed_at, run_id), sorted
        self._transitions: list[Transition] = []  # in the same order as _transition_keys
        self._generator: _Generated | None = None

    # -- writing

    def add(self, run: SimRun) -> None:
        """Index a new run as pending; the next ``advance`` moves it to wherever its clock says it is."""
        if run.run_id in self.runs:
            raise ValueError(f"duplicate run id {run.run_id}")
        self.runs[run.run_id] = run
        self._status[run.run_id] = PENDING
        entry = (*run.sort_key, run.run_id)
        bisect.insort(self._all_by_kind[run.kind], entry)
        bisect.insort(self._by_kind_status[run.kind][PENDING], entry)
        heapq.heappush(self._due, (run.started_at, run.seq, _START, run.run_id))
        heapq.heappush(self._due, (run.completed_at, run.seq, _FINISH, run.run_id))
        self.next_seq = max(self.next_seq, run.seq + 1)

    def advance(self, now_ms: int, rng: random.Random) -> int:
        """Create the generator's due runs, then apply the transitions due by ``now_ms``; returns how many."""
        self.now_ms = max(self.now_ms, now_ms)
        self._generate(rng)
        applied = 0
        while self._due and self._due[0][0] <= self.now_ms:
            _, _, phase, run_id = heapq.heappop(self._due)
            run = self.runs[run_id]
            self._move(run, RUNNING if phase == _START else run.outcome)
            if phase == _FINISH:
                self._record(Transition(run_id, run.outcome, run.error_code, run.completed_at, run.kind))
            applied += 1
        return applied

    def _record(self, transition: Transition) -> None:
        key = (transition.completed_at, transition.run_id)
        at = bisect.bisect_right(self._transition_keys, key)
        self._transition_keys.insert(at, key)
        self._transitions.insert(at, transition)

    def _move(self, run: SimRun, new_status: str) -> None:
        old = self._status[run.run_id]
        if old == new_status:
            return
        entry = (*run.sort_key, run.run_id)
        by_status = self._by_kind_status[run.kind]
        old_list = by_status[old]
        del old_list[bisect.bisect_left(old_list, entry)]
        bisect.insort(by_status[new_status], entry)
        self._status[run.run_id] = new_status

    def set_generator(self, spec: GeneratorSpec | None) -> None:
        self._generator = _Generated(spec) if spec is not None else None

    @property
    def generator(self) -> GeneratorSpec | None:
        return self._generator.spec if self._generator else None

    def _generate(self, rng: random.Random) -> None:
        gen = self._generator
        if gen is None:
            return
        spec = gen.spec
        due = spec.due_count(self.now_ms)
        slugs = spec.techniques or tuple(t.slug for t in TECHNIQUES)
        projects = spec.projects or PROJECTS
        while gen.created < due:
            duration = _draw(spec.duration_ms, rng)
            pending = min(duration, _draw(spec.pending_ms, rng))
            # Drawn only when generations are asked for, so technique-only runs stay what a seed always gave.
            generation = spec.generation_share > 0 and rng.random() < spec.generation_share
            self.add(build_run(
                rng, seq=self.next_seq, now_ms=self.now_ms,
                technique=rng.choice(MODELS) if generation else TECHNIQUES_BY_KEY[rng.choice(slugs)],
                project_id=rng.choice(projects), workspace_id=spec.workspace_id,
                created_at=spec.created_at(gen.created), pending_ms=pending, running_ms=duration - pending,
                outcome=None, fail_ratio=spec.fail_ratio, error_code=None, poll_url=None,
                kind=GENERATION if generation else TECHNIQUE,
            ))
            gen.created += 1
        if spec.stop_ms is not None and self.now_ms >= spec.stop_ms:
            self._generator = None

    # -- reading (call advance first)

    def status_of(self, run_id: str) -> str:
        return self._status[run_id]

    def counts(self, kind: str | None = None) -> dict[str, int]:
        """Runs by status, of one kind or of both."""
        kinds = KINDS if kind is None else (kind,)
        return {s: sum(len(self._by_kind_status[k][s]) for k in kinds) for s in STATUSES}

    def transitions(self, since_ms: int = 0) -> list[Transition]:
        """Terminal transitions with ``completed_at >= since_ms``, oldest first."""
        return self._transitions[bisect.bisect_left(self._transition_keys, (since_ms, "")):]

    def page(self, query: ListQuery) -> tuple[list[SimRun], int]:
        """One page of runs matching ``query``, newest first, and the number of runs matching in all.

        Unfiltered and status-only listings slice a sorted index: O(limit + log n). Filters on workspace,
        project or technique scan the narrowest index.
        """
        base = self._by_kind_status[query.kind][query.status] if query.status else self._all_by_kind[query.kind]
        if not (query.workspace_id or query.project_id or query.technique_id):
            window = base[query.offset:query.offset + query.limit]
            return [self.runs[entry[2]] for entry in window], len(base)
        matching = [run for run in self._iter_runs(base) if query.matches(run)]
        return matching[query.offset:query.offset + query.limit], len(matching)

    def _iter_runs(self, entries: list[tuple[int, int, str]]) -> Iterator[SimRun]:
        runs = self.runs
        for entry in entries:
            yield runs[entry[2]]


# ------------------------------------------------------------------------------------------------ queries


class InputError(ValueError):
    """A request FLORA would answer with 400 ``input_validation_error`` (or another 4xx ``code``)."""

    def __init__(self, message: str, fields: Sequence[tuple[str, str]] = (), *,
                 code: str = "input_validation_error", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.fields = list(fields)
        self.code = code
        self.status = status

    def envelope(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = [{"field": f, "message": m} for f, m in self.fields]
        return {"error": error}


def encode_cursor(offset: int) -> str:
    """FLORA's opaque cursor: unpadded urlsafe base64 of ``{"offset":N}`` (``eyJvZmZzZXQiOjIwfQ`` is 20)."""
    raw = json.dumps({"offset": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_BAD_CURSOR = "Expected a cursor returned in meta.next_cursor"


def decode_cursor(cursor: str) -> int:
    """Offset carried by ``cursor``; raises InputError for anything ``encode_cursor`` could not have made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        offset = json.loads(raw)["offset"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise InputError("Invalid cursor.", [("cursor", _BAD_CURSOR)]) from None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InputError("Invalid cursor.", [("cursor", _BAD_CURSOR)])
    return offset


@dataclass(frozen=True, slots=True)
class ListQuery:
    status: str | None = None
    workspace_id: str | None = None
    project_id: str | None = None
    technique_id: str | None = None  # tech_ id (a slug is accepted too); technique runs only
    offset: int = 0
    limit: int = DEFAULT_LIMIT
    kind: str = TECHNIQUE  # which listing: /technique-runs or /generations

    def matches(self, run: SimRun) -> bool:
        return (
            (self.workspace_id is None or run.workspace_id == self.workspace_id)
            and (self.project_id is None or run.project_id == self.project_id)
            and (self.technique_id is None
                 or self.technique_id in (run.technique.technique_id, run.technique.slug))
        )


def parse_list_query(params: Mapping[str, str], kind: str = TECHNIQUE) -> ListQuery:
    """Validate ``GET /technique-runs`` (or, with ``kind=GENERATION``, ``GET /generations``) query parameters
    like FLORA; unknown parameters are ignored (``technique_id`` too, on generations)."""
    problems: list[tuple[str, str]] = []
    limit = DEFAULT_LIMIT
    raw_limit = params.get("limit")
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            problems.append(("limit", "Expected an integer between 1 and 100"))
        else:
            if not 1 <= limit <= MAX_LIMIT:
                problems.append(("limit", "Expected an integer between 1 and 100"))
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        problems.append(("status", "Expected one of: pending, running, completed, failed"))
    if problems:
        raise InputError("Invalid query parameters.", problems)
    cursor = params.get("cursor")
    return ListQuery(
        status=status,
        workspace_id=params.get("workspace_id") or None,
        project_id=params.get("project_id") or None,
        technique_id=(params.get("technique_id") or None) if kind == TECHNIQUE else None,
        offset=decode_cursor(cursor) if cursor else 0,
        limit=limit,
        kind=kind,
    )


def next_cursor(query: ListQuery, returned: int, total: int) -> str | None:
    end = query.offset + returned
    return encode_cursor(end) if returned and end < total else None


# ------------------------------------------------------------------------------------------------ wire shapes


def technique_poll_url(api_base: str, run: SimRun) -> str:
    """Absolute poll URL of ``run`` (its override when it has one). ``api_base`` ends in ``/api/v1``.
    Generations are polled at ``/runs/{run_id}`` (flora-api.md §3)."""
    if run.poll_url:
        return run.poll_url
    if run.kind == GENERATION:
        return f"{api_base}/runs/{run.run_id}"
    return f"{api_base}/techniques/{run.technique.slug}/runs/{run.run_id}"


def single_run(run: SimRun, now_ms: int, *, api_base: str, cost_delay_ms: int = 0,
               nulls: bool = False) -> dict[str, Any]:
    """The single-run shape (GET by id, POST create). Fields that do not apply are omitted (or null)."""
    status = run.status_at(now_ms)
    body: dict[str, Any] = {
        "run_id": run.run_id,
        "status": status,
        "progress": run.progress_at(now_ms),
        "created_at": run.created_at,
    }
    optional: dict[str, Any] = {
        "started_at": run.started_at if status != PENDING else None,
        "completed_at": run.completed_at if status in TERMINAL else None,
        "charged_cost": run.charged_cost
        if status in TERMINAL and now_ms >= run.completed_at + cost_delay_ms else None,
        "error_code": run.error_code if status == FAILED else None,
        "error_message": run.error_message if status == FAILED else None,
    }
    for key, value in optional.items():
        if value is not None or nulls:
            body[key] = value
    body["outputs"] = [
        {"output_id": oid, "type": otype, "url": url} for oid, otype, url in run.outputs
    ] if status == COMPLETED else []
    body["poll_url"] = technique_poll_url(api_base, run)
    return body


def list_item(run: SimRun, now_ms: int, *, api_base: str, cost_delay_ms: int = 0,
              nulls: bool = False) -> dict[str, Any]:
    """A ``technique_runs[]`` item: the single-run shape plus ids of the technique, project and workspace;
    for a generation a ``generations[]`` item: ``generation_id``, project, workspace and ``model``."""
    body = single_run(run, now_ms, api_base=api_base, cost_delay_ms=cost_delay_ms, nulls=nulls)
    if run.kind == GENERATION:
        return {
            "generation_id": run.run_id,
            **body,
            "project_id": run.project_id,
            "workspace_id": run.workspace_id,
            "model": {"model_id": run.model_id},
        }
    return {
        "run_id": run.run_id,
        "technique_run_id": run.run_id,
        **body,
        "project_id": run.project_id,
        "workspace_id": run.workspace_id,
        "technique": {"technique_id": run.technique.technique_id, "name": run.technique.name},
    }


def run_truth(run: SimRun, status: str, now_ms: int) -> dict[str, Any]:
    """Everything the simulator knows about one run (admin API)."""
    return {
        "run_id": run.run_id,
        "kind": run.kind,
        "status": status,
        "progress": run.progress_at(now_ms),
        "technique": {"slug": run.technique.slug, "technique_id": run.technique.technique_id,
                      "name": run.technique.name} if run.kind == TECHNIQUE else None,
        "model": {"model_id": run.model_id} if run.kind == GENERATION else None,
        "stall_ms": run.stall_ms,
        "project_id": run.project_id,
        "workspace_id": run.workspace_id,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "outcome": run.outcome,
        "error_code": run.error_code,
        "error_message": run.error_message,
        "charged_cost": run.charged_cost,
        "outputs": [{"output_id": o, "type": t, "url": u} for o, t, u in run.outputs],
        "poll_url": run.poll_url,
    }
