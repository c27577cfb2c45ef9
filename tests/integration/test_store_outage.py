"""A state store that is away is an outage, not an exit (issue 24, items 2 and 3), in process: the SQLite store
behind ``tests.fakes.FlakyStore``, which refuses calls with ``StoreUnavailable`` on demand, as PostgreSQL does
while it restarts (tests/postgres/test_db_outage.py does it with a real cluster). Time is a manual
``FakeClock`` shared with the simulator: the backoff passes only when the test moves the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.fakes import FakeClock, FlakyStore, Recorder, advance_until, until
from tests.in_process import readyz, running
from tests.sinks.helpers import Receiver, make_event
from watcher import stores
from watcher.config import ApiConfig, Config, DeliveryConfig, ServerConfig, WatchConfig
from watcher.daemon import Daemon, Options
from watcher.dispatcher import Dispatcher
from watcher.errors import StoreError, StoreUnavailable
from watcher.observer import State
from watcher.outage import StoreHealth
from watcher.secret import Secret
from watcher.simulator import run_simulator
from watcher.sinks.registry import build_sink, sink_config
from watcher.store import AsyncStore, Store

KEY = "sk_test_store_outage_0123456789"
EPOCH_MS = 1_764_399_000_000
FAST = DeliveryConfig(backoff_initial=0.2, backoff_max=5.0, shutdown_grace=1.0)


def journal_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------- sink workers


@pytest.fixture
async def flaky(tmp_path: Path):
    inner = AsyncStore(Store.open(tmp_path / "state.sqlite3"))
    yield FlakyStore(inner)
    await inner.aclose()


async def test_a_sink_worker_whose_store_is_away_waits_and_delivers_after_it_returns(flaky, tmp_path: Path) -> None:
    """1. An event is pending; the store goes away before the worker claims it: the worker does not die, it
       tries again with backoff (0.5 s doubling to 5 s of clock time) and ``StoreHealth`` says the store is away.
    2. The store comes back: the event is delivered, once, and the outage ends (one ``store.unavailable`` and
       one ``store.recovered`` line, however many attempts failed)."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    event = make_event()
    await flaky.commit_sweep(upserts=[], deletes=[], events=[(event, ["journal"])], meta={}, now_ms=clock.now_ms())
    journal = tmp_path / "events.jsonl"
    sink = build_sink(sink_config(name="journal", type="file", path=journal), clock=clock)
    await sink.start()
    with capture_logs() as logs:
        health = StoreHealth(__import__("structlog").get_logger("test"), clock.now_ms)
        dispatcher = Dispatcher({"journal": sink}, flaky, cfg=FAST, clock=clock, health=health)
        flaky.down = True
        dispatcher.start()
        try:
            waits = []
            for _ in range(6):
                failures = flaky.failures
                await until(lambda n=failures: flaky.failures > n and clock.waiting, "a failed attempt and its wait")
                waits.append(clock.next_deadline() - clock.t)
                clock.advance(waits[-1])
            assert not dispatcher.tasks["journal"].done()
            assert health.reason is not None and "connection refused" in health.reason
            assert journal_lines(journal) == []
            flaky.down = False
            await advance_until(clock, lambda: journal_lines(journal), "the delivery", step=0.5, limit=10)
            await until(lambda: health.ok, "the outage over")
        finally:
            await dispatcher.stop(1)
            await sink.close()
    assert [e["id"] for e in journal_lines(journal)] == [event.id]
    assert 0.25 <= waits[0] <= 0.5 and all(w <= 5 for w in waits) and max(waits) >= 2.5, waits
    assert [e["event"] for e in logs if e["event"].startswith("store.")] == ["store.unavailable", "store.recovered"]
    assert (await flaky.inner.pending_counts()) == {}


