"""The state store logic both back ends share, written once over a small dialect seam. Pure: no I/O here.

Every shared method of ``SqlCore`` is a *plan*: a generator that yields the statements to run, each as
``(kind, sql, params)``, receives each one's result (``ROWS``: the rows; ``COUNT``: the row count; ``MANY``:
nothing) and returns the method's result. ``store.Store`` runs a plan synchronously on its sqlite3 connection
(on ``AsyncStore``'s worker thread), ``store_pg.PgStore`` awaits it on a pooled psycopg connection; each store
opens a transaction around a plan marked ``@writes`` and translates its driver's errors. So the SQL, the rows
written and the results read are here once, and each store keeps only what truly differs: connection
handling, pragmas and migrations, claims (``due_deliveries``, ``oldest_pending``, ``next_due_ms``) and
PostgreSQL's fencing of the sweep commit.

``Dialect`` is everything the shared SQL differs in between the back ends (parameter marker, "in this list",
the column that numbers events, the error code inside a stored body, the claim columns PostgreSQL frees, the
size of the database). Shared SQL is written with ``?`` markers; ``Dialect.q`` gives it in the back end's form.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from watcher.errors import StoreError
from watcher.model import Event, Run, TrackedRun
from watcher.store_api import (
    DEAD,
    DELIVERED,
    PENDING,
    RETRY,
    Delivery,
    DeliveryRow,
    Outcome,
    RecordedCallback,
    SinkState,
    SweepCommit,
)

R = TypeVar("R")

# What a plan asks its store to do with one statement (and what it gets back).
ROWS = "rows"  # execute, fetch all rows
COUNT = "count"  # execute, the number of rows it changed
MANY = "many"  # executemany over a list of parameter rows (nothing when the list is empty), returns None
Op = tuple[str, str, Any]
Plan = Generator[Op, Any, R]

MAX_ERROR_CHARS = 1_000  # stored error texts are cut to this length
PAUSE_PREFIX = "sink_paused."  # meta keys of paused sinks (set_sink_pause)
DELIVERY_COLUMNS = "d.id, d.event_id, d.sink, d.attempts, d.created_ms, d.next_attempt_ms, e.body, e.run_id"


# ------------------------------------------------------------------------------------------ the dialect


@dataclass(frozen=True)
class Dialect:
    """What the shared SQL differs in between the back ends (one instance per back end, in its module)."""

    name: str
    marker: str  # the driver's parameter marker: "?" (sqlite3) or "%s" (psycopg)
    one_of: str  # "{column} ..." that holds when the column's value is in the list given as one parameter
    listed: Callable[[list[Any]], Any]  # a list of values → that one parameter
    flag: Callable[[bool], Any]  # a bool as a parameter for a flag column (sqlite3 binds a bool ~20x slower)
    # Encode a sweep's tracked rows while the transaction writes them (SQLite: one encoded row alive at a time;
    # allocating them all first costs ~0.5 % of a commit) rather than before it opens (PostgreSQL: its
    # transaction holds the sweeper's lease row locked).
    stream_tracked: bool
    event_seq: str  # the column that numbers events in the order they were stored
    error_code: str  # the error_code in a stored event body (JSON bytes)
    counted_deliveries: str  # delivery_counts' FROM (SQLite names the index its planner would miss)
    release_claim: str  # SET clauses (", a = NULL, ...") freeing an instance's claim, where a row leaves its hands
    file_bytes: str  # a query for the size of the database in bytes
    # appended to a correlated subquery that the planner must run as written, by its own index, instead of
    # flattening it into a join it may order the other way round (PostgreSQL: " OFFSET 0"; SQLite keeps them)
    barrier: str
    _converted: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def q(self, sql: str) -> str:
        """Shared SQL (``?`` markers, no ``%``) in this back end's form."""
        if self.marker == "?":
            return sql
        converted = self._converted.get(sql)
        if converted is None:
            converted = self._converted[sql] = sql.replace("%", "%%").replace("?", self.marker)
        return converted

    def is_in(self, column: str) -> str:
        return self.one_of.format(column=column)


# ------------------------------------------------------------------------------------------ row codecs


def encode_event(event: Event) -> bytes:
    """The exact bytes receivers get for ``event``: compact JSON, UTF-8."""
    return event.body()


# One encoder for every tracked row (json.dumps with options builds a new encoder per call; same output).
_TRACKED_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_tracked(tracked: TrackedRun) -> str:
    return _TRACKED_ENCODER.encode(
        {
            "run": tracked.run.to_dict(),
            "first_seen_ms": tracked.first_seen_ms,
            "last_change_ms": tracked.last_change_ms,
            "poll_attempt": tracked.poll_attempt,
            "next_poll_ms": tracked.next_poll_ms,
            "stuck_since_ms": tracked.stuck_since_ms,
            "stalled": tracked.stalled,
        },
    )


