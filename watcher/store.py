"""The state store: SQLite (standard library), off the event loop. Shell: all SQL lives here.

``Store.open(path)`` opens (creates 0600, migrates) the file with WAL and ``synchronous=FULL``, so a commit
that returned survives a crash; every sqlite3 error becomes an ``errors.StoreError`` naming the file and the
reason. One opener per file and process: closing *any* descriptor of a file drops every POSIX lock the process
holds on it (SQLite "How To Corrupt" §2.2), so while a ``Store`` holds a file, ``Store.open`` refuses to open it
again in the same process, and nothing else in the process may open it (``held_here``).

A ``Store`` is used from one thread at a time: ``AsyncStore`` runs each call on one dedicated worker thread and
is what the engine awaits (it implements ``store_api.StateStore``, where the contract of every method is
written down). ``Store.snapshot(path)`` is an in-memory copy for ``--dry-run``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import stat
import threading
import weakref
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog

from watcher.errors import StoreError, StoreUnavailable
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
)

log = structlog.get_logger("watcher.store")

STORE_FILENAME = "state.sqlite3"
APPLICATION_ID = 0x466C5761  # "FlWa": marks the file as a flora-watcher state store (PRAGMA application_id)
DEFAULT_BUSY_TIMEOUT_MS = 5_000
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024  # the WAL file is truncated back to this after a checkpoint
MAX_ERROR_CHARS = 1_000  # stored error texts are cut to this length
_IN_CHUNK = 500  # ids per "IN (...)" query, well below SQLite's variable limit
_MEMORY = ":memory:"

# Each entry migrates the schema from version i to i + 1; SCHEMA_VERSION = how many there are. Never edit a
# released entry: append a new one. Statements are split on ";" at statement boundaries.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE tracked (
        run_id         TEXT PRIMARY KEY,
        status         TEXT NOT NULL,
        terminal       INTEGER NOT NULL,
        created_at     INTEGER,
        last_change_ms INTEGER NOT NULL,
        next_poll_ms   INTEGER,
        data           TEXT NOT NULL
    );
    CREATE INDEX tracked_by_status ON tracked(status);
    CREATE INDEX tracked_by_age ON tracked(terminal, last_change_ms);
    CREATE TABLE events (
        id         TEXT PRIMARY KEY,
        run_id     TEXT NOT NULL,
        type       TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        body       BLOB NOT NULL
    );
    CREATE INDEX events_by_run ON events(run_id);
    CREATE INDEX events_by_age ON events(created_ms);
    CREATE TABLE deliveries (
        id              INTEGER PRIMARY KEY,
        event_id        TEXT NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        sink            TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        created_ms      INTEGER NOT NULL,
        next_attempt_ms INTEGER NOT NULL,
        last_attempt_ms INTEGER,
        delivered_ms    INTEGER,
        dead_ms         INTEGER,
        last_error      TEXT,
        last_status     INTEGER,
        UNIQUE (event_id, sink)
    );
    CREATE INDEX deliveries_due ON deliveries(sink, state, next_attempt_ms);
    CREATE INDEX deliveries_by_state ON deliveries(state, created_ms);
    CREATE TABLE sinks (
        name                 TEXT PRIMARY KEY,
        disabled_reason      TEXT,
        disabled_ms          INTEGER,
        last_success_ms      INTEGER,
        last_failure_ms      INTEGER,
        last_error           TEXT,
        consecutive_failures INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 2: FLORA callbacks the ingress recorded: each delivery id once; outcome NULL until it is confirmed.
    """
    CREATE TABLE callbacks (
        delivery_id  TEXT PRIMARY KEY,
        run_id       TEXT NOT NULL,
        type         TEXT NOT NULL,
        run_type     TEXT,
        workspace_id TEXT,
        received_ms  INTEGER NOT NULL,
        outcome      TEXT,
        done_ms      INTEGER
    );
    CREATE INDEX callbacks_pending ON callbacks(received_ms) WHERE outcome IS NULL;
    CREATE INDEX callbacks_by_age ON callbacks(received_ms);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

PAUSE_PREFIX = "sink_paused."  # meta keys of paused sinks (set_sink_pause)

P = ParamSpec("P")
R = TypeVar("R")


# ------------------------------------------------------------------------------- one opener per file

# The state files a Store of this process holds open, by (device, inode). Closing any descriptor of a file drops
# every POSIX lock the process holds on it (SQLite "How To Corrupt" §2.2): a second connection, or a check that
# merely opens and closes the file, would leave the first connection unlocked, and the next process to close
# its connection would take itself for the last one, checkpoint and delete the WAL under the first.
_HELD: set[tuple[int, int]] = set()
_HELD_LOCK = threading.Lock()
_SIDECARS = ("-wal", "-shm", "-journal")


