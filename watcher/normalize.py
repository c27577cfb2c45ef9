"""API JSON → model values. Pure: no I/O, no clock.

FLORA's responses drift (flora-api.md §6, §8): snake_case or camelCase keys, timestamps in seconds or
milliseconds (or ISO-8601 strings), optional fields absent or null, ids under several names, statuses
outside the enum. Everything is parsed here, once, at the edge; the rest of the watcher sees only ``Run``.

Rules: unknown fields are ignored; a field of the wrong type becomes ``None`` (``outputs`` becomes ``()``);
statuses are lower-cased and kept even when unknown (callers log them; they are non-terminal); only a
missing run id or status makes an object unusable (``BadResponseError``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from watcher import wire
from watcher.errors import BadResponseError
from watcher.model import Model, Output, Run, RunType, Technique

# Unix timestamps below this are seconds (1e11 s is year 5138; 1e11 ms is March 1973).
SECONDS_THRESHOLD = 1e11
# Largest millisecond value we accept (9999-12-31T23:59:59.999Z); beyond it the value is nonsense.
MAX_MS = 253_402_300_799_999

RUN_ID_KEYS = ("run_id", "runId", "technique_run_id", "techniqueRunId", "generation_id", "generationId", "id")
LIST_KEYS = ("technique_runs", "techniqueRuns", "generations", "data", "items")
RUN_TYPES = frozenset({"technique", "generation", "action"})
SNIPPET_LIMIT = 200

_NUMERIC = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_TAG = re.compile(r"<(?!secret>)[^>]{0,200}>")  # markup goes; our own <secret> marker stays
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


GENERATION_LIST_KEYS = ("generations",)


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of ``GET /technique-runs`` or ``GET /generations``. ``skipped`` counts items that could not
    be parsed."""

    runs: tuple[Run, ...]
    next_cursor: str | None = None
    total_estimate: int | None = None
    skipped: int = 0


# ------------------------------------------------------------------------------------------ scalars


def _number(value: object) -> float | None:
    """A finite number from an int, float or numeric string; bools and everything else → None."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str) and _NUMERIC.fullmatch(value.strip()):
            number = float(value.strip())
        else:
            return None
    except OverflowError:  # an integer beyond any float (JSON allows a 400-digit one)
        return None
    return number + 0.0 if math.isfinite(number) else None  # (+ 0.0: -0.0 becomes 0.0, as JSON readers expect)


def _epoch_to_ms(number: float) -> int | None:
    if number < 0:
        return None
    ms = number * 1000.0 if number < SECONDS_THRESHOLD else number
    return round(ms) if ms <= MAX_MS else None


def _iso_to_ms(text: str) -> int | None:
    candidate = text.strip()
    if len(candidate) < 10 or not candidate[:4].isdigit():
        return None
    try:
        when = datetime.fromisoformat(candidate)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        ms = round(when.timestamp() * 1000)
    except (OverflowError, ValueError):
        return None
    return ms if 0 <= ms <= MAX_MS else None


def to_ms(value: object) -> int | None:
    """Unix milliseconds from seconds or milliseconds (values below 1e11 are seconds).

    Accepts ints, floats, numeric strings and ISO-8601 strings (naive ones are taken as UTC).
    Anything else — bools, negatives, NaN, out-of-range values, other types — gives None.
    """
    if isinstance(value, str):
        number = _number(value)
        return _epoch_to_ms(number) if number is not None else _iso_to_ms(value)
    number = _number(value)
    return _epoch_to_ms(number) if number is not None else None


def _str(value: object) -> str | None:
    """A non-empty string, or None."""
    return value if isinstance(value, str) and value else None


def _first(obj: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first key present with a non-null value."""
    for key in keys:
        value = obj.get(key)
        if value is not None:
            return value
    return None


def _first_str(obj: Mapping[str, Any], *keys: str) -> str | None:
    """The first value under ``keys`` that is a non-empty string (others are skipped, not fatal)."""
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and value:  # _str, inlined: this runs ~13 times per listed run
            return value
    return None


def _progress(value: object) -> float | None:
    return _number(value)


def _cost(value: object) -> float | None:
    number = _number(value)
    return number if number is not None and number >= 0 else None


# ------------------------------------------------------------------------------------------ runs