def decode_tracked(data: str) -> TrackedRun:
    d = json.loads(data)
    return TrackedRun(
        run=Run.from_dict(d["run"]),
        first_seen_ms=d["first_seen_ms"],
        last_change_ms=d["last_change_ms"],
        poll_attempt=d.get("poll_attempt", 0),
        next_poll_ms=d.get("next_poll_ms"),
        stuck_since_ms=d.get("stuck_since_ms"),
        stalled=bool(d.get("stalled", False)),
    )


def tracked_row(t: TrackedRun, flag: Callable[[bool], Any]) -> tuple[Any, ...]:
    """The ``tracked`` table's columns for one run (``terminal`` as the dialect's flag)."""
    return (t.run_id, t.status, flag(t.terminal), t.run.created_at, t.last_change_ms, t.next_poll_ms,
            encode_tracked(t))


def delivery_of(row: Sequence[Any]) -> Delivery:
    """A ``Delivery`` from a row of ``DELIVERY_COLUMNS``."""
    return Delivery(row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6]), row[7])


def cut(text: str | None) -> str | None:
    return None if text is None else text[:MAX_ERROR_CHARS]


def meta_rows(items: dict[str, str]) -> list[tuple[str, str]]:
    rows = []
    for key, value in items.items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"meta value for {key!r} must be a string, got {type(value).__name__}")
        rows.append((key, str(value)))
    return rows


def sink_names(sinks: Sequence[str]) -> list[str]:
    if isinstance(sinks, str):
        raise TypeError(f"sink names must be a sequence of strings, not the string {sinks!r}")
    for name in sinks:
        if not isinstance(name, str) or not name:
            raise TypeError(f"sink name must be a non-empty string, got {name!r}")
    return list(dict.fromkeys(sinks))


_Rows = list[tuple[Any, ...]]


def outcome_rows(outcomes: Sequence[Outcome]) -> tuple[_Rows, _Rows, _Rows]:
    """The parameters of ``record_outcomes``' three updates (delivered, retry, dead):
    ``(attempts added, now, delivered_ms, status, id)``, ``(attempts added, now, next_attempt_ms, error, status,
    id)`` and ``(attempts added, dead_ms, attempted, last_attempt_ms, error, status, id)``."""
    delivered: _Rows = []
    retry: _Rows = []
    dead: _Rows = []
    for o in outcomes:
        if o.state == DELIVERED:
            delivered.append((int(o.attempted), o.now_ms, o.now_ms, o.status, o.delivery_id))
        elif o.state == RETRY:
            if o.next_attempt_ms is None:
                raise ValueError("a retry outcome needs next_attempt_ms")
            retry.append((int(o.attempted), o.now_ms, o.next_attempt_ms, cut(o.error), o.status, o.delivery_id))
        elif o.state == DEAD:
            dead.append((int(o.attempted), o.now_ms, bool(o.attempted), o.now_ms, cut(o.error), o.status,
                         o.delivery_id))
        else:
            raise ValueError(f"unknown outcome state {o.state!r}")
    return delivered, retry, dead


def health_rows(outcomes: Sequence[Outcome], flag: Callable[[bool], Any]) -> _Rows:
    """Per sink, the net effect of outcomes in order on its health record: ``(name, last success, last failure,
    its error, failures, reset)``, where ``consecutive_failures`` becomes ``failures`` when ``reset`` (a success
    came first) and grows by it otherwise."""
    out: dict[str, list[Any]] = {}
    for o in outcomes:
        if o.health is None:
            continue
        h = out.setdefault(o.sink, [o.sink, None, None, None, 0, False])
        if o.health:
            h[1], h[4], h[5] = o.now_ms, 0, True
        else:
            h[2], h[3], h[4] = o.now_ms, cut(o.error), h[4] + 1
    return [(*h[:5], flag(h[5])) for h in out.values()]


def _counts(rows: SweepRows, new_ids: list[str]) -> dict[str, int]:
    """Sink -> how many new deliveries a commit made for it (none taken)."""
    new = set(new_ids)
    counts: dict[str, int] = {}
    for row, names in rows.events:
        if row[0] in new:
            for name in names:
                counts[name] = counts.get(name, 0) + 1
    return counts