def _file_id(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def held_here(path: str | os.PathLike[str]) -> bool:
    """True when a ``Store`` of this process holds the file at ``path`` (the database file itself; its -wal and
    -shm sidecars count as held with it). Whoever would open such a file must not: use the store instead."""
    name = os.fspath(path)
    for candidate in (name, *(name.removesuffix(s) for s in _SIDECARS if name.endswith(s))):
        key = _file_id(candidate)
        if key is not None:
            with _HELD_LOCK:
                if key in _HELD:
                    return True
    return False


def _hold(name: str) -> tuple[int, int] | None:
    """Register ``name`` as held by a Store of this process; StoreError when one already holds it."""
    key = _file_id(name)
    if key is None:
        return None
    with _HELD_LOCK:
        if key in _HELD:
            raise StoreError(
                f"state store {name} is already open in this process; a second connection would drop the first "
                "one's locks when it closes (SQLite's \"how to corrupt\" §2.2): use the open store"
            )
        _HELD.add(key)
    return key


def _release(key: tuple[int, int] | None) -> None:
    if key is not None:
        with _HELD_LOCK:
            _HELD.discard(key)


# ------------------------------------------------------------------------------------ pure helpers


def store_path(state_dir: str | os.PathLike[str]) -> Path:
    """The state store's file inside a state directory."""
    return Path(state_dir) / STORE_FILENAME


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


def _tracked_row(t: TrackedRun) -> tuple[Any, ...]:
    return (
        t.run_id,
        t.status,
        int(t.terminal),
        t.run.created_at,
        t.last_change_ms,
        t.next_poll_ms,
        encode_tracked(t),
    )


def split_statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (semicolons inside literals or triggers are kept)."""
    statements: list[str] = []
    current = ""
    pieces = script.split(";")
    for index, piece in enumerate(pieces):
        current += piece if index == len(pieces) - 1 else piece + ";"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    leftover = [line for line in current.splitlines() if line.strip() and not line.strip().startswith("--")]
    if leftover:
        raise ValueError(f"incomplete SQL statement: {current.strip()[:60]!r}")
    return statements


def explain(exc: BaseException) -> str:
    """A one-line reason an operator can act on, from an sqlite3/OS error."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if "file is not a database" in low or "malformed" in low:
        return f"the file is corrupt or not a SQLite database ({text}); move it aside or restore a backup"
    if "readonly" in low or "read-only" in low:
        return f"it is read-only ({text}); the watcher needs write access to the file and its directory"
    if "unable to open" in low:
        return (
            f"it cannot be opened ({text}); check the path and the permissions of the file and its directory"
        )
    if "locked" in low or "busy" in low:
        return f"it stayed locked by another process beyond the busy timeout ({text})"
    if "full" in low:
        return f"the disk is full ({text})"
    if "disk i/o" in low:
        return f"disk I/O error ({text})"
    if "closed" in low:
        return "the store is closed"
    return text


# SQLite result codes a wait can cure (``sqlite3.Error.sqlite_errorname``; extended codes start with these):
# another process holding the lock beyond the busy timeout, a full disk, an I/O error. The rest (corrupt, not a
# database, read-only, cannot open, an SQL error) stays wrong however long the daemon waits.
TRANSIENT_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_NOMEM", "SQLITE_PROTOCOL")


def store_error(exc: sqlite3.Error, message: str) -> StoreError:
    """``message`` as the StoreError ``exc`` calls for: StoreUnavailable (an outage to wait out) for a transient
    SQLite code, StoreError (stop) for everything else."""
    code = getattr(exc, "sqlite_errorname", None) or ""
    return (StoreUnavailable if code.startswith(TRANSIENT_CODES) else StoreError)(message)


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:MAX_ERROR_CHARS]


_Rows = list[tuple[Any, ...]]


def outcome_rows(outcomes: Sequence[Outcome]) -> tuple[_Rows, _Rows, _Rows]:
    """The parameters of ``record_outcomes``' three updates (delivered, retry, dead), shared by both back ends:
    ``(attempts added, now, delivered_ms, status, id)``, ``(attempts added, now, next_attempt_ms, error, status,
    id)`` and ``(attempts added, dead_ms, attempted, last_attempt_ms, error, status, id)``."""
    delivered: list[tuple[Any, ...]] = []
    retry: list[tuple[Any, ...]] = []
    dead: list[tuple[Any, ...]] = []
    for o in outcomes:
        if o.state == DELIVERED:
            delivered.append((int(o.attempted), o.now_ms, o.now_ms, o.status, o.delivery_id))
        elif o.state == RETRY:
            if o.next_attempt_ms is None:
                raise ValueError("a retry outcome needs next_attempt_ms")
            retry.append((int(o.attempted), o.now_ms, o.next_attempt_ms, _cut(o.error), o.status, o.delivery_id))
        elif o.state == DEAD:
            dead.append((int(o.attempted), o.now_ms, bool(o.attempted), o.now_ms, _cut(o.error), o.status,
                         o.delivery_id))
        else:
            raise ValueError(f"unknown outcome state {o.state!r}")
    return delivered, retry, dead


def _sink_names(sinks: Sequence[str]) -> list[str]:
    if isinstance(sinks, str):
        raise TypeError(f"sink names must be a sequence of strings, not the string {sinks!r}")
    for name in sinks:
        if not isinstance(name, str) or not name:
            raise TypeError(f"sink name must be a non-empty string, got {name!r}")
    return list(dict.fromkeys(sinks))


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


# ----------------------------------------------------------------------------------------- the store


