"""The state store: SQLite (standard library), off the event loop. Shell: all SQL lives here.

INTERFACE (implemented below; the engine depends on exactly this):

    store = Store.open(path)            # sync; creates the file (0600) and parent dir, WAL, synchronous=FULL,
                                        # busy_timeout, foreign keys; migrates the versioned schema; raises
                                        # errors.StoreError with a clear message (permissions, corrupt file,
                                        # schema newer than this version)
    astore = AsyncStore(store)          # every method below as `await astore.method(...)`, run on ONE dedicated
                                        # worker thread (sqlite connection used only from that thread)

    # --- meta (small key/value strings: "first_start_ms", "high_watermark_ms", "last_sweep_ms", ...)
    get_meta(key) -> str | None
    set_meta(items: dict[str, str]) -> None

    # --- tracked runs
    load_tracked() -> dict[str, TrackedRun]          # every tracked run (active and recently terminal)
    # --- the engine's one write per sweep: ALL of it in ONE transaction, committed before anything is sent
    commit_sweep(*, upserts: Iterable[TrackedRun], deletes: Iterable[str],
                 events: Iterable[tuple[Event, Sequence[str]]],   # (event, names of the sinks it goes to)
                 meta: dict[str, str], now_ms: int) -> list[str]
        # inserts each event unless its id exists (INSERT OR IGNORE); for each NEWLY inserted event, one
        # pending delivery per sink name (next_attempt_ms = now_ms). Returns the ids of newly inserted events.
        # An event id that already exists adds no delivery (re-detection after a crash sends nothing twice).

    # --- deliveries (the outbox)
    due_deliveries(sink: str, now_ms: int, limit: int = 100) -> list[Delivery]   # pending, next_attempt_ms <= now,
                                                                                 # oldest first
    next_due_ms(sink: str) -> int | None                 # earliest next_attempt_ms of a pending delivery of the sink
    mark_delivered(delivery_id: int, now_ms: int, status: int | None = None) -> None
    mark_retry(delivery_id: int, *, now_ms: int, next_attempt_ms: int, error: str, status: int | None) -> None
    mark_dead(delivery_id: int, *, now_ms: int, error: str, status: int | None) -> None
    dead_letter_sink(sink: str, *, now_ms: int, reason: str) -> int   # all pending of a removed/disabled sink → dead
    pending_counts() -> dict[str, int]                   # sink → pending deliveries
    oldest_pending_ms() -> int | None                    # created_ms of the oldest pending delivery
    list_deliveries(*, failed: bool, limit: int = 100) -> list[DeliveryRow]   # pending (or dead letters)
    replay(event_ids: Sequence[str], *, now_ms: int, sink: str | None = None) -> int
        # re-queues: every dead or delivered delivery of those events (optionally one sink) → pending, attempts 0.
        # Returns how many deliveries were re-queued; unknown ids are simply not counted.
    replay_failed(*, now_ms: int, sink: str | None = None) -> int   # all dead letters → pending

    # --- sink state (410 disables a sink until replay/config change; health for `status`)
    set_sink_state(sink: str, *, disabled_reason: str | None, now_ms: int) -> None
    sink_states() -> dict[str, SinkState]
    record_sink_result(sink: str, *, ok: bool, now_ms: int, error: str | None = None) -> None

    # --- events
    get_event(event_id) -> Event | None
    events_exist(ids: Sequence[str]) -> set[str]

    # --- status / maintenance
    summary() -> dict        # tracked by status, pending/dead counts, per-sink counts, meta highlights
    prune(*, now_ms: int, keep_done_ms: int) -> int      # delete delivered deliveries (and their events if no
                                                         # delivery remains) older than keep_done_ms
    integrity_check() -> str                             # PRAGMA integrity_check result ("ok")
    close()

Durability: WAL + synchronous=FULL, so a commit returned means it survives a crash (SIGKILL, power loss).
Events are stored as their exact JSON body bytes, so every retry and replay sends the same bytes.
"""