async def test_a_sink_removed_while_the_store_is_away_does_not_keep_the_outage_open(flaky, tmp_path: Path) -> None:
    """A reload removes a sink whose worker waits for the store: the worker stops, and once the other parts are
    fine the outage is over (``/readyz`` reads ``StoreHealth``)."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    sink = build_sink(sink_config(name="journal", type="file", path=tmp_path / "events.jsonl"), clock=clock)
    await sink.start()
    health = StoreHealth(__import__("structlog").get_logger("test"), clock.now_ms)
    dispatcher = Dispatcher({"journal": sink}, flaky, cfg=FAST, clock=clock, health=health)
    flaky.down = True
    dispatcher.start()
    try:
        await until(lambda: not health.ok and clock.waiting, "the worker waiting for the store")
        await dispatcher.remove("journal", 1)
        assert health.ok and health.reason is None
    finally:
        await dispatcher.stop(1)
        await sink.close()


async def test_an_outcome_the_store_cannot_take_waits_and_the_delivery_is_not_sent_again(flaky) -> None:
    """The receiver took the delivery, but its outcome cannot be committed (the store went away meanwhile): the
    outcome waits in memory and is committed when the store answers; the receiver sees one request."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    receiver = Receiver()
    await receiver.start()
    event = make_event()
    await flaky.commit_sweep(upserts=[], deletes=[], events=[(event, ["ops"])], meta={}, now_ms=clock.now_ms())
    sink = build_sink(sink_config(name="ops", type="webhook", url=Secret(receiver.url())), clock=clock)
    await sink.start()
    flaky.failing = {"record_outcomes"}
    dispatcher = Dispatcher({"ops": sink}, flaky, cfg=FAST, clock=clock)
    dispatcher.start()
    try:
        await until(lambda: receiver.requests and flaky.failures >= 1, "the send, then its outcome refused")
        for _ in range(4):  # the commit is tried again and again; nothing is sent again meanwhile
            failures = flaky.failures
            await advance_until(clock, lambda n=failures: flaky.failures > n, "another commit attempt", step=1, limit=6)
        assert len(receiver.requests) == 1
        flaky.failing = set()
        await advance_until(clock, lambda: dispatcher.outcomes.recorded == 1, "the outcome committed", step=1,
                            limit=6)
        clock.advance(60)
        await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop(1)
        await sink.close()
        await receiver.stop()
    assert len(receiver.requests) == 1
    summary = await flaky.inner.summary()
    assert summary["deliveries"]["delivered"] == 1


async def test_a_store_that_answers_again_ends_the_workers_wait_at_once(flaky, tmp_path: Path) -> None:
    """A sink worker waits out an outage with backoff (up to 5 s). When another part's store call succeeds (a
    sweep commit, the lease keeper, the outcome log), the store is back: the worker tries again at once, without
    the rest of its wait (the clock does not move here at all after the store returns)."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    event = make_event()
    await flaky.commit_sweep(upserts=[], deletes=[], events=[(event, ["journal"])], meta={}, now_ms=clock.now_ms())
    journal = tmp_path / "events.jsonl"
    sink = build_sink(sink_config(name="journal", type="file", path=journal), clock=clock)
    await sink.start()
    health = StoreHealth(__import__("structlog").get_logger("test"), clock.now_ms)
    dispatcher = Dispatcher({"journal": sink}, flaky, cfg=FAST, clock=clock, health=health)
    flaky.down = True
    dispatcher.start()
    try:
        for _ in range(4):  # the waits grow towards 5 s
            failures = flaky.failures
            await until(lambda n=failures: flaky.failures > n and clock.waiting, "a failed attempt and its wait")
            clock.advance(clock.next_deadline() - clock.t)
        failures = flaky.failures
        await until(lambda: flaky.failures > failures and clock.waiting, "the worker waiting again")
        assert clock.next_deadline() - clock.t >= 2.0
        flaky.down = False
        health.succeeded("sweep")  # the sweep loop's commit went through
        await until(lambda: journal_lines(journal), "the delivery, with the clock standing still")
        await until(lambda: health.ok, "the outage over")
    finally:
        await dispatcher.stop(1)
        await sink.close()
    assert [e["id"] for e in journal_lines(journal)] == [event.id]


async def test_a_pause_recorded_by_an_earlier_process_goes_on_and_a_stale_one_is_cleared(tmp_path: Path) -> None:
    """The circuit breaker's pause is kept in the store (``sink_paused.<name>``, what ``status`` shows).
    1. A daemon starting while its webhook sink is recorded as paused goes on pausing it: nothing is sent before
       the recorded probe time, then one probe; it succeeds, so the sink resumes, sends the rest, and the record
       is cleared.
    2. A worker that starts without the record (``--once``, or a sink a reload changed: a new configuration is
       tried at once) clears a record it finds, so ``status`` never shows a pause nobody keeps."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    store = AsyncStore(Store.open(tmp_path / "state.sqlite3"))
    receiver = Receiver()
    await receiver.start()
    sink = build_sink(sink_config(name="ops", type="webhook", url=Secret(receiver.url())), clock=clock)
    await sink.start()
    try:
        events = [make_event(run_id=f"run_{i}") for i in range(3)]
        now = clock.now_ms()
        await store.commit_sweep(upserts=[], deletes=[], events=[(e, ["ops"]) for e in events], meta={},
                                 now_ms=now)
        await store.set_sink_pause("ops", since_ms=now - 60_000, next_probe_ms=now + 3_000)
        dispatcher = Dispatcher({"ops": sink}, store, cfg=FAST, clock=clock,
                                paused=await store.sink_pauses())
        dispatcher.start()
        try:
            await until(lambda: clock.waiting, "the worker waiting for its probe")
            clock.advance(2.9)
            await asyncio.sleep(0.05)
            assert receiver.requests == []  # paused: nothing before the recorded probe
            assert (await store.sink_pauses())["ops"] == (now - 60_000, now + 3_000)
            await advance_until(clock, lambda: len(receiver.requests) == 3, "the probe, then the rest", step=0.1,
                                limit=2)
            await until(lambda: dispatcher.outcomes.recorded == 3, "their outcomes")
            await until(lambda: not dispatcher.workers["ops"].breaker.open, "the sink resumed")
        finally:
            await dispatcher.stop(1)
        assert await store.sink_pauses() == {}

        await store.set_sink_pause("ops", since_ms=now, next_probe_ms=now + 5_000)  # left by an earlier process
        dispatcher = Dispatcher({"ops": sink}, store, cfg=FAST, clock=clock)
        dispatcher.start()
        try:
            await until(lambda: clock.waiting, "the worker idle")
        finally:
            await dispatcher.stop(1)
        assert await store.sink_pauses() == {}
    finally:
        await sink.close()
        await receiver.stop()
        await store.aclose()