def parse_pauses(rows: Iterable[Sequence[Any]]) -> dict[str, tuple[int, int | None]]:
    """``sink_paused.<name>`` meta rows → name → (paused since ms, next probe ms or None)."""
    pauses: dict[str, tuple[int, int | None]] = {}
    for key, value in rows:
        if not str(key).startswith(PAUSE_PREFIX):
            continue
        since, _, probe = str(value).partition(",")
        try:
            pauses[str(key)[len(PAUSE_PREFIX):]] = (int(since), int(probe) if probe else None)
        except ValueError:
            continue
    return pauses


def empty_sink_summary() -> dict[str, Any]:
    return {
        PENDING: 0,
        DEAD: 0,
        DELIVERED: 0,
        "oldest_pending_ms": None,
        "disabled_reason": None,
        "disabled_ms": None,
        "last_success_ms": None,
        "last_failure_ms": None,
        "last_error": None,
        "consecutive_failures": 0,
        "paused_since_ms": None,  # the circuit breaker paused the sink (its receiver is down) ...
        "next_probe_ms": None,  # ... and tries one delivery at this time
    }


@dataclass(frozen=True, slots=True)
class SweepRows:
    """One sweep's writes as rows, built before the store opens its transaction (the tracked rows maybe as
    they are written: ``Dialect.stream_tracked``)."""

    deletes: list[tuple[str]]
    upserts: Iterable[tuple[Any, ...]]
    events: list[tuple[tuple[Any, ...], list[str]]]  # (the events row, the names of the sinks it goes to)
    meta: list[tuple[str, str]]
    now_ms: int
    sources: list[Event]  # the events of ``events``, in the same order


def sweep_rows(*, upserts: Iterable[TrackedRun], deletes: Iterable[str],
               events: Iterable[tuple[Event, Sequence[str]]], meta: dict[str, str], now_ms: int,
               dialect: Dialect) -> SweepRows:
    if isinstance(deletes, str):
        raise TypeError("deletes must be an iterable of run ids, not a string")
    flag = dialect.flag
    rows = (tracked_row(t, flag) for t in upserts)
    routed = list(events)
    return SweepRows(
        deletes=[(run_id,) for run_id in deletes],
        upserts=rows if dialect.stream_tracked else list(rows),
        events=[((e.id, e.run_id, e.type, e.created_at, encode_event(e)), sink_names(sinks)) for e, sinks in routed],
        meta=meta_rows(meta),
        now_ms=now_ms,
        sources=[e for e, _ in routed],
    )


def claim_new(rows: Sequence[Sequence[Any]], sweep: SweepRows, take: Mapping[str, int]) -> SweepCommit:
    """Which of a commit's new deliveries the caller takes: ``rows`` are ``(id, event_id, sink, behind)`` in id
    order (``behind``: an earlier delivery of the run to that sink is pending); each sink's first
    ``take[sink]`` not behind one are claimed, carrying their event and body."""
    by_id = {row[0]: (event, row[4]) for event, (row, _) in zip(sweep.sources, sweep.events, strict=True)}
    claimed: list[Delivery] = []
    left: dict[str, int] = {}
    behind: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for delivery_id, event_id, sink, waits in rows:
        event, body = by_id[event_id]
        if waits:
            behind.setdefault(sink, []).append(event.run_id)
        elif counts.get(sink, 0) < take.get(sink, 0):
            counts[sink] = counts.get(sink, 0) + 1
            claimed.append(Delivery.new(int(delivery_id), event, sink, sweep.now_ms, body))
        else:
            left[sink] = left.get(sink, 0) + 1
    return SweepCommit(new_ids=[], claimed=claimed, left=left, behind=behind)


# ------------------------------------------------------------------------------------------- the plans

_UPSERT_META = "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
_UPSERT_TRACKED = (
    "INSERT INTO tracked(run_id, status, terminal, created_at, last_change_ms, next_poll_ms, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, terminal = excluded.terminal,"
    " created_at = excluded.created_at, last_change_ms = excluded.last_change_ms,"
    " next_poll_ms = excluded.next_poll_ms, data = excluded.data"
)
_RECORD_HEALTH = (
    "INSERT INTO sinks(name, last_success_ms, last_failure_ms, last_error, consecutive_failures)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
    " last_success_ms = COALESCE(excluded.last_success_ms, sinks.last_success_ms),"
    " last_failure_ms = COALESCE(excluded.last_failure_ms, sinks.last_failure_ms),"
    " last_error = CASE WHEN excluded.last_failure_ms IS NULL THEN sinks.last_error ELSE excluded.last_error END,"
    " consecutive_failures = CASE WHEN ? THEN excluded.consecutive_failures"
    " ELSE sinks.consecutive_failures + excluded.consecutive_failures END"
)
_SINK_STATES = (
    "SELECT name, disabled_reason, disabled_ms, last_success_ms, last_failure_ms, last_error, consecutive_failures"
    " FROM sinks ORDER BY name"
)


