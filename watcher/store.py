"""The state store on SQLite (standard library), off the event loop. Shell.

``Store.open(path)`` opens (creates 0600, migrates) the file with WAL and ``synchronous=FULL``, so a commit
that returned survives a crash; every sqlite3 error becomes an ``errors.StoreError`` naming the file and the
reason. One opener per file and process: closing *any* descriptor of a file drops every POSIX lock the process
holds on it (SQLite "How To Corrupt" §2.2), so while a ``Store`` holds a file, ``Store.open`` refuses to open it
again in the same process, and nothing else in the process may open it (``held_here``).

A ``Store`` is used from one thread at a time: ``AsyncStore`` runs each call on one dedicated worker thread and
is what the engine awaits (it implements ``store_api.StateStore``, where the contract of every method is
written down). ``Store.snapshot(path)`` is an in-memory copy for ``--dry-run``.

What both back ends do alike (meta, ``commit_sweep``, outcomes, replay, sink state, events, summary, prune,
recorded FLORA callbacks) is written once in ``store_sql`` and run here by ``_run`` on the connection; this
module keeps what is SQLite's own: the file, pragmas and migrations, the outbox reads (``due_deliveries``,
``oldest_pending``, ``next_due_ms``: no claims, one process), and the ``SQLITE`` dialect.
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
from collections.abc import Callable, Collection, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog

from watcher.errors import StoreError, StoreUnavailable
from watcher.store_api import Delivery
from watcher.store_sql import COUNT, DELIVERY_COLUMNS, MANY, ROWS, Dialect, Plan, SqlCore, delivery_of, is_write

log = structlog.get_logger("watcher.store")

STORE_FILENAME = "state.sqlite3"
APPLICATION_ID = 0x466C5761  # "FlWa": marks the file as a flora-watcher state store (PRAGMA application_id)
DEFAULT_BUSY_TIMEOUT_MS = 5_000
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024  # the WAL file is truncated back to this after a checkpoint
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


SQLITE = Dialect(
    name="sqlite",
    marker="?",
    one_of="{column} IN (SELECT value FROM json_each(?))",  # one JSON array parameter, any length
    listed=json.dumps,
    flag=int,  # INTEGER 0/1
    stream_tracked=True,
    event_seq="rowid",
    error_code="json_extract(CAST(body AS TEXT), '$.data.error_code')",
    # The (sink, state, …) index covers delivery_counts; without ANALYZE statistics SQLite would pick the state
    # index and read every pending and dead row from the table instead (30x slower on a big outbox).
    counted_deliveries="deliveries INDEXED BY deliveries_due",
    release_claim="",  # one process: no claims
    file_bytes="SELECT page_size * page_count FROM pragma_page_size(), pragma_page_count()",
    barrier="",  # SQLite runs a correlated EXISTS as written
)


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


def _run(conn: sqlite3.Connection, plan: Plan[R]) -> R:
    """Run a shared plan (``store_sql``) on ``conn``: its statements in order, each handed its result."""
    result: Any = None
    while True:
        try:
            kind, sql, params = plan.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if kind == ROWS:
            result = conn.execute(sql, params).fetchall()
        elif kind == COUNT:
            result = conn.execute(sql, params).rowcount
        else:
            assert kind == MANY
            if params:
                conn.executemany(sql, params)
            result = None


def _shared(plan: Callable[Concatenate[SqlCore, P], Plan[R]]) -> Callable[Concatenate[Store, P], R]:
    """The shared ``plan`` as a Store method: in one transaction when it writes (its rows are built before)."""
    transaction = is_write(plan)

    @functools.wraps(plan)
    def method(self: Store, *args: P.args, **kwargs: P.kwargs) -> R:
        steps = plan(self.core, *args, **kwargs)
        if not transaction:
            return _run(self._conn, steps)
        with self._transaction() as conn:
            return _run(conn, steps)

    return _translated(method)


class Store:
    """The state store on one SQLite connection. Open with ``Store.open(path)``."""

    def __init__(self, conn: sqlite3.Connection, path: str, *, _held: tuple[int, int] | None = None) -> None:
        self._conn = conn
        self.path = path
        self._closed = False
        # The file stays registered as held until close(), or until this Store is collected unclosed (its
        # connection is closed then too, and the file's inode may be reused by a new file).
        self._release = weakref.finalize(self, _release, _held)
        self.core = SqlCore(SQLITE, path, SCHEMA_VERSION)

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

    # ---------------------------------------------------------- shared with PostgreSQL (store_sql)

    get_meta = _shared(SqlCore.get_meta)
    all_meta = _shared(SqlCore.all_meta)
    set_meta = _shared(SqlCore.set_meta)
    ensure_meta = _shared(SqlCore.ensure_meta)
    load_tracked = _shared(SqlCore.load_tracked)
    commit_sweep = _shared(SqlCore.commit_sweep)
    commit_and_claim = _shared(SqlCore.commit_and_claim)  # one process: the claim is the read
    record_outcomes = _shared(SqlCore.record_outcomes)
    make_due = _shared(SqlCore.make_due)
    set_sink_pause = _shared(SqlCore.set_sink_pause)
    sink_pauses = _shared(SqlCore.sink_pauses)
    dead_letter_sink = _shared(SqlCore.dead_letter_sink)
    pending_counts = _shared(SqlCore.pending_counts)
    oldest_pending_ms = _shared(SqlCore.oldest_pending_ms)
    list_deliveries = _shared(SqlCore.list_deliveries)
    replay = _shared(SqlCore.replay)
    replay_failed = _shared(SqlCore.replay_failed)
    set_sink_state = _shared(SqlCore.set_sink_state)
    sink_states = _shared(SqlCore.sink_states)
    get_event = _shared(SqlCore.get_event)
    events_exist = _shared(SqlCore.events_exist)
    list_events = _shared(SqlCore.list_events)
    failure_counts = _shared(SqlCore.failure_counts)
    delivery_counts = _shared(SqlCore.delivery_counts)
    summary = _shared(SqlCore.summary)
    prune = _shared(SqlCore.prune)
    record_callbacks = _shared(SqlCore.record_callbacks)
    pending_callbacks = _shared(SqlCore.pending_callbacks)
    finish_callbacks = _shared(SqlCore.finish_callbacks)
    callback_counts = _shared(SqlCore.callback_counts)

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
        ``limit`` counts only the others (the PostgreSQL store does the same and renews its claims on them)."""
        held = [] if not exclude else [json.dumps(list(exclude))]
        rows = self._conn.execute(
            _DELIVERIES
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
        return [delivery_of(row) for row in rows]

    @_translated
    def oldest_pending(self, sink: str) -> Delivery | None:
        """The pending delivery of ``sink`` that was queued first, due or not (the circuit breaker's probe)."""
        row = self._conn.execute(
            _DELIVERIES + " WHERE d.sink = ? AND d.state = 'pending' ORDER BY d.id LIMIT 1", (sink,)
        ).fetchone()
        return None if row is None else delivery_of(row)

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
    def integrity_check(self) -> str:
        rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(row[0]) for row in rows)


# ------------------------------------------------------------------------------- store internals


_DELIVERIES = f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id"


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
    commit_and_claim = _on_worker(Store.commit_and_claim)
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
    record_callbacks = _on_worker(Store.record_callbacks)
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
