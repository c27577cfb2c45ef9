"""Pure scheduling decisions for a sweep: which listings to make, how deep the window goes, which runs to poll.

The sweep (``sweep.py``) asks these functions and does what they say; nothing here does I/O or reads a clock.

How a sweep spends its requests (the cost model):

* The **window** is one newest-first listing of *all* statuses. Each page carries up to 100 runs with their
  status, outputs and error codes, so one page can settle dozens of finished runs at once. It always goes at
  least down to ``new_after`` (the previous sweep's newest ``created_at`` minus a margin) so runs created and
  finished between two sweeps are seen. Below that it continues only while the next pages are expected to
  settle at least as many tracked runs as they cost (``should_continue_window``) — the density of runs per
  millisecond measured on the pages already read is the estimate.
* Tracked runs the window did not reach (a run started long ago, under a flood of newer runs) or that vanished
  from the listing are **polled** one by one through their ``poll_url``, on a per-run backoff schedule.
* A **resync** lists the active set (``status=pending`` and ``status=running``) in full: at every start, and
  every ``resync_interval`` as a safety net for active runs the window never showed.

Each watched resource (``GET /technique-runs``, ``GET /generations``) is listed the same way: ``listings`` makes
one ``Filters`` per (resource, filter combination), each with its own window and watermark. Generations take no
``technique_id``, so they are listed once per workspace/project combination.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from msgspec.structs import replace as replace_struct

from watcher.model import (
    RESOURCE_GENERATIONS,
    RESOURCE_TECHNIQUE_RUNS,
    RESOURCES,
    RUN_TYPE_OF_RESOURCE,
    TERMINAL_STATUSES,
    Run,
    RunType,
    TrackedRun,
    is_terminal,
)
from watcher.policy import poll_delay

# Runs may appear in the listing slightly out of created_at order (clock skew between API servers, eventual
# consistency). The window reaches this far below the previous sweep's newest run.
NEW_RUN_MARGIN_MS = 30_000


@dataclass(frozen=True, slots=True)
class Filters:
    """One listing: a resource and one combination of the configured filters (each None = not filtered)."""

    workspace_id: str | None = None
    project_id: str | None = None
    technique_id: str | None = None
    resource: str = RESOURCE_TECHNIQUE_RUNS

    @property
    def key(self) -> str:
        """A stable name for this listing, used to keep its watermark in the state store (technique-run keys
        are what they were before generations were watched)."""
        key = "|".join(v or "*" for v in (self.workspace_id, self.project_id, self.technique_id))
        return key if self.resource == RESOURCE_TECHNIQUE_RUNS else f"{self.resource}:{key}"

    @property
    def run_type(self) -> str:
        return RUN_TYPE_OF_RESOURCE[self.resource]

    def as_params(self) -> dict[str, str]:
        return {k: v for k, v in (("workspace_id", self.workspace_id), ("project_id", self.project_id),
                                  ("technique_id", self.technique_id)) if v}

    def admits(self, run: Run) -> bool:
        """Whether a run observed elsewhere (e.g. a poll) belongs to this listing, as far as we can tell."""
        if (run.run_type == RunType.GENERATION) != (self.resource == RESOURCE_GENERATIONS):
            return False
        return (
            (self.workspace_id is None or run.workspace_id in (None, self.workspace_id))
            and (self.project_id is None or run.project_id in (None, self.project_id))
            and (self.technique_id is None or run.technique_id in (None, self.technique_id))
        )


def filter_combinations(
    workspace_ids: Sequence[str], project_ids: Sequence[str], technique_ids: Sequence[str]
) -> list[Filters]:
    """The listing endpoint takes one value per filter; lists of values become one listing per combination."""
    unfiltered: list[str | None] = [None]
    return [
        Filters(w, p, t)
        for w, p, t in itertools.product(workspace_ids or unfiltered, project_ids or unfiltered,
                                         technique_ids or unfiltered)
    ]


def listings(
    workspace_ids: Sequence[str],
    project_ids: Sequence[str],
    technique_ids: Sequence[str],
    resources: Sequence[str] = RESOURCES,
) -> list[Filters]:
    """Every listing a sweep makes: per resource in ``resources`` order, one per filter combination.
    ``technique_id`` applies to technique runs only."""
    out: list[Filters] = []
    for resource in resources:
        if resource == RESOURCE_TECHNIQUE_RUNS:
            out.extend(filter_combinations(workspace_ids, project_ids, technique_ids))
        elif resource == RESOURCE_GENERATIONS:
            out.extend(replace(f, resource=resource) for f in filter_combinations(workspace_ids, project_ids, []))
        else:
            raise ValueError(f"unknown resource {resource!r}")
    return out


# Finished runs kept for the next listing (``prune``): at most one per active run, and at least this many.
MIN_FINISHED_KEPT = 1_000


def prune_floors(filters: Sequence[Filters], high_watermarks: Mapping[str, int | None]) -> dict[str, int | None]:
    """Per run type, the most conservative new-run floor over that type's listings (None when one of them has
    no watermark yet). A resource that is not listed (or not available) never holds back another's pruning."""
    floors: dict[str, int | None] = {}
    for f in filters:
        floor = new_after_for(high_watermarks.get(f.key))
        if f.run_type not in floors:
            floors[f.run_type] = floor
        else:
            current = floors[f.run_type]
            floors[f.run_type] = None if current is None or floor is None else min(current, floor)
    return floors


