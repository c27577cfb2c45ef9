"""Every transition rule of CONTRACT §4, in one pure module.

``detect(prev, observed, ctx)`` compares what the watcher remembers of a run (``prev``, or None for a run it
has never tracked) with a fresh observation and returns a ``Decision``: the state to remember and the events
to emit. The rules are data: ``TABLE`` maps (previous phase, observed phase) to one ``Action``; the handlers
below it apply the first-start, "new run" and ``late`` rules. Pure: no clock, no randomness, no I/O —
time comes in through ``Context``.

Phases and their rank (a lower rank never overwrites a higher one):

    pending 0 < running 1 < terminal 2 (completed | failed)

A status outside the API's enum is UNKNOWN: never terminal, never an event, and it never overwrites a known
status. A run first seen with an unknown status is still tracked (we do not know it is done); while it has
never shown a known status, any known status moves it on, as from below ``pending``.

Stuck runs (``run.stalled``, ``stall_check``): a tracked run that stays ``pending``, or ``running`` with the
same ``progress``, for longer than ``Context.stalled_after_ms`` (local clock, from the last status or
progress change the watcher saw) gets one ``run.stalled`` event, ever: ``TrackedRun.stalled`` remembers it
(persisted, so a restart does not repeat it). Never for a terminal or unknown status, never for a run created
before the watcher's first start (or whose ``created_at`` is unknown), never when ``stalled_after_ms`` is 0.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec.structs import replace

from watcher.model import (
    ACTIVE_STATUSES,
    TERMINAL_EVENT_FOR_STATUS,
    Event,
    EventType,
    Run,
    RunStatus,
    TrackedRun,
    event_id,
)

__all__ = ["TABLE", "Action", "Context", "Decision", "Phase", "build_event", "detect", "final", "phase_of",
           "quick_observe", "stall_check", "stall_due"]


@dataclass(frozen=True, slots=True)
class Context:
    """What ``detect`` needs to know besides the run: all times are Unix milliseconds."""

    now_ms: int  # local clock when the observation was made (event created_at)
    first_start_ms: int  # the watcher's very first start (persisted): no events for runs created before it
    new_after_ms: int | None  # API created_at above which an untracked run is new; None on first sweep ever
    process_start_ms: int  # this process's start: transitions that happened before it are `late`
    first_sweep: bool  # first sweep of this process (`late` when the transition time is unknown)
    enabled: frozenset[str]  # event types to emit
    stalled_after_ms: int = 0  # [watch].stalled_after in ms; 0 = run.stalled disabled


class Decision(msgspec.Struct, frozen=True, gc=False):
    """The outcome of one observation.

    ``tracked`` is the state to remember. It *is* ``prev`` (the same object) when the observation must leave
    no trace (stale read, unknown status over a known one, terminal run). ``changed`` is true when the
    tracked status differs from before — a newly tracked run counts as changed — and resets the per-run
    poll backoff. ``reason`` is a short machine word for logs and metrics.
    """

    tracked: TrackedRun | None
    events: tuple[Event, ...]
    changed: bool
    reason: str


class Phase(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code, looked up twice per run

    NONE = "none"  # not tracked
    PENDING = "pending"
    RUNNING = "running"
    TERMINAL = "terminal"
    UNKNOWN = "unknown"  # a status outside the API's enum


# A status string → its phase (one dict lookup: twice per listed run, ~7,000 times a second at 10,000 runs).
_PHASE_OF: dict[str, Phase] = {
    str(RunStatus.PENDING): Phase.PENDING,
    str(RunStatus.RUNNING): Phase.RUNNING,
    **{str(status): Phase.TERMINAL for status in TERMINAL_EVENT_FOR_STATUS},
}


def phase_of(status: str | None) -> Phase:
    if status is None:
        return Phase.NONE
    return _PHASE_OF.get(status, Phase.UNKNOWN)


class Action(enum.Enum):
    TRACK = "track"  # never tracked, not terminal: remember it, no event
    TRACK_RUNNING = "track_running"  # never tracked, running: remember it; run.started only if the run is new
    TRACK_TERMINAL = "track_terminal"  # never tracked, terminal: remember it; an event only if the run is new
    OBSERVE = "observe"  # same phase: refresh the observation (progress, fields), no event
    ADVANCE = "advance"  # forward status change without an event (unknown → pending)
    START = "start"  # → running: run.started
    FINISH = "finish"  # active (or unknown) → terminal: the one terminal event
    STALE = "stale"  # an older read (lower rank): ignored entirely
    IGNORE_UNKNOWN = "ignore_unknown"  # unknown status over a known one: ignored entirely
    FINAL = "final"  # terminal is final: ignored entirely


_P = Phase
TABLE: dict[tuple[Phase, Phase], Action] = {
    # never tracked
    (_P.NONE, _P.PENDING): Action.TRACK,
    (_P.NONE, _P.RUNNING): Action.TRACK_RUNNING,
    (_P.NONE, _P.TERMINAL): Action.TRACK_TERMINAL,
    (_P.NONE, _P.UNKNOWN): Action.TRACK,
    # only ever seen with an unknown status: below pending
    (_P.UNKNOWN, _P.PENDING): Action.ADVANCE,
    (_P.UNKNOWN, _P.RUNNING): Action.START,
    (_P.UNKNOWN, _P.TERMINAL): Action.FINISH,
    (_P.UNKNOWN, _P.UNKNOWN): Action.OBSERVE,
    # pending
    (_P.PENDING, _P.PENDING): Action.OBSERVE,
    (_P.PENDING, _P.RUNNING): Action.START,
    (_P.PENDING, _P.TERMINAL): Action.FINISH,
    (_P.PENDING, _P.UNKNOWN): Action.IGNORE_UNKNOWN,
    # running
    (_P.RUNNING, _P.PENDING): Action.STALE,
    (_P.RUNNING, _P.RUNNING): Action.OBSERVE,
    (_P.RUNNING, _P.TERMINAL): Action.FINISH,
    (_P.RUNNING, _P.UNKNOWN): Action.IGNORE_UNKNOWN,
    # terminal: final
    (_P.TERMINAL, _P.PENDING): Action.FINAL,
    (_P.TERMINAL, _P.RUNNING): Action.FINAL,
    (_P.TERMINAL, _P.TERMINAL): Action.FINAL,
    (_P.TERMINAL, _P.UNKNOWN): Action.FINAL,
}
del _P


def final(prev: TrackedRun | None) -> bool:
    """True when ``prev`` is a finished run: every observation of it is then ignored (``Action.FINAL``), so
    ``detect`` would keep ``prev`` and emit nothing, whatever the observation and the context. A sweep passes
    over the ~7,000 finished runs each listing shows again at 10,000 active runs with this alone."""
    return prev is not None and prev.run.status in TERMINAL_EVENT_FOR_STATUS


def detect(prev: TrackedRun | None, observed: Run, ctx: Context) -> Decision:
    """Decide what one observation of a run means (CONTRACT §4). See ``TABLE`` for the rules."""
    if prev is not None and prev.run_id != observed.run_id:
        raise ValueError(f"detect: tracked run {prev.run_id!r} given an observation of {observed.run_id!r}")
    prev_phase = phase_of(prev.status) if prev is not None else Phase.NONE
    action = TABLE[(prev_phase, phase_of(observed.status))]
    return _HANDLERS[action](prev, observed, ctx)


# ------------------------------------------------------------------------------------------- handlers


def _track(prev: TrackedRun | None, observed: Run, ctx: Context) -> Decision:
    reason = "unknown_status" if phase_of(observed.status) is Phase.UNKNOWN else "new_active"
    return Decision(_new_tracked(observed, ctx), (), True, reason)


def _track_running(prev: TrackedRun | None, observed: Run, ctx: Context) -> Decision:
    events: tuple[Event, ...] = ()
    if _created_since_start(observed, ctx):
        events = _maybe_event(EventType.STARTED, observed, None, ctx, observed.started_at)
    return Decision(_new_tracked(observed, ctx), events, True, "new_active")


def _track_terminal(prev: TrackedRun | None, observed: Run, ctx: Context) -> Decision:
    tracked = _new_tracked(observed, ctx)
    if not _created_between_sweeps(observed, ctx):
        return Decision(tracked, (), True, "old_terminal")
    event_type = TERMINAL_EVENT_FOR_STATUS[observed.status]
    events = _maybe_event(event_type, observed, None, ctx, observed.completed_at)
    return Decision(tracked, events, True, "new_terminal")


def _observe(prev: TrackedRun | None, observed: Run, ctx: Context) -> Decision:
    assert prev is not None
    run = observed.merged_with(prev.run)
    reason = "unknown_status" if phase_of(observed.status) is Phase.UNKNOWN else "unchanged"
    if observed.status != prev.status:  # one unknown status replacing another
        return Decision(_moved(prev, run, ctx), (), True, reason)
    if ctx.stalled_after_ms > 0 and run.progress != prev.run.progress:  # progress moved: the stall clock restarts
        tracked = _with_run(prev, run, ctx.now_ms)
    elif run is prev.run:  # the same observation again (``normalize.RunMemo``): nothing to copy
        tracked = prev
    else:
        tracked = _with_run(prev, run, prev.stuck_since_ms)
    tracked, events = stall_check(tracked, ctx)
    return Decision(tracked, events, False, "stalled" if events else reason)


def _advance(prev: TrackedRun | None, observed: Run, ctx: Context) -> Decision:
    assert prev is not None
    return Decision(_moved(prev, observed.merged_with(prev.run), ctx), (), True, "advanced")


def _start(prev: TrackedRun | None, observed: Run, ctx: Context) -> Decision:
    assert prev is not None
    run = observed.merged_with(prev.run)
    events = _maybe_event(EventType.STARTED, run, prev.status, ctx, run.started_at)
    return Decision(_moved(prev, run, ctx), events, True, "started")


def _finish(prev: TrackedRun | None, observed: Run, ctx: Context) -> Decision:
    assert prev is not None
    run = observed.merged_with(prev.run)
    event_type = TERMINAL_EVENT_FOR_STATUS[run.status]
    events = _maybe_event(event_type, run, prev.status, ctx, run.completed_at)
    return Decision(_moved(prev, run, ctx), events, True, "terminal")


def _ignore(reason: str):
    def handler(prev: TrackedRun | None, observed: Run, ctx: Context) -> Decision:
        return Decision(prev, (), False, reason)

    return handler


_HANDLERS = {
    Action.TRACK: _track,
    Action.TRACK_RUNNING: _track_running,
    Action.TRACK_TERMINAL: _track_terminal,
    Action.OBSERVE: _observe,
    Action.ADVANCE: _advance,
    Action.START: _start,
    Action.FINISH: _finish,
    Action.STALE: _ignore("stale"),
    Action.IGNORE_UNKNOWN: _ignore("unknown_status"),
    Action.FINAL: _ignore("terminal_final"),
}


# -------------------------------------------------------------------------------- first-start rules


def _created_since_start(run: Run, ctx: Context) -> bool:
    """A never-tracked *running* run is new (worth a run.started) when it was created after the watcher's
    first start and, once a sweep has happened, after the previous sweep's watermark."""
    if run.created_at is None or run.created_at < ctx.first_start_ms:
        return False
    return ctx.new_after_ms is None or run.created_at > ctx.new_after_ms