def _technique(obj: Mapping[str, Any]) -> Technique | None:
    raw = obj.get("technique")
    if isinstance(raw, Mapping):
        technique_id = _first_str(raw, "technique_id", "techniqueId", "id", "slug")
        name = _first_str(raw, "name")
    else:
        technique_id = _str(raw)  # a bare slug or tech_ id
        name = None
    technique_id = technique_id or _first_str(obj, "technique_id", "techniqueId")
    name = name or _first_str(obj, "technique_name", "techniqueName")
    if technique_id is None and name is None:
        return None
    return Technique(technique_id=technique_id, name=name)


def _model(obj: Mapping[str, Any]) -> Model | None:
    """``model {model_id}`` of a generation (a bare string is taken as the id); None when absent."""
    raw = obj.get("model")
    if isinstance(raw, Mapping):
        return Model(model_id=_first_str(raw, "model_id", "modelId", "id", "name"))
    model_id = _str(raw) or _first_str(obj, "model_id", "modelId")
    return Model(model_id=model_id) if model_id is not None else None


def _output(raw: object) -> Output | None:
    if not isinstance(raw, Mapping):
        return None
    return Output(
        output_id=_first_str(raw, "output_id", "outputId", "id"),
        type=_str(raw.get("type")),
        url=_str(raw.get("url")),
    )


def _outputs(raw: object) -> tuple[Output, ...]:
    if not isinstance(raw, list) or not raw:
        return ()
    # (a list comprehension: this runs for every run of every listing page)
    return tuple([out for out in map(_output, raw) if out is not None])


def _errors(obj: Mapping[str, Any]) -> tuple[str | None, str | None]:
    code = _first_str(obj, "error_code", "errorCode")
    message = _first_str(obj, "error_message", "errorMessage")
    nested = obj.get("error")
    if isinstance(nested, Mapping):
        code = code or _first_str(nested, "code")
        message = message or _first_str(nested, "message")
    return code, message


def _run_type(obj: Mapping[str, Any], default: str | None) -> str:
    explicit = _first_str(obj, "run_type", "runType")
    if explicit is not None:
        return explicit
    loose = _str(obj.get("type"))
    if loose in RUN_TYPES:
        return loose
    if default is not None:
        return default
    if _first_str(obj, "generation_id", "generationId") is not None:
        return str(RunType.GENERATION)
    return str(RunType.TECHNIQUE)


def parse_run(
    obj: object,
    *,
    default_run_id: str | None = None,
    default_status: str | None = None,
    default_run_type: str | None = None,
) -> Run:
    """One run object (list item, single-run GET or create response) → ``Run``.

    ``default_run_id``/``default_status`` fill in what the caller already knows (the id it asked for, the
    ``pending`` of a just-created run) when the body lacks it; ``default_run_type`` the resource it was
    listed from (an explicit ``run_type`` or ticket ``type`` in the body wins; without either, a
    ``generation_id`` means a generation). Raises ``BadResponseError`` only when the object is not a mapping
    or has no usable run id or status.
    """
    if not isinstance(obj, Mapping):
        raise BadResponseError(f"run: expected a JSON object, got {type(obj).__name__}")
    run_id = _first_str(obj, *RUN_ID_KEYS) or default_run_id
    if run_id is None:
        raise BadResponseError("run: no run id (run_id, runId, technique_run_id or id)")
    raw_status = _str(obj.get("status")) or default_status
    status = raw_status.strip().lower() if raw_status else None
    if not status:
        raise BadResponseError(f"run {run_id}: no status")
    error_code, error_message = _errors(obj)
    return Run(
        run_id=run_id,
        status=status,
        progress=_progress(obj.get("progress")),
        created_at=to_ms(_first(obj, "created_at", "createdAt")),
        started_at=to_ms(_first(obj, "started_at", "startedAt")),
        completed_at=to_ms(_first(obj, "completed_at", "completedAt")),
        workspace_id=_first_str(obj, "workspace_id", "workspaceId"),
        project_id=_first_str(obj, "project_id", "projectId"),
        technique=_technique(obj),
        charged_cost=_cost(_first(obj, "charged_cost", "chargedCost")),
        error_code=error_code,
        error_message=error_message,
        outputs=_outputs(obj.get("outputs")),
        poll_url=_first_str(obj, "poll_url", "pollUrl"),
        run_type=_run_type(obj, default_run_type),
        model=_model(obj),
    )