def _translated(fn: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """Turn every sqlite3 error raised by a Store method into a StoreError naming the file."""

    @functools.wraps(fn)
    def wrapper(self: Store, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise store_error(exc, f"state store {self.path}: {fn.__name__} failed: {explain(exc)}") from exc

    return wrapper


class Store:
    """The state store on one SQLite connection. Open with ``Store.open(path)``."""

    def __init__(self, conn: sqlite3.Connection, path: str, *, _held: tuple[int, int] | None = None) -> None:
        self._conn = conn
        self.path = path
        self._closed = False
        # The file stays registered as held until close(), or until this Store is collected unclosed (its
        # connection is closed then too, and the file's inode may be reused by a new file).
        self._release = weakref.finalize(self, _release, _held)

    # ---------------------------------------------------------------------------------- lifecycle

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> Store:
        """Open (create, migrate) the store at ``path``. ``":memory:"`` gives a throwaway store for tests."""
        name, created, held = os.fspath(path), False, None
        if name != _MEMORY:
            file = Path(name).expanduser()
            name, created = os.fspath(file), _prepare_file(file, create=create)
            held = _hold(name)  # refused before sqlite3 opens the file a second time
        try:
            conn = sqlite3.connect(
                name,
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,  # autocommit; transactions are explicit BEGIN IMMEDIATE ... COMMIT
                check_same_thread=False,  # AsyncStore may open on one thread and use it on its worker
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            _release(held)
            raise store_error(exc, f"state store {name}: cannot open: {explain(exc)}") from exc
        try:
            _configure(conn, name, busy_timeout_ms)
            _migrate(conn, name)
            if created:
                _restrict_sidecars(name)
        except BaseException:
            conn.close()
            _release(held)
            raise
        return cls(conn, name, _held=held)

    @classmethod
    def snapshot(cls, path: str | os.PathLike[str]) -> Store:
        """An in-memory copy of the store at ``path`` (``--dry-run``: decide as the daemon would, write nothing
        back). A missing file gives an empty store, as on a first start."""
        file = Path(path).expanduser()
        if not file.exists():
            return cls.open(_MEMORY)
        source = cls.open(file, create=False)
        try:
            target = sqlite3.connect(_MEMORY, isolation_level=None, check_same_thread=False)
            try:
                source._conn.backup(target)
            except sqlite3.Error as exc:
                target.close()
                raise store_error(exc, f"state store {source.path}: cannot copy: {explain(exc)}") from exc
        finally:
            source._conn.close()  # not close(): PRAGMA optimize would write to the file
            source._closed = True
            source._release()
        return cls(target, f"{file} (in-memory copy)")

    @property
    def schema_version(self) -> int:
        return SCHEMA_VERSION

    @_translated
    def close(self) -> None:
        """Close the connection. Safe to call twice.

        Runs ``PRAGMA optimize`` first, as SQLite advises, but only when the file is free right now: it may
        write (statistics), and a CLI command closing its store while the daemon writes must neither wait
        out the busy timeout nor fail for it (``deliveries`` once did: "close failed … database is locked")."""
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._conn.execute("PRAGMA optimize")
        except sqlite3.Error as exc:  # locked, read-only, full: an optimisation skipped, nothing lost
            log.debug("store.optimize_skipped", path=self.path, error=explain(exc))
        finally:
            try:
                self._conn.close()
            finally:
                self._release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; ROLLBACK on any exception (the exception propagates)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self._conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # --------------------------------------------------------------------------------------- meta

    @_translated
    def get_meta(self, key: str) -> str | None:
        return self._scalar("SELECT value FROM meta WHERE key = ?", (key,))

    @_translated
    def all_meta(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall())

    @_translated
    def set_meta(self, items: dict[str, str]) -> None:
        with self._transaction() as conn:
            _upsert_meta(conn, items)

    @_translated
    def ensure_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless the key exists; return what is stored."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, _meta_value(key, value))
            )
            return conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    # ------------------------------------------------------------------------------- tracked runs

    @_translated
    def load_tracked(self) -> dict[str, TrackedRun]:
        rows = self._conn.execute("SELECT run_id, data FROM tracked").fetchall()
        tracked: dict[str, TrackedRun] = {}
        for run_id, data in rows:
            try:
                tracked[run_id] = decode_tracked(data)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StoreError(
                    f"state store {self.path}: tracked run {run_id} is unreadable ({exc!r})"
                ) from exc
        return tracked

    @_translated
    def commit_sweep(
        self,
        *,
        upserts: Iterable[TrackedRun],
        deletes: Iterable[str],
        events: Iterable[tuple[Event, Sequence[str]]],
        meta: dict[str, str],
        now_ms: int,
    ) -> list[str]:
        """One sweep's writes in one transaction; returns the ids of the events inserted by this call."""
        if isinstance(deletes, str):
            raise TypeError("deletes must be an iterable of run ids, not a string")
        with self._transaction() as conn:
            conn.executemany("DELETE FROM tracked WHERE run_id = ?", ((run_id,) for run_id in deletes))
            conn.executemany(
                "INSERT INTO tracked(run_id, status, terminal, created_at, last_change_ms, next_poll_ms,"
                " data) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(run_id) DO UPDATE SET status = excluded.status, terminal = excluded.terminal,"
                " created_at = excluded.created_at, last_change_ms = excluded.last_change_ms,"
                " next_poll_ms = excluded.next_poll_ms, data = excluded.data",
                (_tracked_row(t) for t in upserts),
            )
            new_ids: list[str] = []
            deliveries: list[tuple[str, str, int, int]] = []
            for event, sinks in events:
                names = _sink_names(sinks)
                cursor = conn.execute(
                    "INSERT INTO events(id, run_id, type, created_ms, body) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT(id) DO NOTHING",  # not OR IGNORE: that would also skip NOT NULL failures
                    (event.id, event.run_id, event.type, event.created_at, encode_event(event)),
                )
                if cursor.rowcount == 1:
                    new_ids.append(event.id)
                    deliveries.extend((event.id, name, now_ms, now_ms) for name in names)
            conn.executemany(
                "INSERT INTO deliveries(event_id, sink, state, attempts, created_ms, next_attempt_ms)"
                " VALUES (?, ?, 'pending', 0, ?, ?)",
                deliveries,
            )
            _upsert_meta(conn, meta)
        return new_ids

    # ------------------------------------------------------------------------------------- outbox

    @_translated
    def due_deliveries(self, sink: str, now_ms: int, limit: int = 100, after: tuple[int, int] | None = None,
                       exclude: Collection[int] = ()) -> list[Delivery]:
        """Pending deliveries of ``sink`` due at ``now_ms``: earliest next_attempt_ms first, then by id.

        A delivery whose run has an earlier pending delivery to the same sink is left out (until that one is
        delivered or dead), so the events of one run reach a sink in order, also while an earlier one is in
        flight or waiting for a retry. ``after`` = (next_attempt_ms, id) of the last delivery the caller already
        holds: only later ones (in that order) are returned, so a caller holding many need not read them again.
        ``exclude``: ids of deliveries the caller holds (in flight or queued); they are not read again, and
        ``limit`` counts only the others. (A hint: the PostgreSQL store returns its own claims again, renewing
        them, and counts them in ``limit``; a caller skips what it holds either way.)"""
        held = [] if not exclude else [json.dumps(list(exclude))]
        rows = self._conn.execute(
            _DELIVERY_COLUMNS
            + " WHERE d.sink = ? AND d.state = 'pending' AND d.next_attempt_ms <= ?"
            + ("" if not held else " AND d.id NOT IN (SELECT value FROM json_each(?))")
            # CROSS JOIN: look the run's events up first (events_by_run), then their deliveries to this sink
            + " AND NOT EXISTS (SELECT 1 FROM events e2 CROSS JOIN deliveries d2"
            " WHERE e2.run_id = e.run_id AND d2.event_id = e2.id AND d2.sink = d.sink AND d2.state = 'pending'"
            " AND d2.id < d.id)"
            + ("" if after is None else " AND (d.next_attempt_ms, d.id) > (?, ?)")
            + " ORDER BY d.next_attempt_ms, d.id LIMIT ?",
            (sink, now_ms, *held, *(after or ()), limit),
        ).fetchall()
        return [_delivery(row) for row in rows]

    @_translated
    def oldest_pending(self, sink: str) -> Delivery | None:
        """The pending delivery of ``sink`` that was queued first, due or not (the circuit breaker's probe)."""
        row = self._conn.execute(
            _DELIVERY_COLUMNS + " WHERE d.sink = ? AND d.state = 'pending' ORDER BY d.id LIMIT 1", (sink,)
        ).fetchone()
        return None if row is None else _delivery(row)

    @_translated
    def next_due_ms(self, sink: str, after_ms: int | None = None) -> int | None:
        """The earliest next_attempt_ms of a pending delivery of ``sink`` (later than ``after_ms`` if given)."""
        if after_ms is None:
            return self._scalar(
                "SELECT MIN(next_attempt_ms) FROM deliveries WHERE sink = ? AND state = 'pending'", (sink,)
            )
        return self._scalar(
            "SELECT MIN(next_attempt_ms) FROM deliveries WHERE sink = ? AND state = 'pending'"
            " AND next_attempt_ms > ?",
            (sink, after_ms),
        )

    @_translated
    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Record many deliveries' outcomes, and their sinks' health, in one transaction (one fsync): the
        dispatcher's group commit (what each outcome means: ``store_api.Outcome``)."""
        if not outcomes:
            return
        delivered, retry, dead = outcome_rows(outcomes)
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE deliveries SET state = 'delivered', attempts = attempts + ?, last_attempt_ms = ?,"
                " delivered_ms = ?, dead_ms = NULL, last_status = ?, last_error = NULL WHERE id = ?",
                delivered,
            )
            conn.executemany(
                "UPDATE deliveries SET attempts = attempts + ?, last_attempt_ms = ?, next_attempt_ms = ?,"
                " last_error = ?, last_status = ? WHERE id = ? AND state = 'pending'",
                retry,
            )
            conn.executemany(
                "UPDATE deliveries SET state = 'dead', attempts = attempts + ?, dead_ms = ?,"
                " last_attempt_ms = CASE WHEN ? THEN ? ELSE last_attempt_ms END,"
                " last_error = ?, last_status = COALESCE(?, last_status) WHERE id = ? AND state = 'pending'",
                dead,
            )
            for sink, health in _health_by_sink(outcomes).items():
                _record_health(conn, sink, **health)

    @_translated
    def make_due(self, sink: str, now_ms: int) -> int:
        """Every pending delivery of ``sink`` becomes due at ``now_ms`` (its receiver is back). Returns how many
        were waiting."""
        with self._transaction() as conn:
            return conn.execute(
                "UPDATE deliveries SET next_attempt_ms = ? WHERE sink = ? AND state = 'pending'"
                " AND next_attempt_ms > ?",
                (now_ms, sink, now_ms),
            ).rowcount

    @_translated
    def set_sink_pause(self, sink: str, *, since_ms: int | None, next_probe_ms: int | None) -> None:
        """The circuit breaker paused ``sink`` at ``since_ms`` and probes it next at ``next_probe_ms``; None
        clears the pause. Kept in meta (``sink_paused.<name>`` = ``"<since_ms>,<next_probe_ms>"``)."""
        key = PAUSE_PREFIX + sink
        with self._transaction() as conn:
            if since_ms is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                _upsert_meta(conn, {key: f"{since_ms},{next_probe_ms if next_probe_ms is not None else ''}"})

    @_translated
    def sink_pauses(self) -> dict[str, tuple[int, int | None]]:
        """Paused sinks: name → (paused since ms, next probe ms or None)."""
        return parse_pauses(self._conn.execute(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ?", (PAUSE_PREFIX, PAUSE_PREFIX + "\U0010ffff")
        ))

    @_translated
    def dead_letter_sink(self, sink: str, *, now_ms: int, reason: str) -> int:
        """Every pending delivery of ``sink`` becomes a dead letter (sink removed or disabled)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE deliveries SET state = 'dead', dead_ms = ?, last_error = ?"
                " WHERE sink = ? AND state = 'pending'",
                (now_ms, _cut(reason), sink),
            )
            return cursor.rowcount

    @_translated
    def pending_counts(self) -> dict[str, int]:
        return dict(
            self._conn.execute(
                "SELECT sink, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY sink ORDER BY sink"
            ).fetchall()
        )

    @_translated
    def oldest_pending_ms(self) -> int | None:
        return self._scalar("SELECT MIN(created_ms) FROM deliveries WHERE state = 'pending'")

    @_translated
    def list_deliveries(
        self, *, failed: bool, limit: int = 100, sink: str | None = None
    ) -> list[DeliveryRow]:
        """Pending deliveries (next due first) or, with ``failed``, dead letters (most recent first)."""
        order = "d.dead_ms DESC, d.id DESC" if failed else "d.next_attempt_ms, d.id"
        sink_clause = "" if sink is None else " AND d.sink = ?"
        params: list[Any] = [DEAD if failed else PENDING] + ([] if sink is None else [sink]) + [limit]
        rows = self._conn.execute(
            "SELECT d.id, d.event_id, e.type, e.run_id, d.sink, d.state, d.attempts, d.created_ms,"
            " d.next_attempt_ms, d.last_error, d.last_status, d.last_attempt_ms, d.delivered_ms, d.dead_ms"
            " FROM deliveries d JOIN events e ON e.id = d.event_id"
            f" WHERE d.state = ?{sink_clause} ORDER BY {order} LIMIT ?",
            params,
        ).fetchall()
        return [DeliveryRow(*row) for row in rows]

    @_translated
    def replay(self, event_ids: Sequence[str], *, now_ms: int, sink: str | None = None) -> int:
        """Re-queue every dead or delivered delivery of ``event_ids`` (optionally of one sink)."""
        if isinstance(event_ids, str):
            raise TypeError("event_ids must be a sequence of ids, not a string")
        ids = list(dict.fromkeys(event_ids))
        count = 0
        with self._transaction() as conn:
            for chunk in _chunks(ids):
                where = f"event_id IN ({_marks(len(chunk))}) AND state IN ('dead', 'delivered')"
                params: list[Any] = list(chunk)
                if sink is not None:
                    where += " AND sink = ?"
                    params.append(sink)
                count += _requeue(conn, where, params, now_ms)
        return count

    @_translated
    def replay_failed(self, *, now_ms: int, sink: str | None = None) -> int:
        """Re-queue every dead letter (optionally of one sink)."""
        where, params = "state = 'dead'", []
        if sink is not None:
            where += " AND sink = ?"
            params.append(sink)
        with self._transaction() as conn:
            return _requeue(conn, where, params, now_ms)

    # ---------------------------------------------------------------------------------- sink state

    @_translated
    def set_sink_state(self, sink: str, *, disabled_reason: str | None, now_ms: int) -> None:
        """Disable (reason given) or re-enable (None) a sink."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO sinks(name, disabled_reason, disabled_ms) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET disabled_reason = excluded.disabled_reason,"
                " disabled_ms = excluded.disabled_ms",
                (sink, _cut(disabled_reason), None if disabled_reason is None else now_ms),
            )

    @_translated
    def sink_states(self) -> dict[str, SinkState]:
        rows = self._conn.execute(
            "SELECT name, disabled_reason, disabled_ms, last_success_ms, last_failure_ms, last_error,"
            " consecutive_failures FROM sinks ORDER BY name"
        ).fetchall()
        return {row[0]: SinkState(*row) for row in rows}

    @_translated
    def get_event(self, event_id: str) -> Event | None:
        body = self._scalar("SELECT body FROM events WHERE id = ?", (event_id,))
        return None if body is None else Event.from_dict(json.loads(body))

    @_translated
    def events_exist(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(list(dict.fromkeys(ids))):
            rows = self._conn.execute(f"SELECT id FROM events WHERE id IN ({_marks(len(chunk))})", chunk)
            found.update(row[0] for row in rows)
        return found

    @_translated
    def list_events(
        self, *, after_seq: int = 0, since_ms: int | None = None, types: Sequence[str] = (), limit: int | None = None
    ) -> list[tuple[int, Event]]:
        """Stored events in the order they were stored (oldest first), each with its sequence number.

        ``after_seq``: only events stored after the one with that number (``--follow`` passes the last one it
        printed); ``since_ms``: created at or after; ``types``: only these types; ``limit``: the newest
        ``limit`` of those, still oldest first.
        """
        where: list[str] = ["rowid > ?"]
        params: list[Any] = [after_seq]
        if since_ms is not None:
            where.append("created_ms >= ?")
            params.append(since_ms)
        if types:
            where.append(f"type IN ({_marks(len(types))})")
            params.extend(types)
        sql = f"SELECT rowid, body FROM events WHERE {' AND '.join(where)} ORDER BY rowid"
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT ?) ORDER BY rowid"
            params.append(max(0, limit))
        rows = self._conn.execute(sql, params).fetchall()
        return [(seq, Event.from_dict(json.loads(body))) for seq, body in rows]

    @_translated
    def failure_counts(self, *, since_ms: int) -> dict[str | None, int]:
        """``error_code`` (None when the API gave none) → ``run.failed`` events created since ``since_ms``."""
        rows = self._conn.execute(
            "SELECT json_extract(CAST(body AS TEXT), '$.data.error_code'), COUNT(*) FROM events"
            " WHERE type = 'run.failed' AND created_ms >= ? GROUP BY 1 ORDER BY 2 DESC, 1",
            (since_ms,),
        ).fetchall()
        return {(None if code is None else str(code)): count for code, count in rows}

    @_translated
    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """sink → its ``pending`` deliveries (the outbox) and ``dead`` letters. Delivered history is not counted,
        so the cost follows the outbox, not the history (the status page asks often)."""
        counts: dict[str, dict[str, int]] = {}
        for sink, state, count in self._conn.execute(
            # The (sink, state, …) index covers this query; without ANALYZE statistics SQLite would pick the
            # state index and read every pending and dead row from the table instead (30x slower on a big outbox).
            "SELECT sink, state, COUNT(*) FROM deliveries INDEXED BY deliveries_due"
            " WHERE state IN ('pending', 'dead') GROUP BY sink, state ORDER BY sink"
        ):
            counts.setdefault(sink, {PENDING: 0, DEAD: 0})[state] = count
        return counts

    # ---------------------------------------------------------------------------- status / upkeep

    @_translated
    def summary(self) -> dict[str, Any]:
        """Plain data for ``flora-watcher status`` (see the README for the shape)."""
        conn = self._conn
        by_status = dict(conn.execute("SELECT status, COUNT(*) FROM tracked GROUP BY status ORDER BY status"))
        active = self._scalar("SELECT COUNT(*) FROM tracked WHERE terminal = 0")
        totals = {PENDING: 0, DELIVERED: 0, DEAD: 0}
        sinks: dict[str, dict[str, Any]] = {}
        for name, state, count, oldest in conn.execute(
            "SELECT sink, state, COUNT(*), MIN(created_ms) FROM deliveries GROUP BY sink, state"
        ):
            totals[state] += count
            entry = sinks.setdefault(name, _empty_sink_summary())
            entry[state] = count
            if state == PENDING:
                entry["oldest_pending_ms"] = oldest
        for name, health in self.sink_states().items():
            entry = sinks.setdefault(name, _empty_sink_summary())
            entry.update(
                disabled_reason=health.disabled_reason,
                disabled_ms=health.disabled_ms,
                last_success_ms=health.last_success_ms,
                last_failure_ms=health.last_failure_ms,
                last_error=health.last_error,
                consecutive_failures=health.consecutive_failures,
            )
        for name, (since, probe) in self.sink_pauses().items():
            entry = sinks.setdefault(name, _empty_sink_summary())
            entry.update(paused_since_ms=since, next_probe_ms=probe)
        page_size = self._scalar("PRAGMA page_size")
        page_count = self._scalar("PRAGMA page_count")
        return {
            "path": self.path,
            "schema_version": SCHEMA_VERSION,
            "file_bytes": page_size * page_count,
            "tracked": {
                "total": sum(by_status.values()),
                "active": active,
                "terminal": sum(by_status.values()) - active,
                "by_status": by_status,
            },
            "events": self._scalar("SELECT COUNT(*) FROM events"),
            "deliveries": {**totals, "oldest_pending_ms": self.oldest_pending_ms()},
            "sinks": dict(sorted(sinks.items())),
            "meta": self.all_meta(),
        }

    @_translated
    def prune(self, *, now_ms: int, keep_done_ms: int, keep_dead_ms: int | None = None) -> int:
        """Delete delivered deliveries older than ``keep_done_ms`` (by delivery time), dead letters older than
        ``keep_dead_ms`` when given (kept forever by default), then events older than ``keep_done_ms`` that
        no delivery refers to any more. Returns the number of rows deleted (deliveries + events)."""
        cutoff = now_ms - keep_done_ms
        with self._transaction() as conn:
            deleted = conn.execute(
                "DELETE FROM deliveries WHERE state = 'delivered' AND delivered_ms < ?", (cutoff,)
            ).rowcount
            if keep_dead_ms is not None:
                deleted += conn.execute(
                    "DELETE FROM deliveries WHERE state = 'dead' AND dead_ms < ?", (now_ms - keep_dead_ms,)
                ).rowcount
            deleted += conn.execute(
                "DELETE FROM events WHERE created_ms < ?"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
                (cutoff,),
            ).rowcount
            # Recorded callbacks: their ids dedupe FLORA's retries (minutes) and replays; a signature older than
            # [ingress] tolerance is refused anyway.
            deleted += conn.execute("DELETE FROM callbacks WHERE received_ms < ?", (cutoff,)).rowcount
        return deleted

    # ---------------------------------------------------------------------------- FLORA callbacks

    @_translated
    def record_callback(self, callback: RecordedCallback) -> bool:
        """Record a verified delivery, durably, once: False when its id was recorded before (a replay)."""
        c = callback
        with self._transaction() as conn:
            return conn.execute(
                "INSERT OR IGNORE INTO callbacks(delivery_id, run_id, type, run_type, workspace_id, received_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (c.delivery_id, c.run_id, c.type, c.run_type, c.workspace_id, c.received_ms),
            ).rowcount == 1

    @_translated
    def pending_callbacks(self, *, limit: int = 256, exclude: Collection[str] = ()) -> list[RecordedCallback]:
        """Recorded deliveries not done yet, oldest first, leaving out ``exclude`` (those in hand)."""
        skip = set(exclude)
        rows = self._conn.execute(
            "SELECT delivery_id, run_id, type, run_type, workspace_id, received_ms FROM callbacks"
            " WHERE outcome IS NULL ORDER BY received_ms, delivery_id LIMIT ?", (limit + len(skip),),
        ).fetchall()
        return [RecordedCallback(*row) for row in rows if row[0] not in skip][:limit]

    @_translated
    def finish_callbacks(self, outcomes: Sequence[tuple[str, str]], *, now_ms: int) -> None:
        """Mark recorded deliveries done with their outcome (``confirm.Outcome`` values)."""
        with self._transaction() as conn:
            conn.executemany("UPDATE callbacks SET outcome = ?, done_ms = ? WHERE delivery_id = ?",
                             [(outcome, now_ms, delivery_id) for delivery_id, outcome in outcomes])

    @_translated
    def callback_counts(self, *, since_ms: int) -> dict[str, Any]:
        """Deliveries recorded since ``since_ms`` by outcome (``pending``: not done yet), and the last one's time."""
        rows = self._conn.execute(
            "SELECT COALESCE(outcome, 'pending'), COUNT(*) FROM callbacks WHERE received_ms >= ? GROUP BY 1",
            (since_ms,),
        ).fetchall()
        return {"by_outcome": dict(sorted(rows)),
                "last_received_ms": self._scalar("SELECT MAX(received_ms) FROM callbacks")}

    @_translated
    def integrity_check(self) -> str:
        rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(row[0]) for row in rows)