# ------------------------------------------------------------------------------------------ the daemon


def daemon_config(base_url: str, tmp_path: Path, **server) -> Config:
    return Config(
        api=ApiConfig(base_url=base_url, api_key=Secret(KEY), timeout=5.0, max_rps=200.0),
        watch=WatchConfig(interval=1.0, state_dir=tmp_path / "state", poll_max_interval=1.0),
        delivery=DeliveryConfig(shutdown_grace=1.0),
        server=ServerConfig(**server),
        sinks=(sink_config(name="journal", type="file", path=tmp_path / "events.jsonl"),),
    )


@pytest.fixture
def flaky_stores(monkeypatch) -> list[FlakyStore]:
    """The daemon's store is wrapped in a FlakyStore (appended here when it opens)."""
    opened: list[FlakyStore] = []
    real = stores.open_async

    async def open_async(cfg, **kwargs):
        flaky = FlakyStore(await real(cfg, **kwargs))
        opened.append(flaky)
        return flaky

    monkeypatch.setattr(stores, "open_async", open_async)
    return opened


async def sweep_once_more(clock: FakeClock, recorder: Recorder, cfg: Config) -> None:
    count = len(recorder.reports)
    clock.advance(cfg.watch.interval)
    await recorder.sweeps(count + 1)


async def test_a_sweep_whose_commit_fails_loses_no_transition(flaky_stores, tmp_path: Path) -> None:
    """Nothing is detected that cannot be committed.
    1. A run ends; the sweep that sees it cannot commit (the store is away): no event.
    2. The store answers again: the next sweep reloads the state from the store (the run is still running
       there), sees the run end again, and its event is stored and delivered exactly once."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as sim:
        cfg = daemon_config(sim.base_url, tmp_path)
        journal = tmp_path / "events.jsonl"
        with capture_logs() as logs:
            async with running(cfg, clock) as (daemon, recorder):
                (flaky,) = flaky_stores
                await sweep_once_more(clock, recorder, cfg)
                run = sim.sim.create_run(technique="cctv-cam", pending_ms=100, running_ms=1500, outcome="completed")
                await sweep_once_more(clock, recorder, cfg)
                assert daemon.sweeper.tracked[run].status in ("pending", "running")
                clock.advance(2)  # the run ends
                flaky.failing = {"commit_sweep", "commit_and_claim"}
                await sweep_once_more(clock, recorder, cfg)
                assert recorder.reports[-1].sweep.ok is False
                assert "state store unreachable" in recorder.reports[-1].sweep.error
                assert daemon.sweeper.tracked[run].status == "completed"  # in memory only: ahead of the store
                flaky.failing = set()
                for _ in range(3):
                    await sweep_once_more(clock, recorder, cfg)
                await until(lambda: journal_lines(journal), "the event delivered")
                await sweep_once_more(clock, recorder, cfg)
    events = journal_lines(journal)
    assert [(e["data"]["run_id"], e["type"]) for e in events] == [(run, "run.completed")]
    assert events[0]["data"]["late"] is False  # the daemon was running: not late, just one sweep later
    assert [e["event"] for e in logs if e["event"] == "sweeper.state_reloaded"] == ["sweeper.state_reloaded"]
    assert [e["event"] for e in logs if e["event"].startswith("store.")] == ["store.unavailable", "store.recovered"]


async def test_a_store_away_while_running_is_ridden_out_and_readyz_says_so(flaky_stores, tmp_path: Path) -> None:
    """The whole store goes away for a while: the daemon stays up (every task runs), ``/readyz`` answers 503
    with the store's reason, the metric says the store is down; it comes back: ready again, a run that ended
    meanwhile is delivered, exit 0 at the stop."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as sim:
        cfg = daemon_config(sim.base_url, tmp_path, listen="127.0.0.1:0")
        journal = tmp_path / "events.jsonl"
        async with running(cfg, clock) as (daemon, recorder):
            (flaky,) = flaky_stores
            await sweep_once_more(clock, recorder, cfg)
            assert (await readyz(daemon))[0] == 200
            run = sim.sim.create_run(technique="cctv-cam", pending_ms=100, running_ms=800, outcome="completed")
            flaky.down = True
            for _ in range(5):
                await sweep_once_more(clock, recorder, cfg)
            status, body = await readyz(daemon)
            assert status == 503 and body.startswith("not ready: sweeper, state store unreachable: "), body
            assert body.endswith("failed: connection refused\n"), body
            assert not daemon.supervisor.down and not daemon.supervisor.failed.is_set()
            async with aiohttp.ClientSession() as http, http.get(daemon.server.url + "/metrics") as resp:
                assert "flora_watcher_state_store_up 0.0" in await resp.text()
            flaky.down = False
            # within the workers' longest backoff (5 s) of the store's return
            await advance_until(clock, lambda: journal_lines(journal), "the event delivered", step=0.5, limit=6)
            await sweep_once_more(clock, recorder, cfg)
            assert (await readyz(daemon))[0] == 200
    assert [(e["data"]["run_id"], e["type"]) for e in journal_lines(journal)] == [(run, "run.completed")]