def _created_between_sweeps(run: Run, ctx: Context) -> bool:
    """A never-tracked *terminal* run gets its event only when it was created and finished between two
    sweeps: never on the very first sweep (no flood on first start), never for runs older than the
    watermark (already settled) or than the first start."""
    return (
        ctx.new_after_ms is not None
        and run.created_at is not None
        and run.created_at > ctx.new_after_ms
        and run.created_at >= ctx.first_start_ms
    )


def _is_late(happened_at: int | None, ctx: Context) -> bool:
    """The transition happened while the watcher was not running."""
    if happened_at is None:
        return ctx.first_sweep
    return happened_at < ctx.process_start_ms


# ------------------------------------------------------------------------------------------- stuck runs


def stall_due(t: TrackedRun, ctx: Context) -> bool:
    """Whether ``stall_check`` would emit the ``run.stalled`` of ``t`` now (see there)."""
    run = t.run
    return not (
        ctx.stalled_after_ms <= 0
        or EventType.STALLED not in ctx.enabled
        or t.stalled
        or run.status not in ACTIVE_STATUSES
        or run.created_at is None
        or run.created_at < ctx.first_start_ms
    ) and ctx.now_ms - t.stuck_since > ctx.stalled_after_ms


def stall_check(t: TrackedRun, ctx: Context) -> tuple[TrackedRun, tuple[Event, ...]]:
    """The one ``run.stalled`` of a run stuck for longer than ``ctx.stalled_after_ms``, if it is due now.

    Returns the state (marked ``stalled`` when the event is emitted) and the events (none or one). Nothing
    when disabled (0 or the type not enabled), already reported, not pending/running, created before the
    watcher's first start or at an unknown time, or not stuck long enough yet.
    """
    if not stall_due(t, ctx):
        return t, ()
    run = t.run
    stalled_for = ctx.now_ms - t.stuck_since
    late = t.stuck_since + ctx.stalled_after_ms < ctx.process_start_ms
    event = build_event(
        EventType.STALLED, run, run.status, now_ms=ctx.now_ms, late=late, stalled_for=stalled_for
    )
    return replace(t, stalled=True), (event,)


