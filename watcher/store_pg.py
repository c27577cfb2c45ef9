"""The state store on PostgreSQL (psycopg 3, async): several instances share one database. Shell.

The same coroutines as ``store.AsyncStore`` (the engine cannot tell the back ends apart; the store test suite runs
against both), with the same transaction boundaries: a sweep's tracked runs, events (insert-if-absent on the id),
pending deliveries and watermarks commit in one transaction. What several instances add:

- **Instances** register a row (id, host, pid, role, heartbeat); ``status`` lists them.
- **One sweeper per watch scope**: ``acquire_lease(scope, lease_ms)`` takes or renews a lease row whose fencing
  token goes up on every change of holder. While a token is held (``fence``), ``commit_sweep`` checks it under a
  row lock in its own transaction: a sweeper that lost its lease commits nothing (``LeaseLost``).
- **Every instance delivers**: ``due_deliveries`` claims rows with ``SELECT … FOR UPDATE SKIP LOCKED`` and a claim
  expiry; a row claimed by another live instance (claim not expired, heartbeat within the lease) is skipped;
  the claims of a dead instance are free once its heartbeat is older than the lease.
- The schema is versioned (``flora_watcher_schema``) and migrated at open under an advisory lock, so two instances
  starting at once migrate once.

Times in claims, leases and heartbeats come from the database's clock (one clock for all hosts); the engine's
``now_ms`` is used where the SQLite store uses it (due times, history), so both back ends decide alike.
psycopg is imported only here, and this module only when a ``postgresql://`` URL is configured.

What both back ends do alike is written once in ``store_sql`` (plans over the ``POSTGRES`` dialect, awaited by
``_drive`` on a pooled connection); this module keeps PostgreSQL's own: the pool, migrations, claims, the fenced
sweep commit, instances and leases.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from watcher.errors import StoreError, StoreUnavailable
from watcher.lease import LeaseLost
from watcher.model import Event, TrackedRun
from watcher.store_api import Delivery, SweepCommit
from watcher.store_sql import COUNT, DELIVERY_COLUMNS, MANY, ROWS, Dialect, Plan, SqlCore, delivery_of, is_write

try:  # the optional extra: flora-watcher[postgres]
    import psycopg
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]
    AsyncConnectionPool = None  # type: ignore[assignment,misc]
    PoolTimeout = None  # type: ignore[assignment,misc]

P = ParamSpec("P")
R = TypeVar("R")

MIGRATION_LOCK = 0x466C5761  # pg_advisory_xact_lock key around migrations ("FlWa", as the SQLite application_id)
VERSION_TABLE = "flora_watcher_schema"
CLAIM_MS = 300_000  # a claim lasts this long at most, even for an instance that keeps its heartbeat
# An instance row whose heartbeat is older than this is deleted by the next live instance's heartbeat. Until then
# `status` lists it as dead (its heartbeat older than the lease): a crash stays visible for a while, not forever.
FORGET_INSTANCE_MS = 600_000
NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"
MAX_REASON_CHARS = 500  # a connection failure's reason is cut to this (libpq may list several attempts)
OUR_TABLES = ("meta", "tracked", "events", "deliveries", "sinks", "instances", "leases", "callbacks")
# The pool gives up reconnecting a lost connection after this long (its own backoff doubles without a cap);
# the next call then starts a fresh attempt, so the daemon's retries, not a doubling wait, pace reconnection
# and the pool is back within seconds of the server.
RECONNECT_S = 5.0
# While the server is known to be away, a call waits this long for a pooled connection instead of the pool's
# whole timeout, so the daemon's retries (and its shutdown) are not slowed to one attempt per 10 s.
AWAY_WAIT_S = 1.0

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE tracked (
        run_id         TEXT PRIMARY KEY,
        status         TEXT NOT NULL,
        terminal       BOOLEAN NOT NULL,
        created_at     BIGINT,
        last_change_ms BIGINT NOT NULL,
        next_poll_ms   BIGINT,
        data           TEXT NOT NULL
    );
    CREATE INDEX tracked_by_status ON tracked(status);
    CREATE INDEX tracked_by_age ON tracked(terminal, last_change_ms);
    CREATE TABLE events (
        id         TEXT PRIMARY KEY,
        run_id     TEXT NOT NULL,
        type       TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        body       BYTEA NOT NULL
    );
    CREATE INDEX events_by_run ON events(run_id);
    CREATE INDEX events_by_age ON events(created_ms);
    CREATE TABLE deliveries (
        id              BIGSERIAL PRIMARY KEY,
        event_id        TEXT NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        sink            TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        created_ms      BIGINT NOT NULL,
        next_attempt_ms BIGINT NOT NULL,
        last_attempt_ms BIGINT,
        delivered_ms    BIGINT,
        dead_ms         BIGINT,
        last_error      TEXT,
        last_status     INTEGER,
        claimed_by      TEXT,
        claim_until_ms  BIGINT,
        UNIQUE (event_id, sink)
    );
    CREATE INDEX deliveries_due ON deliveries(sink, state, next_attempt_ms);
    CREATE INDEX deliveries_by_state ON deliveries(state, created_ms);
    CREATE TABLE sinks (
        name                 TEXT PRIMARY KEY,
        disabled_reason      TEXT,
        disabled_ms          BIGINT,
        last_success_ms      BIGINT,
        last_failure_ms      BIGINT,
        last_error           TEXT,
        consecutive_failures INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE instances (
        id           TEXT PRIMARY KEY,
        host         TEXT NOT NULL,
        pid          INTEGER NOT NULL,
        role         TEXT NOT NULL,
        version      TEXT,
        started_ms   BIGINT NOT NULL,
        heartbeat_ms BIGINT NOT NULL
    );
    CREATE TABLE leases (
        scope       TEXT PRIMARY KEY,
        holder      TEXT NOT NULL,
        token       BIGINT NOT NULL,
        acquired_ms BIGINT NOT NULL,
        expires_ms  BIGINT NOT NULL
    )
    """,
    # 2: the order events were stored in, for `flora-watcher events --follow` and the status page.
    """
    ALTER TABLE events ADD COLUMN seq BIGSERIAL;
    CREATE INDEX events_by_seq ON events(seq)
    """,
    # 3: FLORA callbacks the ingress of any instance recorded; the sweeper confirms them (outcome NULL until then).
    """
    CREATE TABLE callbacks (
        delivery_id  TEXT PRIMARY KEY,
        run_id       TEXT NOT NULL,
        type         TEXT NOT NULL,
        run_type     TEXT,
        workspace_id TEXT,
        received_ms  BIGINT NOT NULL,
        outcome      TEXT,
        done_ms      BIGINT
    );
    CREATE INDEX callbacks_pending ON callbacks(received_ms) WHERE outcome IS NULL;
    CREATE INDEX callbacks_by_age ON callbacks(received_ms)
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

POSTGRES = Dialect(
    name="postgresql",
    marker="%s",
    one_of="{column} = ANY(?)",  # one array parameter
    listed=list,
    flag=bool,  # BOOLEAN
    stream_tracked=False,
    event_seq="seq",
    error_code="convert_from(body, 'UTF8')::jsonb #>> '{data,error_code}'",
    counted_deliveries="deliveries",
    release_claim=", claimed_by = NULL, claim_until_ms = NULL",
    file_bytes="SELECT pg_database_size(current_database())",
    barrier=" OFFSET 0",  # keeps the planner from turning the subquery into a join ordered the other way round
)


class EmptySchema(StoreError):
    """Opened without migrating, and the schema has no flora-watcher tables yet (the daemon never ran on it)."""


@dataclass(frozen=True, slots=True)
class Fence:
    scope: str
    token: int
    lease_ms: int


@dataclass(frozen=True, slots=True)
class InstanceRow:
    id: str
    host: str
    pid: int
    role: str
    version: str | None
    started_ms: int
    heartbeat_ms: int


# ------------------------------------------------------------------------------------ pure helpers


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and urlsplit(url).scheme in ("postgresql", "postgres")


def redact_url(url: str) -> str:
    """The URL without its password (and without query values, which may carry one): safe to print."""
    try:
        split = urlsplit(url)
    except ValueError:
        return "postgresql://<invalid URL>"
    netloc = split.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}{':***' if ':' in userinfo else ''}@{hostport}"
    safe_keys = ("host", "port", "dbname", "user", "sslmode")
    query = "&".join(
        part if part.split("=", 1)[0] in safe_keys else part.split("=", 1)[0] + "=***"
        for part in split.query.split("&")
        if part
    )
    return urlunsplit((split.scheme, netloc, split.path, query, ""))


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _secrets_in(url: str) -> list[str]:
    """What must never be shown of ``url``: the URL itself, its password, a ``password=`` query value."""
    found = [url]
    if (password := _password(url)) is not None:
        found.append(password)
    try:
        found += [v for k, v in parse_qsl(urlsplit(url).query) if k == "password" and v]
    except ValueError:
        pass
    return [value for value in found if len(value) >= 3]


def connect_failure(exc: BaseException, url: str) -> str:
    """Why a connection to ``url`` failed, as the database (or libpq) said it, in one line and without the
    password: 'password authentication failed for user "flora"', 'database "x" does not exist', 'connection to
    server at "127.0.0.1", port 5432 failed: Connection refused; Is the server running on that host and
    accepting TCP/IP connections?'. The one place a failed connect becomes text (``open``, ``probe``, and the
    daemon's outage logs); a pool's own timeout says nothing of the cause, so callers pass the error of a
    direct attempt (``first_connect``) instead."""
    text = str(exc).strip() or type(exc).__name__
    for secret in _secrets_in(url):
        text = text.replace(secret, "***")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    text = "; ".join(line for line in lines if line)
    for prefix in ("connection failed: ", "connection is bad: "):  # psycopg's wrappers around libpq's message
        text = text.removeprefix(prefix)
    if "FATAL: " in text:  # libpq: 'connection to server on socket "…" failed: FATAL:  <the server's reason>'
        text = text.split("FATAL: ", 1)[1].strip()
    return text[:MAX_REASON_CHARS]


async def first_connect(url: str, *, connect_timeout: float = 10.0) -> None:
    """Connect once, directly (no pool), and close: StoreError with the database's own reason (``connect_failure``)
    when the server cannot be reached or refuses us — StoreUnavailable (an outage the daemon waits out) unless
    no wait can fix it (a malformed URL). A pool retries in the background and, when it gives up, says only
    "pool initialization incomplete after 10.0 sec" (and logs a warning per attempt meanwhile)."""
    if psycopg is None:
        raise StoreError(
            "state store: a postgresql:// URL needs the PostgreSQL extra: pip install 'flora-watcher[postgres]'"
        )
    failure = await _direct_failure(url, connect_timeout)
    if failure is not None:
        reason, fatal = failure
        raise (StoreError if fatal else StoreUnavailable)(f"state store {redact_url(url)}: cannot connect: {reason}")


async def _direct_failure(url: str, connect_timeout: float) -> tuple[str, bool] | None:
    """Why a direct connection to ``url`` fails right now: (the database's reason, whether no wait can fix it);
    None when it succeeds (the connection is closed again)."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True,
                                                     connect_timeout=max(1, round(connect_timeout)))
    except (psycopg.Error, OSError) as exc:
        return connect_failure(exc, url), isinstance(exc, psycopg.ProgrammingError)  # fatal: a malformed URL
    await conn.close()
    return None