async def test_the_daemon_starts_while_the_store_is_away_and_works_once_it_answers(monkeypatch, tmp_path: Path) -> None:
    """1. The state store cannot be opened: the daemon does not fail its start. It is READY (systemd's READY=1),
       STATUS= and ``/readyz`` say it waits for the store, with the store's own reason, and it tries again with
       backoff.
    2. The store answers: the daemon loads, sweeps and is ready (READY=1 again, STATUS= without the wait)."""
    from tests.integration.test_daemon_ops import NotifySocket

    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    real = stores.open_async
    refusals = {"left": 4}

    async def open_async(cfg, **kwargs):
        if refusals["left"]:
            refusals["left"] -= 1
            raise StoreUnavailable(f"state store {stores.describe(cfg)}: cannot connect: connection refused")
        return await real(cfg, **kwargs)

    monkeypatch.setattr(stores, "open_async", open_async)
    systemd = NotifySocket()
    with contextlib.closing(systemd):
        async with run_simulator(api_key=KEY, seed=3, clock=clock) as sim:
            cfg = daemon_config(sim.base_url, tmp_path, listen="127.0.0.1:0")
            env = {"NOTIFY_SOCKET": systemd.address}
            with capture_logs() as logs:
                async with running(cfg, clock, sweeps=0, env=env) as (daemon, recorder):
                    await until(lambda: refusals["left"] == 3 and systemd.index("READY"), "the first refusal")
                    assert recorder.states == [State.READY]
                    (ready,) = [systemd.messages[i][1] for i in systemd.index("READY", "1")]
                    waiting = "waiting for the state store: cannot connect: connection refused"
                    assert ready["STATUS"].endswith(f"; {waiting}"), ready
                    assert await readyz(daemon) == (
                        503, "not ready: starting, state store unreachable: cannot connect: connection refused\n")
                    assert daemon.dispatcher is None
                    await advance_until(clock, lambda: recorder.reports, "the first sweep", step=0.5, limit=30)
                    await sweep_once_more(clock, recorder, cfg)
                    assert (await readyz(daemon))[0] == 200
                    assert recorder.states == [State.READY, State.READY]
                    last = [systemd.messages[i][1] for i in systemd.index("READY", "1")][-1]
                    assert "waiting" not in last["STATUS"], last
    unavailable = [e for e in logs if e["event"] == "store.unavailable"]
    assert len(unavailable) == 1 and "connection refused" in unavailable[0]["error"]
    assert [e["event"] for e in logs if e["event"] == "store.recovered"] == ["store.recovered"]
    assert [e["event"] for e in logs if e["event"] == "daemon.started"] == ["daemon.started"]