def wire_run(item: wire.WireItem, default_run_type: str | None = None) -> Run:
    """``parse_run(json, default_run_type=...)`` for the JSON ``item`` was decoded from (``wire.decode_page``): the
    same ``Run`` by the same rules, or the same ``BadResponseError``. The item's types are the documented ones, so
    what is left of the rules is which key wins, empty strings, seconds vs milliseconds and negative costs."""
    run_id = item.run_id or item.technique_run_id or item.generation_id
    status = item.status.strip().lower() if item.status else None
    if not run_id or not status:
        parse_run({"run_id": run_id, "status": item.status})  # raises parse_run's own error for what is missing
        raise AssertionError("unreachable")
    raw = item.technique
    if isinstance(raw, wire.WireTechnique):
        technique_id, name = raw.technique_id or None, raw.name or None
    else:
        technique_id, name = raw or None, None
    technique_id = technique_id or item.technique_id or None
    name = name or item.technique_name or None
    code, message = item.error_code or None, item.error_message or None
    nested = item.error
    if isinstance(nested, wire.WireError):
        code = code or nested.code or None
        message = message or nested.message or None
    raw_model = item.model
    if isinstance(raw_model, wire.WireModel):
        model: Model | None = Model(model_id=raw_model.model_id or raw_model.name or None)
    else:
        model_id = raw_model or item.model_id or None
        model = Model(model_id=model_id) if model_id is not None else None
    if item.run_type:
        run_type = item.run_type
    elif item.type in RUN_TYPES:
        run_type = item.type
    elif default_run_type is not None:
        run_type = default_run_type
    else:
        run_type = str(RunType.GENERATION if item.generation_id else RunType.TECHNIQUE)
    outputs = item.outputs
    return Run(
        run_id=run_id,
        status=status,
        progress=_progress(item.progress),
        created_at=to_ms(item.created_at),
        started_at=to_ms(item.started_at),
        completed_at=to_ms(item.completed_at),
        workspace_id=item.workspace_id or None,
        project_id=item.project_id or None,
        technique=Technique(technique_id=technique_id, name=name) if technique_id or name else None,
        charged_cost=_cost(item.charged_cost),
        error_code=code,
        error_message=message,
        outputs=tuple([Output(o.output_id or None, o.type or None, o.url or None) for o in outputs]) if outputs else (),
        poll_url=item.poll_url or None,
        run_type=run_type,
        model=model,
    )


# ------------------------------------------------------------------------------------------ pages