def quiet_pool_logs() -> None:
    """For the CLI's commands: psycopg_pool logs a warning per failed connection attempt (~30 lines before a
    command gives up); the command reports the failure itself, once, in one line."""
    import logging

    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


def default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------ running the shared plans


async def _drive(conn: Any, plan: Plan[R]) -> R:
    """Run a shared plan (``store_sql``) on ``conn``: its statements in order, each handed its result."""
    result: Any = None
    async with conn.cursor() as cur:
        while True:
            try:
                kind, sql, params = plan.send(result)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if kind == MANY:
                if params:
                    await cur.executemany(sql, params)
                result = None
            else:
                await cur.execute(sql, params)
                result = await cur.fetchall() if kind == ROWS else cur.rowcount


def _shared(plan: Callable[Concatenate[SqlCore, P], Plan[R]], *, fenced: bool = False
            ) -> Callable[Concatenate[PgStore, P], Coroutine[Any, Any, R]]:
    """The shared ``plan`` as a PgStore coroutine: in one transaction when it writes (its rows are built before),
    on one autocommit connection when it reads. ``fenced``: checked against the sweeper's lease, when one is held,
    in that transaction (``_fenced``)."""
    transaction = is_write(plan)

    @functools.wraps(plan)
    async def method(self: PgStore, *args: P.args, **kwargs: P.kwargs) -> R:
        steps = plan(self.core, *args, **kwargs)
        if fenced and self.fence is not None:
            steps = self._fenced(self.fence, steps)
        return await (self._tx if transaction else self._run)(plan.__name__, lambda conn: _drive(conn, steps))

    return method