def new_after_for(high_watermark_ms: int | None) -> int | None:
    """Runs created after this (API time) and never seen before are new. None before the first sweep ever."""
    if high_watermark_ms is None:
        return None
    return high_watermark_ms - NEW_RUN_MARGIN_MS


def should_continue_window(
    *,
    page_oldest_ms: int | None,
    next_cursor: str | None,
    new_after_ms: int | None,
    density_per_ms: float | None,
    page_size: int,
    unseen_created_desc: Iterable[int],
    unseen_count: int,
) -> bool:
    """Whether the window should fetch its next page.

    ``page_oldest_ms``: the oldest ``created_at`` on the pages read so far. ``unseen_created_desc``: the
    ``created_at`` of tracked, non-terminal runs not observed yet this sweep that lie below ``page_oldest_ms``,
    newest first (``unseen_count`` of them at most; it may be consumed lazily). Continue while (a) the window has
    not yet reached ``new_after_ms`` (fast runs would be missed), or (b) some prefix of the unseen runs can be
    reached at no more than one page per run settled: each page must be cheaper than the polls it saves.
    """
    if next_cursor is None:
        return False
    if page_oldest_ms is None:
        return True  # no timestamps to judge by; read on (bounded by the client's max_pages)
    if new_after_ms is not None and page_oldest_ms > new_after_ms:
        return True
    if unseen_count <= 0:
        return False
    if not density_per_ms or density_per_ms <= 0:
        return True  # one page told us nothing about density; one more page is the cheapest way to learn
    for k, created in enumerate(unseen_created_desc):
        pages_needed = max(0.0, (page_oldest_ms - created) * density_per_ms / page_size)
        if pages_needed <= k + 1:
            return True
        if pages_needed > unseen_count:
            return False  # older runs need even more pages, and there are not enough runs left to pay for them
    return False


def density(newest_ms: int | None, oldest_ms: int | None, items: int) -> float | None:
    """Runs per millisecond of ``created_at`` across the window read so far."""
    if newest_ms is None or oldest_ms is None or items < 2 or newest_ms <= oldest_ms:
        return None
    return items / (newest_ms - oldest_ms)


def runs_to_poll(
    tracked: Mapping[str, TrackedRun], seen: Iterable[str], now_ms: int
) -> list[TrackedRun]:
    """Non-terminal tracked runs the listings did not settle this sweep and whose poll is due (oldest due first).

    A run not yet on a poll schedule (``next_poll_ms is None``) is due at once: it just left the listings.
    """
    seen_ids = seen if isinstance(seen, set | frozenset) else set(seen)
    # (one comprehension, no property calls: this visits every tracked run, ~17,000 at 10,000 active runs)
    due = [
        t
        for t in tracked.values()
        if (run := t.run).status not in TERMINAL_STATUSES
        and run.run_id not in seen_ids
        and (t.next_poll_ms is None or t.next_poll_ms <= now_ms)
    ]
    due.sort(key=lambda t: t.next_poll_ms or 0)
    return due