def _cursor(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return _str(value)


def _total(value: object) -> int | None:
    number = _number(value) if not isinstance(value, str) else None
    if number is None or number < 0 or number != int(number):
        return None
    return int(number)


class RunMemo:
    """The last list item seen of each run and the ``Run`` it parsed to, so a listing that shows a run again
    parses only what changed. Pure: the same items give the same runs as ``parse_run``, only cheaper.

    A sweep at 10,000 active runs reads ~17,000 list items every interval, and most are what the last sweep
    read (finished runs) or differ from it in ``progress`` alone (running ones). ``parse`` returns the remembered
    ``Run`` itself for an item equal to the remembered one, and the remembered ``Run`` with the new progress for
    one that differs in ``progress`` alone; anything else is parsed in full. Equal as Python values is not quite
    equal as JSON (``true == 1``, and the parsers refuse booleans where numbers go), so an item with a boolean
    among its values is always parsed in full (nested values are objects of strings only, or ignored).

    Memory: one item per run remembered. The owner drops runs it no longer needs with ``retain``.
    """

    __slots__ = ("_items", "hits")

    def __init__(self) -> None:
        # run id -> (the item last seen: a dict from json.loads or a wire.WireItem, its default run type, its Run)
        self._items: dict[str, tuple[dict[str, Any] | wire.WireItem, str | None, Run]] = {}
        self.hits = 0  # items answered without a full parse (for benchmarks and tests)

    def __len__(self) -> int:
        return len(self._items)

    def parse(self, item: object, default_run_type: str | None = None) -> Run:
        """``parse_run(item, default_run_type=default_run_type)``, from memory where the item allows."""
        if type(item) is not dict:
            return parse_run(item, default_run_type=default_run_type)
        run_id = item.get("run_id")  # what parse_run takes first, when it is a non-empty string
        if type(run_id) is not str or not run_id:
            run_id = _first_str(item, *RUN_ID_KEYS)
            if run_id is None:
                return parse_run(item, default_run_type=default_run_type)
        known = self._items.get(run_id)
        if known is not None and known[1] == default_run_type and type(known[0]) is dict:
            old_item, _, old_run = known
            assert isinstance(old_item, dict)
            if item == old_item:
                if bool not in map(type, item.values()):
                    self.hits += 1
                    return old_run
            elif len(item) == len(old_item) and "progress" in item and "progress" in old_item:
                progress = item["progress"]
                item["progress"] = old_item["progress"]  # (our own parsed JSON: compared as if unmoved, then back)
                try:
                    moved_only = item == old_item
                finally:
                    item["progress"] = progress
                if moved_only and bool not in map(type, item.values()):  # (old_item has none)
                    run = old_run.with_progress(_progress(progress))
                    self._items[run_id] = (item, default_run_type, run)
                    self.hits += 1
                    return run
        run = parse_run(item, default_run_type=default_run_type)
        if bool not in map(type, item.values()):  # (so an item remembered never holds a boolean)
            self._items[run_id] = (item, default_run_type, run)
        else:
            self._items.pop(run_id, None)
        return run

    def parse_wire(self, item: wire.WireItem, default_run_type: str | None = None) -> Run:
        """``wire_run(item, default_run_type)``, from memory where the item allows: an item equal to the one
        remembered (compared in C, field by field; a typed item holds no boolean where a number goes) gives the
        remembered ``Run``, one that differs in ``progress`` alone that ``Run`` with the new progress."""
        run_id = item.run_id or item.technique_run_id or item.generation_id
        if run_id:
            known = self._items.get(run_id)
            if known is not None and known[1] == default_run_type:
                old_item, _, old_run = known
                if item == old_item:
                    self.hits += 1
                    return old_run
                if type(old_item) is wire.WireItem:
                    progress = item.progress
                    item.progress = old_item.progress  # (compared as if unmoved, then back)
                    moved_only = item == old_item
                    item.progress = progress
                    if moved_only:
                        run = old_run.with_progress(_progress(progress))
                        self._items[run_id] = (item, default_run_type, run)
                        self.hits += 1
                        return run
        run = wire_run(item, default_run_type)  # (raises for an item without a run id or status)
        self._items[run.run_id] = (item, default_run_type, run)
        return run

    def retain(self, keep: Container[str]) -> None:
        """Forget every run not in ``keep``."""
        gone = [run_id for run_id in self._items if run_id not in keep]
        for run_id in gone:
            del self._items[run_id]

    def forget(self, run_id: str) -> None:
        self._items.pop(run_id, None)


def parse_list_page(obj: object, *, default_run_type: str | None = None, memo: RunMemo | None = None) -> ListPage:
    """A list response → ``ListPage``. Unparseable items are skipped and counted, never fatal.

    ``default_run_type`` is the run type of the endpoint that answered (an item's own ``run_type`` wins);
    without it, items under ``generations`` are generations. ``memo`` (optional) remembers items between
    pages and listings: the same runs, parsed once.

    Raises ``BadResponseError`` when the body is not an object holding a list of runs.
    """
    if not isinstance(obj, Mapping):
        raise BadResponseError(f"list: expected a JSON object, got {type(obj).__name__}")
    key = next((key for key in LIST_KEYS if isinstance(obj.get(key), list)), None)
    if key is None:
        raise BadResponseError("list: no list of runs (technique_runs or generations) in the response")
    items = obj[key]
    run_type = default_run_type or (str(RunType.GENERATION) if key in GENERATION_LIST_KEYS else None)
    runs: list[Run] = []
    skipped = 0
    parse = memo.parse if memo is not None else (lambda item, run_type: parse_run(item, default_run_type=run_type))
    for item in items:
        try:
            runs.append(parse(item, run_type))
        except BadResponseError:
            skipped += 1
    meta = obj.get("meta")
    meta = meta if isinstance(meta, Mapping) else {}
    cursor_raw = _first(meta, "next_cursor", "nextCursor")
    if cursor_raw is None:
        cursor_raw = _first(obj, "next_cursor", "nextCursor")
    return ListPage(
        runs=tuple(runs),
        next_cursor=_cursor(cursor_raw),
        total_estimate=_total(_first(meta, "total_estimate", "totalEstimate")),
        skipped=skipped,
    )


def parse_list_body(
    body: bytes, *, default_run_type: str | None = None, memo: RunMemo | None = None
) -> ListPage | None:
    """``parse_list_page(json.loads(body), ...)`` through ``wire``: the page decoded to typed Structs in C and each
    item turned into a ``Run`` by ``wire_run`` (or taken from ``memo``); an item the typed shape does not hold goes
    through ``parse_run`` (and ``memo.parse``) as before. The same ``ListPage`` either way. None when the body is not
    a documented list page at all (malformed JSON, another shape, a key ``parse_list_page`` reads under another
    name): the caller then takes ``json.loads`` and ``parse_list_page``, which also tell what is wrong with it."""
    page = wire.decode_page(body)
    if page is None:
        return None
    if page.technique_runs is not None:
        items: list[Any] = page.technique_runs
        run_type = default_run_type
    elif page.generations is not None:
        items = page.generations
        run_type = default_run_type or str(RunType.GENERATION)
    else:
        return None  # no list of runs: parse_list_page says so
    runs: list[Run] = []
    skipped = 0
    typed = memo.parse_wire if memo is not None else wire_run
    loose = memo.parse if memo is not None else (lambda item, run_type: parse_run(item, default_run_type=run_type))
    for item in items:
        try:
            if type(item) is msgspec.Raw:  # a page with an item of another shape: this one, on its own
                one = wire.item(item)
                if one is None:
                    try:
                        runs.append(loose(json.loads(bytes(item)), run_type))
                    except (ValueError, RecursionError):  # (not for JSON msgspec read: the whole page then)
                        return None
                    continue
                item = one
            runs.append(typed(item, run_type))
        except BadResponseError:
            skipped += 1
    meta = page.meta
    return ListPage(
        runs=tuple(runs),
        next_cursor=(meta.next_cursor or None) if meta is not None else None,
        total_estimate=_total(meta.total_estimate) if meta is not None else None,
        skipped=skipped,
    )


# ------------------------------------------------------------------------------------------ errors


def sanitize_snippet(text: str, limit: int = SNIPPET_LIMIT) -> str | None:
    """A short one-line excerpt of a response body: tags and control characters removed, whitespace
    collapsed, at most ``limit`` characters. None when nothing readable is left."""
    cleaned = _CONTROL.sub(" ", _TAG.sub(" ", text))
    cleaned = " ".join(cleaned.split())
    if not cleaned:
        return None
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _fields_summary(fields: object) -> str | None:
    if not isinstance(fields, list):
        return None
    parts = []
    for item in fields[:5]:
        if isinstance(item, Mapping):
            name, message = _str(item.get("field")), _str(item.get("message"))
            if name or message:
                parts.append(f"{name or '?'}: {message or 'invalid'}")
    return "; ".join(parts) or None


def parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    """An error response body → (FLORA ``error.code``, a short message).

    Understands the documented envelope ``{"error": {"code", "message", "fields"}}`` and a few common
    variants (``{"error": "..."}``, top-level ``code``/``message``). Non-JSON bodies (a proxy's HTML 502)
    give ``(None, snippet)``; empty ones ``(None, None)``. The message is sanitised and short.
    """
    text = body.decode("utf-8", errors="replace") if body else ""
    if not text.strip():
        return None, None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack
        return None, sanitize_snippet(text)
    if not isinstance(doc, Mapping):
        return None, sanitize_snippet(text)
    envelope = doc.get("error")
    if isinstance(envelope, Mapping):
        code = _str(envelope.get("code"))
        message = _str(envelope.get("message"))
        fields = _fields_summary(envelope.get("fields"))
        if fields:
            message = f"{message} ({fields})" if message else fields
    elif isinstance(envelope, str):
        code, message = None, envelope
    else:
        code = _first_str(doc, "code", "error_code", "errorCode")
        message = _first_str(doc, "message", "detail", "title")
    if code is None and message is None:
        return None, sanitize_snippet(text)
    code = sanitize_snippet(code, 80) if code else None
    return code, sanitize_snippet(message) if message else None