# ----------------------------------------------------------------------------------------- the store


class PgStore:
    """The state store on a PostgreSQL connection pool. Open with ``await PgStore.open(url)``."""

    def __init__(self, pool: Any, url: str, *, instance_id: str, claim_ms: int = CLAIM_MS) -> None:
        self._pool = pool
        self._url = url
        self.path = redact_url(url)  # what messages and ``status`` show
        self.instance_id = instance_id
        self.claim_ms = claim_ms
        self.liveness_ms = 10_000  # a claimer whose heartbeat is older than this is dead (set to the lease)
        self.fence: Fence | None = None
        self._closed = False
        self._away = False  # the last call failed with StoreUnavailable: wait AWAY_WAIT_S for a connection
        self.core = SqlCore(POSTGRES, self.path, SCHEMA_VERSION)

    @property
    def schema_version(self) -> int:
        return SCHEMA_VERSION

    # ---------------------------------------------------------------------------------- lifecycle

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        instance_id: str | None = None,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: float = 10.0,
        migrate: bool = True,
    ) -> PgStore:
        """Connect, check the schema is ours, migrate it (once, under an advisory lock) unless ``migrate=False``."""
        if psycopg is None:
            raise StoreError(
                "state store: a postgresql:// URL needs the PostgreSQL extra: pip install 'flora-watcher[postgres]'"
            )
        safe = redact_url(url)
        await first_connect(url, connect_timeout=connect_timeout)  # the server's own reason, at once
        pool = AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, timeout=connect_timeout,
            kwargs={"autocommit": True, "application_name": "flora-watcher"},
            # A connection the server dropped (a restart, an idle timeout) is found out and replaced when it
            # is taken from the pool, not by the query it was taken for.
            check=AsyncConnectionPool.check_connection, reconnect_timeout=RECONNECT_S,
        )
        store = cls(pool, url, instance_id=instance_id or default_instance_id())
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            await pool.close()
            raise await store._unavailable(exc, f"state store {safe}: cannot connect") from None
        try:
            if migrate:
                await store._migrate()
            else:
                await store._check_version()
        except BaseException:
            await pool.close()
            raise
        return store

    def _explain(self, exc: BaseException) -> str:
        text = connect_failure(exc, self._url)
        if "pool" in text.lower() and "timeout" in text.lower():
            text += " (is the server running and the URL right?)"
        return text

    async def _unavailable(self, exc: BaseException, what: str) -> StoreError:
        """``exc`` (from the pool or a pooled connection) as the StoreError to raise. An error a wait can cure
        (the server down, restarting, refusing us; a serialization failure; a read-only server after a
        failover) is StoreUnavailable, with the server's own reason when the pool only says it timed out."""
        text = self._explain(exc)
        if PoolTimeout is not None and isinstance(exc, PoolTimeout):
            failure = await _direct_failure(self._url, RECONNECT_S)
            text = failure[0] if failure is not None else f"{text} (the server accepts connections: the pool is busy)"
        transient = isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, OSError,
                                     psycopg.errors.ReadOnlySqlTransaction))
        return (StoreUnavailable if transient else StoreError)(f"{what}: {text}")

    async def _run(self, name: str, fn: Callable[[Any], Awaitable[R]]) -> R:
        """Run ``fn(conn)`` on a pooled connection; psycopg errors become StoreError (StoreUnavailable when a
        wait can cure them) naming the (safe) URL."""
        if self._closed:
            raise StoreError(f"state store {self.path}: the store is closed")
        try:
            async with self._pool.connection(timeout=AWAY_WAIT_S if self._away else None) as conn:
                result = await fn(conn)
        except StoreError:
            raise
        except (psycopg.Error, OSError) as exc:  # the pool's errors are psycopg.OperationalError too
            error = await self._unavailable(exc, f"state store {self.path}: {name} failed")
            self._away = isinstance(error, StoreUnavailable)
            raise error from exc
        self._away = False
        return result

    async def _tx(self, name: str, fn: Callable[[Any], Awaitable[R]]) -> R:
        """``fn(conn)`` inside one transaction (committed when it returns, rolled back when it raises)."""

        async def body(conn: Any) -> R:
            async with conn.transaction():
                return await fn(conn)

        return await self._run(name, body)

    async def _fetchall(
        self, name: str, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        async def body(conn: Any) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return await self._run(name, body)

    async def _scalar(self, name: str, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._fetchall(name, sql, params)
        return rows[0][0] if rows else None

    async def _update_one(self, name: str, sql: str, params: Sequence[Any]) -> int:
        async def body(conn: Any) -> int:
            cur = await conn.execute(sql, params)
            return cur.rowcount

        return await self._run(name, body)

    async def _check_version(self) -> int:
        async def body(conn: Any) -> int:
            return await _schema_version(conn, self.path)

        version = await self._run("open", body)
        if version == 0:
            raise EmptySchema(f"state store {self.path} holds no flora-watcher state yet (has the daemon run?)")
        if version != SCHEMA_VERSION:
            raise StoreError(f"state store {self.path}: schema {version}, expected {SCHEMA_VERSION}; start the "
                             "daemon once to migrate it")
        return version

    async def _migrate(self) -> None:
        async def body(conn: Any) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            version = await _schema_version(conn, self.path)
            if version == SCHEMA_VERSION:
                return
            if version == 0:
                await conn.execute(
                    f"CREATE TABLE {VERSION_TABLE} (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)"
                )
            for index, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await conn.execute(script)
                await conn.execute(
                    f"INSERT INTO {VERSION_TABLE}(version, applied_ms) VALUES (%s, {NOW_MS})", (index,)
                )

        await self._tx("migrate", body)

    async def schema_state(self) -> dict[str, Any]:
        """For ``check-config``: server version, schema version found, expected, and whether it is current."""

        async def body(conn: Any) -> dict[str, Any]:
            cur = await conn.execute("SHOW server_version")
            server = (await cur.fetchone())[0]
            version = await _schema_version(conn, self.path)
            return {"server_version": server, "schema_version": version, "expected": SCHEMA_VERSION}

        return await self._run("schema_state", body)

    async def aclose(self) -> None:
        """Close the pool (waiting for calls in flight). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._pool.close()

    async def __aenter__(self) -> PgStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"PgStore({self.path!r})"

    # ---------------------------------------------------------------- shared with SQLite (store_sql)

    get_meta = _shared(SqlCore.get_meta)
    all_meta = _shared(SqlCore.all_meta)
    set_meta = _shared(SqlCore.set_meta)
    ensure_meta = _shared(SqlCore.ensure_meta)
    load_tracked = _shared(SqlCore.load_tracked)
    commit_sweep = _shared(SqlCore.commit_sweep, fenced=True)  # nothing committed once the lease moved on
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
    prune = _shared(SqlCore.prune)
    record_callbacks = _shared(SqlCore.record_callbacks)
    pending_callbacks = _shared(SqlCore.pending_callbacks)
    finish_callbacks = _shared(SqlCore.finish_callbacks)
    callback_counts = _shared(SqlCore.callback_counts)

    def _fenced(self, fence: Fence, plan: Plan[R]) -> Plan[R]:
        """``plan``, once the lease row still names us with our token (row-locked until the commit, so no
        takeover can slip in between); renews the lease as it goes."""
        rows = yield ROWS, "SELECT holder, token FROM leases WHERE scope = %s FOR UPDATE", (fence.scope,)
        if not rows or rows[0][0] != self.instance_id or int(rows[0][1]) != fence.token:
            self.fence = None
            raise LeaseLost(
                f"state store {self.path}: the sweeper lease for {fence.scope} moved to another instance "
                f"(token {fence.token} is stale); this sweep committed nothing"
            )
        yield COUNT, f"UPDATE leases SET expires_ms = {NOW_MS} + %s WHERE scope = %s", (fence.lease_ms, fence.scope)
        return (yield from plan)

    async def commit_and_claim(
        self,
        *,
        upserts: Iterable[TrackedRun],
        deletes: Iterable[str],
        events: Iterable[tuple[Event, Sequence[str]]],
        meta: dict[str, str],
        now_ms: int,
        take: Mapping[str, int],
    ) -> SweepCommit:
        """``commit_sweep`` (fenced like it), and the new deliveries it hands to this instance's sink workers
        claimed for this instance in the same transaction: until the claim expires (or our heartbeat is older
        than the lease) no other instance takes them, exactly as if one of our workers had claimed them with
        ``due_deliveries`` right after the commit."""
        steps = self._claiming(self.core.commit_and_claim(upserts=upserts, deletes=deletes, events=events, meta=meta,
                                                         now_ms=now_ms, take=take))
        if self.fence is not None:
            steps = self._fenced(self.fence, steps)
        return await self._tx("commit_and_claim", lambda conn: _drive(conn, steps))

    def _claiming(self, plan: Plan[SweepCommit]) -> Plan[SweepCommit]:
        commit = yield from plan
        if commit.claimed:  # rows inserted by this transaction: nobody else can hold or see them yet
            yield COUNT, (f"UPDATE deliveries SET claimed_by = %s, claim_until_ms = {NOW_MS} + %s"
                          " WHERE id = ANY(%s)"), (self.instance_id, self.claim_ms, [d.id for d in commit.claimed])
        return commit

    # ------------------------------------------------------------------------------------- outbox

    async def due_deliveries(self, sink: str, now_ms: int, limit: int = 100, after: tuple[int, int] | None = None,
                             exclude: Collection[int] = ()) -> list[Delivery]:
        """Claim and return the pending deliveries of ``sink`` due at ``now_ms`` (earliest first) that no other
        live instance holds: ``FOR UPDATE SKIP LOCKED``, claim until the database's now + ``claim_ms``. Never
        one whose run has an earlier pending delivery to the same sink (the events of a run stay in order).

        ``exclude``: what the caller holds, as in the SQLite store: not returned, not counted in ``limit``. The
        same statement renews the claims this instance still has on them once half their time has passed, so a
        delivery held here for long is not taken by another instance. (Handing held rows back instead, as this
        once did, let a worker send one twice: a claim answered after that delivery's outcome was committed on
        another connection looked like a new delivery.)"""
        held = list(exclude)
        params = {"sink": sink, "now": now_ms, "me": self.instance_id, "live": self.liveness_ms, "limit": limit,
                  "claim": self.claim_ms, "held": held, "after_at": after[0] if after else None,
                  "after_id": after[1] if after else None}
        renew = (
            # SKIP LOCKED: a held row being written by the outcome commit (on another connection) is not waited
            # for (it is leaving our hands), so this statement and that commit never wait on each other
            "renew AS (SELECT id FROM deliveries WHERE id = ANY(%(held)s) AND claimed_by = %(me)s"
            f"  AND state = 'pending' AND claim_until_ms < {NOW_MS} + %(claim)s / 2 FOR UPDATE SKIP LOCKED),"
            f" renewed AS (UPDATE deliveries r SET claim_until_ms = {NOW_MS} + %(claim)s FROM renew"
            "  WHERE r.id = renew.id),"
        )
        rows = await self._fetchall(
            "due_deliveries",
            "WITH " + (renew if held else "") + " due AS ("
            " SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE d.sink = %(sink)s AND d.state = 'pending' AND d.next_attempt_ms <= %(now)s"
            + (" AND d.id <> ALL(%(held)s)" if held else "")
            + f" AND (d.claimed_by IS NULL OR d.claimed_by = %(me)s OR d.claim_until_ms < {NOW_MS}"
            "  OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = d.claimed_by"
            f"   AND i.heartbeat_ms >= {NOW_MS} - %(live)s))"
            # The run's other events (events_by_run), then each one's delivery to this sink, by the unique
            # (event_id, sink) index, whatever the statistics say: each OFFSET 0 keeps the planner from turning
            # a subquery into a join it may order the other way round, and "not delivered, not dead" (pending,
            # by the CHECK) is no index condition, so (sink, state) cannot look cheaper. Without statistics (a
            # burst into a fresh table) the planner scanned every pending delivery of the sink for every
            # candidate instead: 25 s for one claim among 3,000 pending deliveries.
            " AND NOT EXISTS (SELECT 1 FROM events e2 WHERE e2.run_id = e.run_id AND e2.id <> e.id"
            "  AND EXISTS (SELECT 1 FROM deliveries d2 WHERE d2.event_id = e2.id AND d2.sink = d.sink"
            "   AND d2.state <> 'delivered' AND d2.state <> 'dead' AND d2.id < d.id OFFSET 0) OFFSET 0)"
            + ("" if after is None else " AND (d.next_attempt_ms, d.id) > (%(after_at)s, %(after_id)s)")
            + " ORDER BY d.next_attempt_ms, d.id LIMIT %(limit)s FOR UPDATE OF d SKIP LOCKED)"
            f" UPDATE deliveries d SET claimed_by = %(me)s, claim_until_ms = {NOW_MS} + %(claim)s"
            " FROM due, events e WHERE d.id = due.id AND e.id = d.event_id"
            f" RETURNING {DELIVERY_COLUMNS}",
            params,
        )
        rows.sort(key=lambda r: (r[5], r[0]))
        return [delivery_of(r) for r in rows]

    async def oldest_pending(self, sink: str) -> Delivery | None:
        """Claim and return the pending delivery of ``sink`` queued first, due or not (the breaker's probe),
        unless another live instance holds it."""
        rows = await self._fetchall(
            "oldest_pending",
            "WITH first AS ("
            " SELECT d.id FROM deliveries d WHERE d.sink = %(sink)s AND d.state = 'pending'"
            f" AND (d.claimed_by IS NULL OR d.claimed_by = %(me)s OR d.claim_until_ms < {NOW_MS}"
            "  OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = d.claimed_by"
            f"   AND i.heartbeat_ms >= {NOW_MS} - %(live)s))"
            " ORDER BY d.id LIMIT 1 FOR UPDATE OF d SKIP LOCKED)"
            f" UPDATE deliveries d SET claimed_by = %(me)s, claim_until_ms = {NOW_MS} + %(claim)s"
            " FROM first, events e WHERE d.id = first.id AND e.id = d.event_id"
            f" RETURNING {DELIVERY_COLUMNS}",
            {"sink": sink, "me": self.instance_id, "live": self.liveness_ms, "claim": self.claim_ms},
        )
        return delivery_of(rows[0]) if rows else None

    async def next_due_ms(self, sink: str, after_ms: int | None = None) -> int | None:
        """Earliest time a pending delivery of ``sink`` can be sent here (a live claim of another instance
        counts from its expiry); only times later than ``after_ms`` when given."""
        value = await self._scalar(
            "next_due_ms",
            "SELECT MIN(t) FROM (SELECT CASE WHEN claimed_by IS NOT NULL AND claimed_by <> %s"
            f" AND claim_until_ms >= {NOW_MS} THEN GREATEST(next_attempt_ms, claim_until_ms)"
            " ELSE next_attempt_ms END AS t FROM deliveries WHERE sink = %s AND state = 'pending') due"
            " WHERE %s::bigint IS NULL OR t > %s::bigint",
            (self.instance_id, sink, after_ms, after_ms),
        )
        return None if value is None else int(value)

    # ---------------------------------------------------------------------------- status / upkeep

    async def summary(self) -> dict[str, Any]:
        """Plain data for ``flora-watcher status``: the SQLite store's shape, plus instances and the sweeper."""
        return await self._tx("summary", lambda conn: _drive(conn, self._summary()))

    def _summary(self) -> Plan[dict[str, Any]]:
        common = yield from self.core.summary()
        ((now,),) = yield ROWS, f"SELECT {NOW_MS}", ()
        instances = yield ROWS, ("SELECT id, host, pid, role, version, started_ms, heartbeat_ms FROM instances"
                                 " ORDER BY started_ms, id"), ()
        leases = yield ROWS, "SELECT scope, holder, token, acquired_ms, expires_ms FROM leases ORDER BY scope", ()
        return {
            "path": common.pop("path"),
            "backend": "postgresql",
            **common,
            "instances": [{"id": r[0], "host": r[1], "pid": r[2], "role": r[3], "version": r[4], "started_ms": r[5],
                           "heartbeat_ms": r[6], "alive": r[6] >= now - self.liveness_ms,
                           "forget_ms": r[6] + FORGET_INSTANCE_MS} for r in instances],
            "sweepers": [{"scope": r[0], "holder": r[1], "token": r[2], "acquired_ms": r[3], "expires_ms": r[4],
                          "valid": r[4] >= now} for r in leases],
            "now_ms": int(now),
        }

    async def integrity_check(self) -> str:
        await self._scalar("integrity_check", "SELECT 1")
        return "ok"

    # --------------------------------------------------------------------- instances and the lease

    async def register_instance(self, *, role: str, version: str | None = None,
                                host: str | None = None, pid: int | None = None) -> None:
        await self._update_one(
            "register_instance",
            "INSERT INTO instances(id, host, pid, role, version, started_ms, heartbeat_ms)"
            f" VALUES (%s, %s, %s, %s, %s, {NOW_MS}, {NOW_MS})"
            " ON CONFLICT (id) DO UPDATE SET role = excluded.role, heartbeat_ms = excluded.heartbeat_ms",
            (self.instance_id, host or socket.gethostname(), pid or os.getpid(), role, version),
        )

    async def heartbeat(self, *, role: str) -> None:
        """Refresh this instance's row (re-creating it if someone removed it) and forget long-dead ones."""

        async def body(conn: Any) -> None:
            cur = await conn.execute(
                f"UPDATE instances SET heartbeat_ms = {NOW_MS}, role = %s WHERE id = %s", (role, self.instance_id))
            if cur.rowcount == 0:
                await conn.execute(
                    "INSERT INTO instances(id, host, pid, role, started_ms, heartbeat_ms)"
                    f" VALUES (%s, %s, %s, %s, {NOW_MS}, {NOW_MS}) ON CONFLICT (id) DO NOTHING",
                    (self.instance_id, socket.gethostname(), os.getpid(), role))
            # instances silent for a while are gone for good (their claims are free once the lease passed)
            await conn.execute(f"DELETE FROM instances WHERE heartbeat_ms < {NOW_MS} - %s", (FORGET_INSTANCE_MS,))

        await self._run("heartbeat", body)

    async def unregister_instance(self) -> None:
        """Clean stop: drop our row, free our claims and give up any lease (another instance takes over now)."""

        async def body(conn: Any) -> None:
            await conn.execute("UPDATE deliveries SET claimed_by = NULL, claim_until_ms = NULL WHERE claimed_by = %s",
                               (self.instance_id,))
            await conn.execute(f"UPDATE leases SET expires_ms = {NOW_MS} - 1 WHERE holder = %s", (self.instance_id,))
            await conn.execute("DELETE FROM instances WHERE id = %s", (self.instance_id,))

        self.fence = None
        await self._tx("unregister_instance", body)

    async def acquire_lease(self, scope: str, lease_ms: int) -> Fence | None:
        """Take the sweeper lease of ``scope`` if it is free or expired, or renew ours. Returns the fence (token
        goes up whenever the holder changes) or None when another instance holds a valid lease. Sets ``fence``."""
        rows = await self._fetchall(
            "acquire_lease",
            "INSERT INTO leases AS l (scope, holder, token, acquired_ms, expires_ms)"
            f" VALUES (%(scope)s, %(me)s, 1, {NOW_MS}, {NOW_MS} + %(lease)s)"
            " ON CONFLICT (scope) DO UPDATE SET"
            "  token = CASE WHEN l.holder = excluded.holder THEN l.token ELSE l.token + 1 END,"
            "  acquired_ms = CASE WHEN l.holder = excluded.holder THEN l.acquired_ms ELSE excluded.acquired_ms END,"
            "  holder = excluded.holder, expires_ms = excluded.expires_ms"
            f" WHERE l.holder = excluded.holder OR l.expires_ms < {NOW_MS}"
            " RETURNING token",
            {"scope": scope, "me": self.instance_id, "lease": lease_ms},
        )
        if not rows:
            self.fence = None
            return None
        fence = Fence(scope=scope, token=int(rows[0][0]), lease_ms=lease_ms)
        self.fence = fence
        return fence

    async def release_lease(self) -> None:
        fence, self.fence = self.fence, None
        if fence is not None:
            await self._update_one(
                "release_lease",
                f"UPDATE leases SET expires_ms = {NOW_MS} - 1 WHERE scope = %s AND holder = %s AND token = %s",
                (fence.scope, self.instance_id, fence.token),
            )

    async def instances(self) -> list[InstanceRow]:
        rows = await self._fetchall(
            "instances", "SELECT id, host, pid, role, version, started_ms, heartbeat_ms FROM instances ORDER BY id")
        return [InstanceRow(*r) for r in rows]


async def probe(url: str, *, connect_timeout: float = 10.0) -> str:
    """For ``check-config``: connect once and describe the server and the schema, e.g. "PostgreSQL 15.4, schema 1
    (current)". Raises StoreError (password never in it) when the server cannot be reached or the schema is not
    ours."""
    if psycopg is None:
        raise StoreError("a postgresql:// URL needs the PostgreSQL extra: pip install 'flora-watcher[postgres]'")
    store = PgStore(None, url, instance_id="probe")
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=max(1, int(connect_timeout)))
    except (psycopg.Error, OSError) as exc:
        raise StoreError(f"state store {store.path}: cannot connect: {connect_failure(exc, url)}") from None
    try:
        cur = await conn.execute("SHOW server_version")
        row = await cur.fetchone()
        server = row[0] if row else "?"
        version = await _schema_version(conn, store.path)
    except psycopg.Error as exc:
        raise StoreError(f"state store {store.path}: {store._explain(exc)}") from None
    finally:
        await conn.close()
    if version == 0:
        state = "empty: created at the first start"
    elif version < SCHEMA_VERSION:
        state = f"{version}, migrated to {SCHEMA_VERSION} at the next start"
    else:
        state = f"{version} (current)"
    return f"PostgreSQL {server.split()[0]}, schema {state}"


async def _schema_version(conn: Any, name: str) -> int:
    """0 for an empty schema; refuses a schema with our table names but no version table, or a newer one."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VERSION_TABLE,))
    if not (await cur.fetchone())[0]:
        cur = await conn.execute(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()"
            " AND table_name = ANY(%s)", (list(OUR_TABLES),))
        if (await cur.fetchone())[0]:
            raise StoreError(f"state store {name}: the schema holds tables named like ours but no "
                             f"{VERSION_TABLE} table; use an empty database or schema")
        return 0
    cur = await conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}")
    version = int((await cur.fetchone())[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"state store {name} was written by a newer flora-watcher (schema {version}; this version knows up "
            f"to {SCHEMA_VERSION}); upgrade flora-watcher"
        )
    return version


# ------------------------------------------------------------------------------- blocking facade


class BlockingStore:
    """An async store driven from synchronous code (the CLI's status/deliveries/replay, tests): every method
    of the wrapped store, run to completion on a private event loop."""

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self._runner = asyncio.Runner()
        try:
            self.astore: Any = self._runner.run(opener())
        except BaseException:
            self._runner.close()
            raise

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.astore, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            return self._runner.run(result) if asyncio.iscoroutine(result) else result

        return call

    def close(self) -> None:
        if self._runner is None:
            return
        try:
            self._runner.run(self.astore.aclose())
        finally:
            self._runner.close()
            self._runner = None  # type: ignore[assignment]

    def __enter__(self) -> BlockingStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
