"""List pages as FLORA documents them, decoded in C: the fast path of ``normalize``. Pure: no I/O, no clock.

``decode_page(body)`` decodes a ``GET /technique-runs`` or ``GET /generations`` body straight into typed
``msgspec`` Structs: the documented snake_case fields with the documented JSON types. Unknown fields are ignored
(as ``normalize`` ignores them). What this shape does not hold goes to ``normalize``'s tolerant parser instead,
item by item where it can: a camelCase or other alternative key ``normalize.parse_run`` reads (``runId``,
``createdAt``, ``id`` …), a number sent as a string, a boolean, a timestamp as an ISO string, a non-object item,
``NaN``, a page whose body is not this shape at all. ``normalize.wire_run`` turns an accepted item into exactly the
``Run`` ``parse_run`` makes of the same JSON (seconds or milliseconds, empty strings, negative costs, absent
fields: the same rules, the same functions), so which path an item took never shows (``tests/unit/test_wire.py``).

Why: a sweep at 10,000 active runs reads ~100 pages of 100 runs every interval. ``json.loads`` builds a dict of
~15 keys for each run, and the parse memo compared it key by key to the last one; decoded to Structs, the page is
built in C, and an item is compared with the one remembered in C (``normalize.RunMemo``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# A key ``normalize`` reads under another name (camelCase, ``id`` …): no value but null decodes, so an item that
# carries one fails validation here and goes to ``normalize`` (null reads as absent there too).
_Other = Annotated[int, msgspec.Meta(ge=1, le=0)] | None
Number = int | float


class WireTechnique(msgspec.Struct, gc=False):
    technique_id: str | None = None
    name: str | None = None
    techniqueId: _Other = None
    id: _Other = None
    slug: _Other = None


class WireModel(msgspec.Struct, gc=False):
    model_id: str | None = None
    name: str | None = None  # (the last of the names normalize takes an id from)
    modelId: _Other = None
    id: _Other = None


class WireOutput(msgspec.Struct, gc=False):
    output_id: str | None = None
    type: str | None = None
    url: str | None = None
    outputId: _Other = None
    id: _Other = None


class WireError(msgspec.Struct, gc=False):
    code: str | None = None
    message: str | None = None


class WireItem(msgspec.Struct, gc=False):
    """One run of a list page, as documented (flora-api.md §2, §3). Mutable: ``RunMemo`` compares two items as if
    their progress were equal by setting it for a moment."""

    run_id: str | None = None
    technique_run_id: str | None = None
    generation_id: str | None = None
    status: str | None = None
    progress: float | None = None
    created_at: Number | None = None
    started_at: Number | None = None
    completed_at: Number | None = None
    workspace_id: str | None = None
    project_id: str | None = None
    technique: WireTechnique | str | None = None
    technique_id: str | None = None
    technique_name: str | None = None
    charged_cost: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    error: WireError | str | None = None
    outputs: list[WireOutput] | None = None
    poll_url: str | None = None
    run_type: str | None = None
    type: str | None = None
    model: WireModel | str | None = None
    model_id: str | None = None
    # read by normalize under these names too: the item goes there when it has one
    runId: _Other = None
    techniqueRunId: _Other = None
    generationId: _Other = None
    id: _Other = None
    createdAt: _Other = None
    startedAt: _Other = None
    completedAt: _Other = None
    workspaceId: _Other = None
    projectId: _Other = None
    techniqueId: _Other = None
    techniqueName: _Other = None
    chargedCost: _Other = None
    errorCode: _Other = None
    errorMessage: _Other = None
    pollUrl: _Other = None
    runType: _Other = None
    modelId: _Other = None


class WireMeta(msgspec.Struct, gc=False):
    next_cursor: str | None = None
    total_estimate: int | None = None
    nextCursor: _Other = None
    totalEstimate: _Other = None


class WirePage(msgspec.Struct, gc=False):
    technique_runs: list[WireItem] | None = None
    generations: list[WireItem] | None = None
    meta: WireMeta | None = None
    techniqueRuns: _Other = None
    data: _Other = None
    items: _Other = None
    next_cursor: _Other = None
    nextCursor: _Other = None


class RawPage(msgspec.Struct, gc=False):
    """The same page with its items undecoded, to take them one by one when one of them is not ``WireItem``."""

    technique_runs: list[msgspec.Raw] | None = None
    generations: list[msgspec.Raw] | None = None
    meta: WireMeta | None = None
    techniqueRuns: _Other = None
    data: _Other = None
    items: _Other = None
    next_cursor: _Other = None
    nextCursor: _Other = None


_page = msgspec.json.Decoder(WirePage)
_raw_page = msgspec.json.Decoder(RawPage)
_item = msgspec.json.Decoder(WireItem)


def decode_page(body: bytes) -> WirePage | RawPage | None:
    """The page as Structs; a ``RawPage`` when some item is not a ``WireItem`` (see ``item``); None when the body
    is not a documented page at all (malformed JSON, another shape, an alternative key): ``normalize`` then."""
    try:
        return _page.decode(body)
    except (msgspec.DecodeError, RecursionError):  # (RecursionError: nested deeper than msgspec goes)
        pass
    try:
        return _raw_page.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None


def item(raw: msgspec.Raw) -> WireItem | None:
    """One item of a ``RawPage``, or None when it is not a ``WireItem`` (then ``normalize`` parses its JSON)."""
    try:
        return _item.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None


def run_id_of(item: WireItem) -> str | None:
    """The run id ``parse_run`` takes: the first non-empty of ``run_id``, ``technique_run_id``, ``generation_id``."""
    return item.run_id or item.technique_run_id or item.generation_id