def active_created_desc(tracked: Mapping[str, TrackedRun], f: Filters) -> list[tuple[int, str]]:
    """(created_at, run_id) of the tracked runs that are not terminal, have a creation time and belong to listing
    ``f`` (``Filters.admits``), newest first: what a window may still settle below the pages it has read."""
    if f.workspace_id is None and f.project_id is None and f.technique_id is None:
        generations = f.resource == RESOURCE_GENERATIONS  # admits() is then the run type alone
        out = [
            (run.created_at, run.run_id)
            for t in tracked.values()
            if (run := t.run).status not in TERMINAL_STATUSES
            and run.created_at is not None
            and (run.run_type == RunType.GENERATION) is generations
        ]
    else:
        out = [
            (run.created_at, run.run_id)
            for t in tracked.values()
            if (run := t.run).status not in TERMINAL_STATUSES and run.created_at is not None and f.admits(run)
        ]
    out.sort(reverse=True)
    return out


def after_poll(t: TrackedRun, *, changed: bool, now_ms: int, rand: float, first_s: float, cap_s: float) -> TrackedRun:
    """Reschedule a polled run: fast again after a change, otherwise back off with jitter up to the cap."""
    if t.terminal:
        return replace_struct(t, next_poll_ms=None, poll_attempt=0)
    attempt = 0 if changed else t.poll_attempt + 1
    delay_s = poll_delay(attempt, rand, first=first_s, cap=cap_s)
    return replace_struct(t, poll_attempt=attempt, next_poll_ms=now_ms + int(delay_s * 1000))


def settled_by_listing(t: TrackedRun) -> TrackedRun:
    """A run the listing showed needs no per-run poll schedule."""
    if t.next_poll_ms is None and t.poll_attempt == 0:
        return t
    return replace_struct(t, next_poll_ms=None, poll_attempt=0)


# A run whose progress moved only restarts its stall clock (``TrackedRun.stuck_since_ms``). That is written to the
# state store lazily: at most this late (and never later than a tenth of ``stalled_after``), and at once on a
# clean stop. After a crash, a run whose progress moved in that last stretch before the crash is treated like one
# whose progress moved while the watcher was down: the store still holds its older progress with its older clock,
# the first observation differs from it, and the clock restarts then. So a run.stalled can come later after a
# crash, never early, and never twice. (Writing every moved progress of every sweep cost ~2,000 row writes a
# second at 10,000 running runs.)
STALL_CLOCK_MAX_LAG_MS = 60_000