# ------------------------------------------------------------------------------- store internals


def _meta_value(key: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"meta value for {key!r} must be a string, got {type(value).__name__}")
    return str(value)


def _upsert_meta(conn: sqlite3.Connection, items: dict[str, str]) -> None:
    conn.executemany(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [(key, _meta_value(key, value)) for key, value in items.items()],
    )


_DELIVERY_COLUMNS = (
    "SELECT d.id, d.event_id, d.sink, d.attempts, d.created_ms, d.next_attempt_ms, e.body, e.run_id"
    " FROM deliveries d JOIN events e ON e.id = d.event_id"
)


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


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6]), row[7])


def _health_by_sink(outcomes: Sequence[Outcome]) -> dict[str, dict[str, Any]]:
    """Per sink, the net effect of outcomes in order on its health record (``_record_health`` arguments)."""
    out: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        if o.health is None:
            continue
        h = out.setdefault(o.sink, {"success_ms": None, "failure_ms": None, "error": None, "failures": 0,
                                    "reset": False})
        if o.health:
            h.update(success_ms=o.now_ms, failures=0, reset=True)
        else:
            h.update(failure_ms=o.now_ms, error=o.error, failures=h["failures"] + 1)
    return out


def _record_health(conn: sqlite3.Connection, sink: str, *, success_ms: int | None = None,
                   failure_ms: int | None = None, error: str | None = None, failures: int, reset: bool) -> None:
    """Inside a transaction: a sink's last success/failure; ``consecutive_failures`` becomes ``failures``
    (``reset``: a success came first) or grows by it."""
    conn.execute(
        "INSERT INTO sinks(name, last_success_ms, last_failure_ms, last_error, consecutive_failures)"
        " VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(name) DO UPDATE SET"
        " last_success_ms = COALESCE(excluded.last_success_ms, last_success_ms),"
        " last_failure_ms = COALESCE(excluded.last_failure_ms, last_failure_ms),"
        " last_error = CASE WHEN excluded.last_failure_ms IS NULL THEN last_error ELSE excluded.last_error END,"
        " consecutive_failures = CASE WHEN ? THEN excluded.consecutive_failures"
        " ELSE consecutive_failures + excluded.consecutive_failures END",
        (sink, success_ms, failure_ms, _cut(error), failures, int(reset)),
    )