F = TypeVar("F", bound=Callable[..., Any])


def writes(plan: F) -> F:
    """Marks a plan that writes: a store runs it in one transaction (the others read, outside any)."""
    plan.writes = True  # type: ignore[attr-defined]
    return plan


def is_write(plan: Callable[..., Any]) -> bool:
    return bool(getattr(plan, "writes", False))


class SqlCore:
    """The store methods both back ends share, as plans (see the module docstring) over ``dialect``. The store
    that runs them names itself ``path`` in messages and knows its ``schema_version``."""

    def __init__(self, dialect: Dialect, path: str, schema_version: int) -> None:
        self.dialect = dialect
        self.path = path
        self.schema_version = schema_version

    # --------------------------------------------------------------------------------------- meta

    def get_meta(self, key: str) -> Plan[str | None]:
        rows = yield ROWS, self.dialect.q("SELECT value FROM meta WHERE key = ?"), (key,)
        return rows[0][0] if rows else None

    def all_meta(self) -> Plan[dict[str, str]]:
        rows = yield ROWS, "SELECT key, value FROM meta ORDER BY key", ()
        return dict(rows)

    @writes
    def set_meta(self, items: dict[str, str]) -> Plan[None]:
        yield MANY, self.dialect.q(_UPSERT_META), meta_rows(items)

    @writes
    def ensure_meta(self, key: str, value: str) -> Plan[str]:
        """Store ``value`` under ``key`` unless the key exists; return what is stored."""
        q, row = self.dialect.q, meta_rows({key: value})[0]
        yield COUNT, q("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"), row
        rows = yield ROWS, q("SELECT value FROM meta WHERE key = ?"), (key,)
        return rows[0][0]

    # ------------------------------------------------------------------------------- tracked runs

    def load_tracked(self) -> Plan[dict[str, TrackedRun]]:
        tracked: dict[str, TrackedRun] = {}
        rows = yield ROWS, "SELECT run_id, data FROM tracked", ()
        for run_id, data in rows:
            try:
                tracked[run_id] = decode_tracked(data)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StoreError(f"state store {self.path}: tracked run {run_id} is unreadable ({exc!r})") from exc
        return tracked

    @writes
    def commit_sweep(
        self,
        *,
        upserts: Iterable[TrackedRun],
        deletes: Iterable[str],
        events: Iterable[tuple[Event, Sequence[str]]],
        meta: dict[str, str],
        now_ms: int,
    ) -> Plan[list[str]]:
        """One sweep's writes in one transaction; returns the ids of the events inserted by this call. (The rows
        are built when this is called, before the store opens the transaction.)"""
        return self._write_sweep(sweep_rows(upserts=upserts, deletes=deletes, events=events, meta=meta,
                                            now_ms=now_ms, dialect=self.dialect))

    @writes
    def commit_and_claim(
        self,
        *,
        upserts: Iterable[TrackedRun],
        deletes: Iterable[str],
        events: Iterable[tuple[Event, Sequence[str]]],
        meta: dict[str, str],
        now_ms: int,
        take: Mapping[str, int],
    ) -> Plan[SweepCommit]:
        """``commit_sweep``, and in its transaction which of the new deliveries the caller takes (``claim_new``:
        up to ``take[sink]`` each, in run order). The claim columns of PostgreSQL are set by its store."""
        return self._claim_sweep(sweep_rows(upserts=upserts, deletes=deletes, events=events, meta=meta,
                                            now_ms=now_ms, dialect=self.dialect), take)

    def _claim_sweep(self, rows: SweepRows, take: Mapping[str, int]) -> Plan[SweepCommit]:
        new_ids = yield from self._write_sweep(rows)
        if not new_ids or not any(take.values()):
            return SweepCommit(new_ids=new_ids, left=_counts(rows, new_ids))
        d = self.dialect
        # Behind: the run has another event whose delivery to this sink is still pending and older (the
        # run's events by events_by_run, then that one's delivery by the unique (event_id, sink) index).
        found = yield ROWS, d.q(
            "SELECT d.id, d.event_id, d.sink, CASE WHEN EXISTS (SELECT 1 FROM events e2 WHERE e2.run_id = e.run_id"
            " AND e2.id <> e.id AND EXISTS (SELECT 1 FROM deliveries d2 WHERE d2.event_id = e2.id"
            f" AND d2.sink = d.sink AND d2.state <> 'delivered' AND d2.state <> 'dead' AND d2.id < d.id{d.barrier})"
            f"{d.barrier}) THEN 1 ELSE 0 END FROM deliveries d JOIN events e ON e.id = d.event_id"
            f" WHERE {d.is_in('d.event_id')} ORDER BY d.id"
        ), (d.listed(new_ids),)
        commit = claim_new(found, rows, take)
        return SweepCommit(new_ids=new_ids, claimed=commit.claimed, left=commit.left, behind=commit.behind)

    def _write_sweep(self, rows: SweepRows) -> Plan[list[str]]:
        q = self.dialect.q
        yield MANY, q("DELETE FROM tracked WHERE run_id = ?"), rows.deletes
        yield MANY, q(_UPSERT_TRACKED), rows.upserts
        # not INSERT OR IGNORE (SQLite): that would also pass over a NOT NULL failure
        insert_event = q("INSERT INTO events(id, run_id, type, created_ms, body) VALUES (?, ?, ?, ?, ?)"
                         " ON CONFLICT (id) DO NOTHING")
        new_ids: list[str] = []
        deliveries: list[tuple[str, str, int, int]] = []
        for row, names in rows.events:
            if (yield COUNT, insert_event, row) == 1:
                new_ids.append(row[0])
                deliveries.extend((row[0], name, rows.now_ms, rows.now_ms) for name in names)
        yield MANY, q("INSERT INTO deliveries(event_id, sink, state, attempts, created_ms, next_attempt_ms)"
                      " VALUES (?, ?, 'pending', 0, ?, ?)"), deliveries
        yield MANY, q(_UPSERT_META), rows.meta
        return new_ids

    # ------------------------------------------------------------------------------------- outbox

    @writes
    def record_outcomes(self, outcomes: Sequence[Outcome]) -> Plan[None]:
        """Record many deliveries' outcomes, and their sinks' health, in one transaction (one fsync): the
        dispatcher's group commit (what each outcome means: ``store_api.Outcome``). Each frees its claim."""
        delivered, retry, dead = outcome_rows(outcomes)
        return self._write_outcomes(delivered, retry, dead, health_rows(outcomes, self.dialect.flag))

    def _write_outcomes(self, delivered: _Rows, retry: _Rows, dead: _Rows, health: _Rows) -> Plan[None]:
        q, free = self.dialect.q, self.dialect.release_claim
        yield MANY, q(
            "UPDATE deliveries SET state = 'delivered', attempts = attempts + ?, last_attempt_ms = ?,"
            f" delivered_ms = ?, dead_ms = NULL, last_status = ?, last_error = NULL{free} WHERE id = ?"
        ), delivered
        yield MANY, q(
            "UPDATE deliveries SET attempts = attempts + ?, last_attempt_ms = ?, next_attempt_ms = ?,"
            f" last_error = ?, last_status = ?{free} WHERE id = ? AND state = 'pending'"
        ), retry
        yield MANY, q(
            "UPDATE deliveries SET state = 'dead', attempts = attempts + ?, dead_ms = ?,"
            " last_attempt_ms = CASE WHEN ? THEN ? ELSE last_attempt_ms END,"
            f" last_error = ?, last_status = COALESCE(?, last_status){free} WHERE id = ? AND state = 'pending'"
        ), dead
        for name, success_ms, failure_ms, error, failures, reset in health:
            yield COUNT, q(_RECORD_HEALTH), (name, success_ms, failure_ms, error, failures, reset)

    @writes
    def make_due(self, sink: str, now_ms: int) -> Plan[int]:
        """Every pending delivery of ``sink`` becomes due at ``now_ms`` (its receiver is back). Returns how many
        were waiting."""
        return (yield COUNT, self.dialect.q(
            "UPDATE deliveries SET next_attempt_ms = ? WHERE sink = ? AND state = 'pending' AND next_attempt_ms > ?"
        ), (now_ms, sink, now_ms))

    @writes
    def set_sink_pause(self, sink: str, *, since_ms: int | None, next_probe_ms: int | None) -> Plan[None]:
        """The circuit breaker paused ``sink`` at ``since_ms`` and probes it next at ``next_probe_ms``; None
        clears the pause. Kept in meta (``sink_paused.<name>`` = ``"<since_ms>,<next_probe_ms>"``)."""
        key = PAUSE_PREFIX + sink
        if since_ms is None:
            yield COUNT, self.dialect.q("DELETE FROM meta WHERE key = ?"), (key,)
        else:
            value = f"{since_ms},{next_probe_ms if next_probe_ms is not None else ''}"
            yield MANY, self.dialect.q(_UPSERT_META), [(key, value)]

    def sink_pauses(self) -> Plan[dict[str, tuple[int, int | None]]]:
        """Paused sinks: name → (paused since ms, next probe ms or None)."""
        rows = yield ROWS, self.dialect.q(
            f"SELECT key, value FROM meta WHERE substr(key, 1, {len(PAUSE_PREFIX)}) = ?"), (PAUSE_PREFIX,)
        return parse_pauses(rows)

    @writes
    def dead_letter_sink(self, sink: str, *, now_ms: int, reason: str) -> Plan[int]:
        """Every pending delivery of ``sink`` becomes a dead letter (sink removed or disabled)."""
        return (yield COUNT, self.dialect.q(
            f"UPDATE deliveries SET state = 'dead', dead_ms = ?, last_error = ?{self.dialect.release_claim}"
            " WHERE sink = ? AND state = 'pending'"), (now_ms, cut(reason), sink))

    def pending_counts(self) -> Plan[dict[str, int]]:
        rows = yield ROWS, ("SELECT sink, COUNT(*) FROM deliveries WHERE state = 'pending'"
                            " GROUP BY sink ORDER BY sink"), ()
        return {name: int(n) for name, n in rows}

    def oldest_pending_ms(self) -> Plan[int | None]:
        ((value,),) = yield ROWS, "SELECT MIN(created_ms) FROM deliveries WHERE state = 'pending'", ()
        return None if value is None else int(value)

    def list_deliveries(self, *, failed: bool, limit: int = 100, sink: str | None = None) -> Plan[list[DeliveryRow]]:
        """Pending deliveries (next due first) or, with ``failed``, dead letters (most recent first)."""
        order = "d.dead_ms DESC, d.id DESC" if failed else "d.next_attempt_ms, d.id"
        sink_clause = "" if sink is None else " AND d.sink = ?"
        params: list[Any] = [DEAD if failed else PENDING] + ([] if sink is None else [sink]) + [limit]
        rows = yield ROWS, self.dialect.q(
            "SELECT d.id, d.event_id, e.type, e.run_id, d.sink, d.state, d.attempts, d.created_ms,"
            " d.next_attempt_ms, d.last_error, d.last_status, d.last_attempt_ms, d.delivered_ms, d.dead_ms"
            " FROM deliveries d JOIN events e ON e.id = d.event_id"
            f" WHERE d.state = ?{sink_clause} ORDER BY {order} LIMIT ?"), params
        return [DeliveryRow(*row) for row in rows]

    @writes
    def replay(self, event_ids: Sequence[str], *, now_ms: int, sink: str | None = None) -> Plan[int]:
        """Re-queue every dead or delivered delivery of ``event_ids`` (optionally of one sink)."""
        if isinstance(event_ids, str):
            raise TypeError("event_ids must be a sequence of ids, not a string")
        where = f"{self.dialect.is_in('event_id')} AND state IN ('dead', 'delivered')"
        params: list[Any] = [self.dialect.listed(list(dict.fromkeys(event_ids)))]
        if sink is not None:
            where += " AND sink = ?"
            params.append(sink)
        return self._requeue(where, params, now_ms)

    @writes
    def replay_failed(self, *, now_ms: int, sink: str | None = None) -> Plan[int]:
        """Re-queue every dead letter (optionally of one sink)."""
        where, params = "state = 'dead'", []
        if sink is not None:
            where += " AND sink = ?"
            params.append(sink)
        return self._requeue(where, params, now_ms)

    def _requeue(self, where: str, params: list[Any], now_ms: int) -> Plan[int]:
        """Matching deliveries → pending now, attempts 0, unclaimed; their sinks re-enabled."""
        q = self.dialect.q
        rows = yield ROWS, q(f"SELECT DISTINCT sink FROM deliveries WHERE {where}"), params
        sinks = [row[0] for row in rows]
        count = yield COUNT, q(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_ms = ?, delivered_ms = NULL,"
            f" dead_ms = NULL, last_error = NULL, last_status = NULL{self.dialect.release_claim} WHERE {where}"
        ), [now_ms, *params]
        if sinks:
            yield COUNT, q("UPDATE sinks SET disabled_reason = NULL, disabled_ms = NULL WHERE "
                           + self.dialect.is_in("name")), (self.dialect.listed(sinks),)
        return int(count)

    # ---------------------------------------------------------------------------------- sink state

    @writes
    def set_sink_state(self, sink: str, *, disabled_reason: str | None, now_ms: int) -> Plan[None]:
        """Disable (reason given) or re-enable (None) a sink."""
        yield COUNT, self.dialect.q(
            "INSERT INTO sinks(name, disabled_reason, disabled_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET disabled_reason = excluded.disabled_reason,"
            " disabled_ms = excluded.disabled_ms"
        ), (sink, cut(disabled_reason), None if disabled_reason is None else now_ms)

    def sink_states(self) -> Plan[dict[str, SinkState]]:
        rows = yield ROWS, _SINK_STATES, ()
        return {row[0]: SinkState(*row) for row in rows}

    # -------------------------------------------------------------------------------------- events

    def get_event(self, event_id: str) -> Plan[Event | None]:
        rows = yield ROWS, self.dialect.q("SELECT body FROM events WHERE id = ?"), (event_id,)
        return Event.from_dict(json.loads(bytes(rows[0][0]))) if rows else None

    def events_exist(self, ids: Sequence[str]) -> Plan[set[str]]:
        unique = list(dict.fromkeys(ids))
        if not unique:
            return set()
        rows = yield ROWS, self.dialect.q("SELECT id FROM events WHERE " + self.dialect.is_in("id")), (
            self.dialect.listed(unique),)
        return {row[0] for row in rows}

    def list_events(
        self, *, after_seq: int = 0, since_ms: int | None = None, types: Sequence[str] = (), limit: int | None = None
    ) -> Plan[list[tuple[int, Event]]]:
        """Stored events in the order they were stored (oldest first), each with its sequence number.

        ``after_seq``: only events stored after the one with that number (``--follow`` passes the last one it
        printed); ``since_ms``: created at or after; ``types``: only these types; ``limit``: the newest
        ``limit`` of those, still oldest first.
        """
        seq = self.dialect.event_seq
        where: list[str] = [f"{seq} > ?"]
        params: list[Any] = [after_seq]
        if since_ms is not None:
            where.append("created_ms >= ?")
            params.append(since_ms)
        if types:
            where.append(self.dialect.is_in("type"))
            params.append(self.dialect.listed(list(types)))
        sql = f"SELECT {seq}, body FROM events WHERE {' AND '.join(where)} ORDER BY {seq}"
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT ?) newest ORDER BY {seq}"
            params.append(max(0, limit))
        rows = yield ROWS, self.dialect.q(sql), params
        return [(int(n), Event.from_dict(json.loads(bytes(body)))) for n, body in rows]

    def failure_counts(self, *, since_ms: int) -> Plan[dict[str | None, int]]:
        """``error_code`` (None when the API gave none) → ``run.failed`` events created since ``since_ms``."""
        rows = yield ROWS, self.dialect.q(
            f"SELECT {self.dialect.error_code}, COUNT(*) FROM events WHERE type = 'run.failed' AND created_ms >= ?"
            " GROUP BY 1 ORDER BY 2 DESC, 1"), (since_ms,)
        return {(None if code is None else str(code)): int(n) for code, n in rows}

    def delivery_counts(self) -> Plan[dict[str, dict[str, int]]]:
        """sink → its ``pending`` deliveries (the outbox) and ``dead`` letters. Delivered history is not counted,
        so the cost follows the outbox, not the history (the status page asks often)."""
        counts: dict[str, dict[str, int]] = {}
        rows = yield ROWS, (f"SELECT sink, state, COUNT(*) FROM {self.dialect.counted_deliveries}"
                            " WHERE state IN ('pending', 'dead') GROUP BY sink, state ORDER BY sink"), ()
        for sink, state, n in rows:
            counts.setdefault(sink, {PENDING: 0, DEAD: 0})[state] = int(n)
        return counts

    # ---------------------------------------------------------------------------- status / upkeep

    def summary(self) -> Plan[dict[str, Any]]:
        """Plain data for ``flora-watcher status`` (see the README for the shape)."""
        rows = yield ROWS, "SELECT status, COUNT(*) FROM tracked GROUP BY status ORDER BY status", ()
        by_status = {status: int(n) for status, n in rows}
        ((active,),) = yield ROWS, self.dialect.q("SELECT COUNT(*) FROM tracked WHERE terminal = ?"), (
            self.dialect.flag(False),)
        totals = {PENDING: 0, DELIVERED: 0, DEAD: 0}
        sinks: dict[str, dict[str, Any]] = {}
        rows = yield ROWS, "SELECT sink, state, COUNT(*), MIN(created_ms) FROM deliveries GROUP BY sink, state", ()
        for name, state, count, oldest in rows:
            totals[state] += int(count)
            entry = sinks.setdefault(name, empty_sink_summary())
            entry[state] = int(count)
            if state == PENDING:
                entry["oldest_pending_ms"] = int(oldest)
        for name, health in (yield from self.sink_states()).items():
            sinks.setdefault(name, empty_sink_summary()).update(
                disabled_reason=health.disabled_reason,
                disabled_ms=health.disabled_ms,
                last_success_ms=health.last_success_ms,
                last_failure_ms=health.last_failure_ms,
                last_error=health.last_error,
                consecutive_failures=health.consecutive_failures,
            )
        meta = yield from self.all_meta()
        for name, (since, probe) in parse_pauses(meta.items()).items():
            sinks.setdefault(name, empty_sink_summary()).update(paused_since_ms=since, next_probe_ms=probe)
        ((events,),) = yield ROWS, "SELECT COUNT(*) FROM events", ()
        ((size,),) = yield ROWS, self.dialect.file_bytes, ()
        oldest_pending = yield from self.oldest_pending_ms()
        total = sum(by_status.values())
        return {
            "path": self.path,
            "schema_version": self.schema_version,
            "file_bytes": int(size),
            "tracked": {"total": total, "active": int(active), "terminal": total - int(active), "by_status": by_status},
            "events": int(events),
            "deliveries": {**totals, "oldest_pending_ms": oldest_pending},
            "sinks": dict(sorted(sinks.items())),
            "meta": meta,
        }

    @writes
    def prune(self, *, now_ms: int, keep_done_ms: int, keep_dead_ms: int | None = None) -> Plan[int]:
        """Delete delivered deliveries older than ``keep_done_ms`` (by delivery time), dead letters older than
        ``keep_dead_ms`` when given (kept forever by default), then events older than ``keep_done_ms`` that
        no delivery refers to any more. Returns the number of rows deleted (deliveries + events)."""
        q = self.dialect.q
        cutoff = now_ms - keep_done_ms
        deleted = yield COUNT, q("DELETE FROM deliveries WHERE state = 'delivered' AND delivered_ms < ?"), (cutoff,)
        if keep_dead_ms is not None:
            deleted += yield COUNT, q("DELETE FROM deliveries WHERE state = 'dead' AND dead_ms < ?"), (
                now_ms - keep_dead_ms,)
        deleted += yield COUNT, q(
            "DELETE FROM events WHERE created_ms < ?"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)"
        ), (cutoff,)
        # Recorded callbacks: their ids dedupe FLORA's retries (minutes) and replays; a signature older than
        # [ingress] tolerance is refused anyway.
        deleted += yield COUNT, q("DELETE FROM callbacks WHERE received_ms < ?"), (cutoff,)
        return int(deleted)

    # ---------------------------------------------------------------------------- FLORA callbacks

    @writes
    def record_callbacks(self, callbacks: Sequence[RecordedCallback]) -> Plan[list[bool]]:
        """Record verified deliveries, durably, in one transaction (the ingress groups the requests that come
        together): for each, False when its id was recorded before (a replay)."""
        sql = self.dialect.q(
            "INSERT INTO callbacks(delivery_id, run_id, type, run_type, workspace_id, received_ms)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING")
        new = []
        for c in callbacks:
            count = yield COUNT, sql, (c.delivery_id, c.run_id, c.type, c.run_type, c.workspace_id, c.received_ms)
            new.append(count == 1)
        return new

    def pending_callbacks(self, *, limit: int = 256, exclude: Collection[str] = ()) -> Plan[list[RecordedCallback]]:
        """Recorded deliveries not done yet, oldest first, leaving out ``exclude`` (those in hand)."""
        held = list(exclude)
        skip = f" AND NOT ({self.dialect.is_in('delivery_id')})" if held else ""
        rows = yield ROWS, self.dialect.q(
            "SELECT delivery_id, run_id, type, run_type, workspace_id, received_ms FROM callbacks"
            f" WHERE outcome IS NULL{skip} ORDER BY received_ms, delivery_id LIMIT ?"
        ), ([self.dialect.listed(held)] if held else []) + [limit]
        return [RecordedCallback(*row) for row in rows]

    @writes
    def finish_callbacks(self, outcomes: Sequence[tuple[str, str]], *, now_ms: int) -> Plan[None]:
        """Mark recorded deliveries done with their outcome (``confirm.Outcome`` values)."""
        yield MANY, self.dialect.q("UPDATE callbacks SET outcome = ?, done_ms = ? WHERE delivery_id = ?"), [
            (outcome, now_ms, delivery_id) for delivery_id, outcome in outcomes]

    def callback_counts(self, *, since_ms: int) -> Plan[dict[str, Any]]:
        """Deliveries recorded since ``since_ms`` by outcome (``pending``: not done yet), and the last one's time."""
        rows = yield ROWS, self.dialect.q(
            "SELECT COALESCE(outcome, 'pending'), COUNT(*) FROM callbacks WHERE received_ms >= ? GROUP BY 1"
        ), (since_ms,)
        ((last,),) = yield ROWS, "SELECT MAX(received_ms) FROM callbacks", ()
        return {"by_outcome": dict(sorted((k, int(n)) for k, n in rows)),
                "last_received_ms": None if last is None else int(last)}