def stall_clock_lag_ms(stalled_after_ms: int) -> int:
    """How late a moved stall clock may reach the state store (see ``STALL_CLOCK_MAX_LAG_MS``)."""
    return max(0, min(STALL_CLOCK_MAX_LAG_MS, stalled_after_ms // 10))


def unsaved_due(unsaved: Mapping[str, int], now_ms: int, lag_ms: int) -> list[str]:
    """The runs of ``unsaved`` (run id → when its stall clock first moved unwritten) to write now."""
    cutoff = now_ms - lag_ms
    return [run_id for run_id, since in unsaved.items() if since <= cutoff]


def past_floor(run: Run, floor: int | None) -> bool:
    """A finished run a re-read can no longer make look new: no floor yet, no creation time, or created at or
    before the floor (the one rule ``prunable``, ``prune`` and ``prune_batch`` forget finished runs by)."""
    return floor is None or run.created_at is None or run.created_at <= floor


def prunable(
    tracked: Mapping[str, TrackedRun], new_after_ms: int | Mapping[str, int | None] | None
) -> list[str]:
    """Terminal runs we no longer need to remember.

    A terminal run is kept only while a re-read of it could still look new (created after ``new_after_ms``);
    below that, ``transitions.detect`` ignores an unknown terminal run anyway, and the event store's ids are the
    last guard against a duplicate. ``new_after_ms`` may be one floor for every run or a floor per run type
    (``prune_floors``); a run type missing from it counts as None. (``prune`` keeps some of them longer.)
    """
    floors = new_after_ms if isinstance(new_after_ms, Mapping) else None
    out = []
    for t in tracked.values():
        if not is_terminal(t.run.status):  # (t.run.status, not the t.status property: this visits every run)
            continue
        floor = floors.get(t.run.run_type) if floors is not None else new_after_ms
        assert not isinstance(floor, Mapping)
        if past_floor(t.run, floor):
            out.append(t.run_id)
    return out


@dataclass(frozen=True, slots=True)
class Pruned:
    """What ``prune`` decided: the runs to forget, and what it saw of the active runs (for ``prune_batch``)."""

    deletes: list[str]
    oldest_active: dict[str, int]  # run type -> created_at of its oldest active run
    active: int  # active (non-terminal) runs


def prune(
    tracked: Mapping[str, TrackedRun], floors: Mapping[str, int | None], *, min_keep: int = MIN_FINISHED_KEPT
) -> Pruned:
    """``prunable``, keeping also the finished runs the next sweep's listing will show again: those created
    since the oldest active run of their run type (a window reads down to its oldest active run). A run kept is
    recognised as finished at a glance; a run forgotten is tracked again, written and forgotten again at every
    sweep (~7,000 runs a sweep at 10,000 active runs). Of those, at most as many as there are active runs, and
    at least ``min_keep``, are kept (the newest): a catch-up with one old stuck run does not keep everything it
    reads."""
    out: list[str] = []
    oldest_active: dict[str, int] = {}
    active = 0
    listed: list[tuple[int, str]] = []  # (created_at, run_id) of finished runs past their floor, maybe kept
    finished: list[tuple[int, str, str]] = []
    for t in tracked.values():
        run = t.run
        created = run.created_at
        if run.status not in TERMINAL_STATUSES:  # (is_terminal inlined: this visits every run)
            active += 1
            if created is not None:
                run_type = run.run_type
                oldest = oldest_active.get(run_type)
                if oldest is None or created < oldest:
                    oldest_active[run_type] = created
            continue
        if not past_floor(run, floors.get(run.run_type)):
            continue
        if created is None:
            out.append(run.run_id)
        else:
            finished.append((created, run.run_id, run.run_type))
    for created, run_id, run_type in finished:
        oldest = oldest_active.get(run_type)
        if oldest is not None and created >= oldest:
            listed.append((created, run_id))
        else:
            out.append(run_id)
    excess = len(listed) - max(min_keep, active)
    if excess > 0:
        listed.sort()
        out.extend(run_id for _, run_id in listed[:excess])
    return Pruned(out, oldest_active, active)


def prune_batch(
    tracked: Mapping[str, TrackedRun],
    among: Iterable[str],
    floors: Mapping[str, int | None],
    last: Pruned,
    *,
    min_keep: int = MIN_FINISHED_KEPT,
) -> list[str]:
    """``prune`` for a batch of a deep window, looking only at the runs of ``among`` (those the batch wrote) and
    at the active runs as ``last`` (the last full ``prune``) saw them, so a batch costs what it read, not what is
    tracked. Memory stays bounded: a finished run is kept only while the tracked runs number at most twice the
    active ones plus ``min_keep``."""
    out = []
    room = 2 * last.active + min_keep - len(tracked)
    for run_id in among:
        t = tracked.get(run_id)
        if t is None or not is_terminal(t.run.status):
            continue
        run = t.run
        if not past_floor(run, floors.get(run.run_type)):
            continue  # could still look new
        created = run.created_at
        oldest = last.oldest_active.get(run.run_type)
        if created is not None and oldest is not None and created >= oldest and room > 0:
            room -= 1
            continue
        out.append(run_id)
    return out


def next_sweep_at(previous_start: float, interval: float, now: float) -> float:
    """Drift-free cadence: sweeps start every ``interval``; a sweep longer than that pushes the next one back
    (it starts at once) without a burst of catch-up sweeps."""
    due = previous_start + interval
    return due if due > now else now

# --------------------------------------------------------------------------------------------- catch-up
# A window that goes deep (the catch-up after a long downtime) is committed batch by batch, with the parts of the
# window still to read in meta (``catchup:<filters key>``), so a crash in the middle resumes where it was. These
# are the pure parts: what is stored, and the progress ``status`` and the log report.

CATCHUP_PREFIX = "catchup:"


def catchup_key(filters: Filters) -> str:
    """The meta key of a listing's unfinished catch-up."""
    return f"{CATCHUP_PREFIX}{filters.key}"


def total_key(filters: Filters) -> str:
    """The meta key of a listing's ``total_estimate`` when its last window was read to its end."""
    return f"listing_total:{filters.key}"


@dataclass(slots=True)
class Segment:
    """A part of a window still to read: runs created after ``floor`` up to ``top``, newest first from
    ``cursor`` (None: from the newest run). ``read`` runs were read so far; ``expected`` is how many the part
    holds, when the listing's ``total_estimate`` told (for progress only)."""

    floor: int | None
    top: int | None = None
    cursor: str | None = None
    read: int = 0
    expected: int | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: object) -> Segment:
        if not isinstance(obj, dict):
            raise ValueError("not an object")

        def opt_int(name: str) -> int | None:
            value = obj.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} is not an integer")
            return value

        cursor = obj.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise ValueError("cursor is not a string")
        return cls(floor=opt_int("floor"), top=opt_int("top"), cursor=cursor, read=opt_int("read") or 0,
                   expected=opt_int("expected"))