def _requeue(conn: sqlite3.Connection, where: str, params: Sequence[Any], now_ms: int) -> int:
    """Inside a transaction: matching deliveries → pending now, attempts 0; re-enable their sinks."""
    sinks = [row[0] for row in conn.execute(f"SELECT DISTINCT sink FROM deliveries WHERE {where}", params)]
    count = conn.execute(
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_ms = ?, delivered_ms = NULL,"
        f" dead_ms = NULL, last_error = NULL, last_status = NULL WHERE {where}",
        [now_ms, *params],
    ).rowcount
    conn.executemany(
        "UPDATE sinks SET disabled_reason = NULL, disabled_ms = NULL WHERE name = ?", [(s,) for s in sinks]
    )
    return count


def _empty_sink_summary() -> dict[str, Any]:
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


def _prepare_file(path: Path, *, create: bool) -> bool:
    """Make sure ``path`` is a usable file; create it (and its directory) 0600/0700. True if created."""
    parent = path.parent
    try:
        if not parent.exists():
            if not create:
                raise StoreError(f"state store {path} does not exist (has the daemon run yet?)")
            os.makedirs(parent, mode=0o700, exist_ok=True)
        st = path.stat() if path.exists() else None
    except OSError as exc:
        raise StoreError(
            f"state store {path}: cannot create or read its directory {parent}: {exc.strerror}"
        ) from exc
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"state store {path} is not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(
                f"state store {path}: permission denied (the watcher needs to read and write it)"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StoreError(
                f"state store {path}: directory {parent} is not writable (SQLite keeps -wal/-shm files there)"
            )
        return False
    if not create:
        raise StoreError(f"state store {path} does not exist (has the daemon run yet?)")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False  # another process created it just now; it set the mode
    except OSError as exc:
        raise StoreError(f"state store {path}: cannot create the file: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return True


def _restrict_sidecars(name: str) -> None:
    """SQLite gives -wal/-shm the database file's mode; make sure of it for a file we just created."""
    for suffix in ("-wal", "-shm"):
        try:
            os.chmod(name + suffix, 0o600)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"state store {name}: cannot restrict {name + suffix}: {exc.strerror}") from exc