def quick_observe(prev: TrackedRun, observed: Run, ctx: Context) -> TrackedRun | None:
    """``detect(prev, observed, ctx)`` for the observations that change nothing but ``progress``: most of a
    sweep's (a running run shows a new progress in every listing; a pending one shows the same item). Returns the
    state to remember — ``prev`` itself when nothing moved, ``prev`` with the new progress and its stall clock
    restarted when only the progress moved — or None when ``detect`` must decide: anything else differs, or a
    ``run.stalled`` is due now. When it returns a state, ``detect`` would return an equal one, no event and no
    change (``tests/unit/test_stalled.py`` checks it against ``detect``); it only skips the work: the phase table,
    the merge, a new ``Decision`` and the full stall check for each of ~10,000 listed runs a sweep."""
    run = prev.run
    if run.status in TERMINAL_EVENT_FOR_STATUS:
        return prev  # finished: every observation is ignored (``final``)
    if observed is not run and observed != run:
        moved = observed.progress
        if moved is None or observed.status != run.status or replace(observed, progress=run.progress) != run:
            return None  # (an absent progress reading is no change: ``detect`` merges the older one in)
        # Only the progress moved: the stall clock restarts, so no run.stalled can be due.
        return TrackedRun(observed, prev.first_seen_ms, prev.last_change_ms, prev.poll_attempt, prev.next_poll_ms,
                          ctx.now_ms if ctx.stalled_after_ms > 0 else prev.stuck_since_ms, prev.stalled)
    return None if stall_due(prev, ctx) else prev