def parse_catchup(raw: str | None) -> list[Segment]:
    """The ``catchup:<filters>`` meta value: the parts of a window still to read, newest first."""
    if not raw:
        return []
    data = json.loads(raw)
    if not isinstance(data, list):
        raise ValueError("not a list")
    return [Segment.from_json(item) for item in data]


def dump_catchup(segments: Sequence[Segment]) -> str:
    """The ``catchup:<filters>`` meta value for ``segments`` (empty: no catch-up under way)."""
    return json.dumps([s.to_json() for s in segments], separators=(",", ":")) if segments else ""


def window_parts(stored: Sequence[Segment], new_after_ms: int | None) -> list[Segment]:
    """The parts a window reads, newest first: the runs created since the unfinished window ``stored`` began
    (down to its newest run, less the margin), then ``stored`` from where each part stopped. Without an
    unfinished window: one part down to ``new_after_ms``."""
    if not stored:
        return [Segment(floor=new_after_ms)]
    head = new_after_for(stored[0].top) if stored[0].top is not None else new_after_ms
    return [Segment(floor=head), *(replace(s) for s in stored)]


def left_to_read(segments: Sequence[Segment]) -> list[Segment]:
    """What a commit stores of a window's parts: those begun (a newest run or a cursor) and not finished. A
    part not begun yet is the head, which the next window makes again anyway."""
    return [replace(s) for s in segments if s.top is not None or s.cursor is not None]


def expected_new(total_estimate: int | None, total_before: int | None) -> int | None:
    """How many runs the listing gained since its last complete window, from its ``total_estimate`` (for
    progress only; None when either is unknown)."""
    if total_estimate is None or total_before is None:
        return None
    return max(0, total_estimate - total_before)


def segments_progress(segments: Sequence[Segment]) -> tuple[int, int | None]:
    """Runs read so far over ``segments``, and how many are estimated to remain (None when unknown)."""
    known = [max(0, s.expected - s.read) for s in segments if s.expected is not None]
    return sum(s.read for s in segments), (sum(known) if known else None)


def catchup_progress(meta: Mapping[str, str]) -> dict[str, int | None] | None:
    """From the store's meta: how far an unfinished catch-up (a deep window committed batch by batch) got, for
    ``status``: ``runs_read`` and ``estimated_remaining`` (None when the API gave no ``total_estimate``). None
    when no catch-up is under way."""
    parts: list[Segment] = []
    for key, value in meta.items():
        if key.startswith(CATCHUP_PREFIX) and value:
            try:
                parts += parse_catchup(value)
            except (ValueError, TypeError):
                continue
    if not parts:
        return None
    read, remaining = segments_progress(parts)
    return {"runs_read": read, "estimated_remaining": remaining}


def max_opt(a: int | None, b: int | None) -> int | None:
    """The larger of two optional values (None when both are None)."""
    return b if a is None else a if b is None else max(a, b)