def _configure(conn: sqlite3.Connection, name: str, busy_timeout_ms: int) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    except sqlite3.Error as exc:
        raise store_error(exc, f"state store {name}: cannot open: {explain(exc)}") from exc
    if mode != "wal" and not (name == _MEMORY and mode == "memory"):
        raise StoreError(
            f"state store {name}: SQLite refused WAL mode (got {mode!r}); use a local disk for the state"
        )


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_ours(conn: sqlite3.Connection, name: str, version: int) -> None:
    """Refuse files written by a newer version, and SQLite files of other applications."""
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if app_id not in (0, APPLICATION_ID):
        raise StoreError(
            f"state store {name} is a SQLite database of another application (application_id {app_id})"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"state store {name} was written by a newer flora-watcher (schema {version}; this version knows "
            f"up to {SCHEMA_VERSION}); upgrade flora-watcher or move the file aside"
        )
    if version == 0:
        (tables,) = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchone()
        if tables:
            raise StoreError(
                f"state store {name} is a SQLite database of another application (unversioned tables)"
            )


def _migrate(conn: sqlite3.Connection, name: str) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction (re-checked under the write lock)."""
    try:
        version = _user_version(conn)
        _check_ours(conn, name, version)
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _user_version(conn)
            _check_ours(conn, name, version)
            for script in MIGRATIONS[version:]:
                for statement in split_statements(script):
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise store_error(exc, f"state store {name}: cannot open: {explain(exc)}") from exc


# ---------------------------------------------------------------------------------- async facade


def _on_worker(fn: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[AsyncStore, P], Coroutine[Any, Any, R]]:
    """``Store.fn`` as an ``AsyncStore`` coroutine method that runs it on the store's worker thread."""

    @functools.wraps(fn)
    async def method(self: AsyncStore, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._call(fn, self.store, *args, **kwargs)

    return method


class AsyncStore:
    """The Store's methods as coroutines, every call run on one dedicated worker thread, in call order.

    A cancelled await does not stop a call already running on the worker: a ``commit_sweep`` in flight
    still commits (or rolls back) there, and ``aclose()`` waits for it before closing the connection.
    """

    def __init__(self, store: Store, *, _executor: ThreadPoolExecutor | None = None) -> None:
        self.store = store
        self._executor = _executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="flora-store")
        self._closed = False

    @classmethod
    async def open(cls, path: str | os.PathLike[str], **kwargs: Any) -> AsyncStore:
        """Open the store on the worker thread itself (``Store.open`` arguments)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flora-store")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, functools.partial(Store.open, path, **kwargs))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, _executor=executor)

    async def _call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        if self._closed:
            raise StoreError(f"state store {self.store.path}: the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def aclose(self) -> None:
        """Let queued calls finish, close the connection, stop the worker thread. Safe to call twice."""
        if self._closed:
            return
        try:
            await self._call(self.store.close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def path(self) -> str:
        return self.store.path

    # Every public Store method, as a coroutine with the same signature, run on the worker thread. A new
    # Store method needs one line here (tests/integration/test_store.py checks that none is missing).
    get_meta = _on_worker(Store.get_meta)
    all_meta = _on_worker(Store.all_meta)
    set_meta = _on_worker(Store.set_meta)
    ensure_meta = _on_worker(Store.ensure_meta)
    load_tracked = _on_worker(Store.load_tracked)
    commit_sweep = _on_worker(Store.commit_sweep)
    due_deliveries = _on_worker(Store.due_deliveries)
    next_due_ms = _on_worker(Store.next_due_ms)
    dead_letter_sink = _on_worker(Store.dead_letter_sink)
    pending_counts = _on_worker(Store.pending_counts)
    oldest_pending_ms = _on_worker(Store.oldest_pending_ms)
    list_deliveries = _on_worker(Store.list_deliveries)
    replay = _on_worker(Store.replay)
    replay_failed = _on_worker(Store.replay_failed)
    set_sink_state = _on_worker(Store.set_sink_state)
    sink_states = _on_worker(Store.sink_states)
    get_event = _on_worker(Store.get_event)
    events_exist = _on_worker(Store.events_exist)
    summary = _on_worker(Store.summary)
    prune = _on_worker(Store.prune)
    integrity_check = _on_worker(Store.integrity_check)
    record_callback = _on_worker(Store.record_callback)
    pending_callbacks = _on_worker(Store.pending_callbacks)
    finish_callbacks = _on_worker(Store.finish_callbacks)
    callback_counts = _on_worker(Store.callback_counts)

    list_events = _on_worker(Store.list_events)
    failure_counts = _on_worker(Store.failure_counts)
    delivery_counts = _on_worker(Store.delivery_counts)
    oldest_pending = _on_worker(Store.oldest_pending)
    record_outcomes = _on_worker(Store.record_outcomes)
    make_due = _on_worker(Store.make_due)
    set_sink_pause = _on_worker(Store.set_sink_pause)
    sink_pauses = _on_worker(Store.sink_pauses)