# ------------------------------------------------------------------------------------------- state


def _new_tracked(run: Run, ctx: Context) -> TrackedRun:
    return TrackedRun(run=run, first_seen_ms=ctx.now_ms, last_change_ms=ctx.now_ms, stuck_since_ms=ctx.now_ms)


def _with_run(prev: TrackedRun, run: Run, stuck_since_ms: int | None) -> TrackedRun:
    """``replace(prev, run=run, stuck_since_ms=stuck_since_ms)``, without ``replace``'s cost: every listed run of
    every sweep comes through here."""
    return TrackedRun(run, prev.first_seen_ms, prev.last_change_ms, prev.poll_attempt, prev.next_poll_ms,
                      stuck_since_ms, prev.stalled)


def _moved(prev: TrackedRun, run: Run, ctx: Context) -> TrackedRun:
    """The state after a status change: poll backoff and the stall clock restart; a terminal run needs no
    more polls."""
    next_poll_ms = None if run.terminal else prev.next_poll_ms
    return replace(
        prev, run=run, last_change_ms=ctx.now_ms, stuck_since_ms=ctx.now_ms, poll_attempt=0,
        next_poll_ms=next_poll_ms,
    )


# ------------------------------------------------------------------------------------------- events


def _maybe_event(
    event_type: str, run: Run, previous_status: str | None, ctx: Context, happened_at: int | None
) -> tuple[Event, ...]:
    if event_type not in ctx.enabled:
        return ()
    late = _is_late(happened_at, ctx)
    return (build_event(event_type, run, previous_status, now_ms=ctx.now_ms, late=late),)


def build_event(
    event_type: str,
    run: Run,
    previous_status: str | None,
    *,
    now_ms: int,
    late: bool,
    stalled_for: int | None = None,
) -> Event:
    """The event for one transition of ``run`` (CONTRACT §4, §8). Its id depends only on (run_id, type).

    Generation runs carry ``model`` and a null ``technique``; ``stalled_for`` (ms) is set on ``run.stalled``
    and null on every other type."""
    data: dict[str, Any] = {
        "run_id": run.run_id,
        "run_type": run.run_type,
        "workspace_id": run.workspace_id,
        "project_id": run.project_id,
        "technique": run.technique.to_dict() if run.technique is not None else None,
        "model": run.model.to_dict() if run.model is not None else None,
        "status": run.status,
        "previous_status": previous_status,
        "error_code": run.error_code,
        "error_message": run.error_message,
        "progress": _clamped_progress(run.progress),
        "charged_cost": _finite(run.charged_cost),
        "created_at": run.created_at,
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "outputs": [o.to_dict() for o in run.outputs],
        "poll_url": run.poll_url,
        "stalled_for": stalled_for,
        "late": late,
    }
    return Event(id=event_id(run.run_id, event_type), type=str(event_type), created_at=now_ms, data=data)


def _finite(value: float | None) -> float | None:
    if value is None or isinstance(value, bool) or not math.isfinite(value):
        return None
    return value


def _clamped_progress(value: float | None) -> float | None:
    """Progress as a percentage in [0, 100]; the API may send anything (CONTRACT §4, flora-api §8.5)."""
    finite = _finite(value)
    if finite is None:
        return None
    return min(100, max(0, finite))