async def test_a_store_error_no_wait_can_cure_stops_the_daemon_with_exit_1_and_a_hint(flaky_stores,
                                                                                   tmp_path: Path) -> None:
    """A corrupt file (a StoreError, not StoreUnavailable) found by the sweep: exit 1, ``store.failed`` with a
    hint for SQLite's file, not a database's."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as sim:
        cfg = daemon_config(sim.base_url, tmp_path)
        recorder = Recorder()
        daemon = Daemon(cfg, Options(install_signal_handlers=False), clock=clock, observers=[recorder])
        with capture_logs() as logs:
            task = asyncio.create_task(daemon.run())
            await recorder.sweeps(1)
            (flaky,) = flaky_stores
            flaky.reason, flaky.error = "the file is corrupt", StoreError
            flaky.failing = {"commit_sweep", "commit_and_claim"}
            clock.advance(cfg.watch.interval)
            assert await asyncio.wait_for(task, 20) == 1
    (failed,) = [e for e in logs if e["event"] == "store.failed"]
    assert "the file is corrupt" in failed["error"] and "state file" in failed["hint"]


# ------------------------------------------------------------------------- which SQLite errors are outages


def test_sqlite_errors_a_wait_can_cure_are_outages_and_the_others_are_not(tmp_path: Path) -> None:
    """Locked by another process beyond the busy timeout, and a full database (SQLite's own SQLITE_FULL, here
    from ``max_page_count``): StoreUnavailable, waited out. A file that is not a database: StoreError (stop)."""
    import sqlite3

    path = tmp_path / "state.sqlite3"
    store = Store.open(path, busy_timeout_ms=50)
    try:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable, match="locked"):
            store.set_meta({"k": "v"})
        other.execute("ROLLBACK")
        other.close()
        store.set_meta({"k": "v"})  # the lock gone: it works again, same connection

        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")
        big = {f"k{i}": "x" * 1000 for i in range(50)}
        with pytest.raises(StoreUnavailable, match="full"):
            store.set_meta(big)
        store._conn.execute(f"PRAGMA max_page_count = {pages * 100}")  # space again
        store.set_meta(big)
        assert store.get_meta("k49") == "x" * 1000
    finally:
        store.close()

    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError) as opening:
        Store.open(junk)
    assert not isinstance(opening.value, StoreUnavailable)


class Standby:
    """A lease role whose lease another instance holds (the PostgreSQL election, without PostgreSQL)."""

    token = None
    role = "standby"
    sweeping = False

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    @property
    def last_ok_ms(self) -> int:
        return self.clock.now_ms()  # its heartbeat works

    async def ready_to_sweep(self, sweeper) -> bool:
        return False

    async def stop(self) -> None:
        return None


async def test_a_sweeper_whose_commit_failed_and_that_became_a_standby_is_ready_as_a_standby(
        flaky_stores, tmp_path: Path) -> None:
    """The sweeper's commit fails in an outage; when the store is back, another instance holds the lease: this one
    is a standby now, its store works (heartbeat, deliveries), so it is ready as a standby, not stuck on the sweep
    that failed before (seen in the chaos suite's 40 s outage)."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as sim:
        cfg = daemon_config(sim.base_url, tmp_path, listen="127.0.0.1:0")
        async with running(cfg, clock) as (daemon, recorder):
            (flaky,) = flaky_stores
            flaky.failing = {"commit_sweep", "commit_and_claim"}
            await sweep_once_more(clock, recorder, cfg)
            assert (await readyz(daemon))[0] == 503
            flaky.failing = set()
            daemon.role = Standby(clock)  # the lease went to another instance meanwhile
            await sweep_once_more(clock, recorder, cfg)
            assert await readyz(daemon) == (200, "ok: standby, lease heartbeat 0.0s ago, another instance sweeps\n")


async def test_a_look_that_failed_in_an_outage_does_not_keep_readyz_down_after_it(flaky_stores,
                                                                                 tmp_path: Path) -> None:
    """A between-sweeps look (push + poll) that met the store away counts for the outage; the first sweep that
    commits once the store is back ends it (a look may not come again for a long time)."""
    from watcher.errors import StoreUnavailable as Away

    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    async with run_simulator(api_key=KEY, seed=3, clock=clock) as sim:
        cfg = daemon_config(sim.base_url, tmp_path, listen="127.0.0.1:0")
        async with running(cfg, clock) as (daemon, recorder):
            daemon.store_health.failed("look", Away("state store x: commit_sweep failed: connection refused"))
            assert (await readyz(daemon))[0] == 503
            await sweep_once_more(clock, recorder, cfg)
            assert (await readyz(daemon))[0] == 200
