"""Copying a whole state between the back ends. Shell.

``migrate_state``: a SQLite state → an empty PostgreSQL schema (``flora-watcher migrate-state --to URL``): tracked
runs, events (their exact bytes), every delivery (pending, dead letters, delivered history) with its id, sink
state, meta (first start, watermarks) and recorded FLORA callbacks, in one PostgreSQL transaction; nothing is
written when the target already holds state. ``copy_pg_to_memory``: the reverse into an in-memory SQLite store,
for ``run --dry-run``.
"""

from __future__ import annotations

import os
from typing import Any

from watcher.errors import StoreError
from watcher.store import Store

# table → columns both back ends share (PostgreSQL adds claims on deliveries, instances and leases)
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("meta", ("key", "value")),
    ("tracked", ("run_id", "status", "terminal", "created_at", "last_change_ms", "next_poll_ms", "data")),
    ("events", ("id", "run_id", "type", "created_ms", "body")),
    ("deliveries", ("id", "event_id", "sink", "state", "attempts", "created_ms", "next_attempt_ms",
                    "last_attempt_ms", "delivered_ms", "dead_ms", "last_error", "last_status")),
    ("sinks", ("name", "disabled_reason", "disabled_ms", "last_success_ms", "last_failure_ms", "last_error",
               "consecutive_failures")),
    ("callbacks", ("delivery_id", "run_id", "type", "run_type", "workspace_id", "received_ms", "outcome",
                   "done_ms")),
)


def _to_pg(table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    if table == "tracked":
        return (*row[:2], bool(row[2]), *row[3:])
    if table == "events":
        return (*row[:4], bytes(row[4]))
    return row


def _to_sqlite(table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    if table == "tracked":
        return (*row[:2], int(row[2]), *row[3:])
    if table == "events":
        return (*row[:4], bytes(row[4]))
    return row


async def migrate_state(sqlite_path: str | os.PathLike[str], url: str) -> dict[str, int]:
    """Copy the SQLite state at ``sqlite_path`` into the (migrated, empty) PostgreSQL store at ``url``.
    Returns rows copied per table. Raises StoreError (target not empty, unreadable source, connection)."""
    from watcher.store_pg import PgStore

    source = Store.open(sqlite_path, create=False)
    try:
        # events in the order they were stored: the history (`events`, the status page) keeps its order
        rows = {table: source._conn.execute(
                    f"SELECT {', '.join(cols)} FROM {table}" + (" ORDER BY rowid" if table == "events" else "")
                ).fetchall()
                for table, cols in TABLES}
    finally:
        source.close()
    target = await PgStore.open(url)
    try:

        async def body(conn: Any) -> dict[str, int]:
            for table, _ in TABLES:
                cur = await conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")
                if (await cur.fetchone())[0]:
                    raise StoreError(f"state store {target.path} is not empty (table {table} has rows); "
                                     "migrate-state copies only into an empty schema")
            counts: dict[str, int] = {}
            for table, cols in TABLES:
                data = [_to_pg(table, r) for r in rows[table]]
                if data:
                    async with conn.cursor() as cur:
                        await cur.executemany(
                            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                            data)
                counts[table] = len(data)
            await conn.execute("SELECT setval(pg_get_serial_sequence('deliveries', 'id'),"
                               " GREATEST((SELECT MAX(id) FROM deliveries), 1))")
            return counts

        return await target._tx("migrate_state", body)
    finally:
        await target.aclose()


async def copy_pg_to_memory(url: str) -> Store:
    """An in-memory SQLite copy of the PostgreSQL state at ``url`` (empty when the schema is)."""
    from watcher.store_pg import EmptySchema, PgStore

    memory = Store.open(":memory:")
    try:
        source = await PgStore.open(url, migrate=False, max_size=1)
    except EmptySchema:
        return memory
    try:
        for table, cols in TABLES:
            order = " ORDER BY seq" if table == "events" else ""
            found = await source._fetchall("copy", f"SELECT {', '.join(cols)} FROM {table}{order}")
            memory._conn.executemany(
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [_to_sqlite(table, r) for r in found])
    finally:
        await source.aclose()
    return memory
