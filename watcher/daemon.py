"""The daemon's lifecycle, read top to bottom: ``startup()`` → ``main_loop()`` → ``shutdown()``.

The daemon does the work: it sweeps, hands events to the dispatcher, reloads and stops. Everything that only
*shows* the work — Prometheus metrics, systemd's READY/STATUS/watchdog, the ``/readyz`` health record, the live
table on a terminal — subscribes to one observer interface (``watcher.observer``) and is told about every
lifecycle state, sweep and delivery; the daemon updates none of them by hand.

Every long-lived task runs under one ``Supervisor`` (``watcher.supervisor``): the sweep loop (``sweep-loop``),
each sink worker (``sink:<name>``), the lease keeper (``lease``), the HTTP server (``http-server``) and the
watchdog feeder (``watchdog``). One that dies is logged at once, restarted with backoff and named by
``/readyz`` while down; an error no restart can cure (``is_fatal``: the API key refused, a state store that is
corrupt or newer than this version) stops the daemon with exit 1.

A state store that is away (``StoreUnavailable``: PostgreSQL down or restarting, SQLite locked or its disk
full) is an outage, not an exit: at start the daemon is READY and waits for it (STATUS= and ``/readyz`` say
so); while running, each part that uses it waits it out with backoff (``StoreHealth`` logs it quietly), and a
sweep that could not commit leaves nothing behind: the sweeper reloads its state from the store before it
sweeps again, so a transition seen then is seen again, and reported, once the store is back.

Signal handlers only set flags (``request_stop``, ``request_reload``); the loop acts on them between sweeps.
Every wait of the loop is on the injected ``Clock``, so tests step it with a fake one. Shutdown mirrors startup
in reverse: STOPPING, stop sweeping, let in-flight deliveries finish within the grace period (their outcome is
recorded), cancel the rest (still pending, sent after the next start), close.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from watcher import __version__, exits, lease, plan, stores
from watcher.api import FloraClient
from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import Config, SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.errors import AuthError, ConfigError, StoreError, StoreUnavailable, WatcherError
from watcher.observer import HealthObserver, Observer, Observers, Report, State
from watcher.outage import StoreHealth, store_retry_s
from watcher.readiness import STARTING, SWEEPER
from watcher.settings import in_force, restart_only_changes
from watcher.sinks.dryrun import DryRunSink
from watcher.sinks.spec import Sink, delivery_targets
from watcher.supervisor import Supervisor
from watcher.sweep import Sweeper, SweepResult
from watcher.validate import check_start

if TYPE_CHECKING:
    from watcher.metrics import Metrics
    from watcher.push import Push
    from watcher.server import HealthSource, Server, StatusPage
    from watcher.store_api import StateStore
    from watcher.systemd import Notifier, WatchdogFeeder

log = structlog.get_logger("watcher.daemon")

EXIT_OK = exits.OK
EXIT_FATAL = exits.FAILURE
EXIT_CONFIG = exits.USAGE  # what cli.py exits with for a ConfigError; recorded here so daemon.stopped says it too
PRUNE_EVERY_MAX_S = 3600.0  # delivered history is pruned at least this often (and every keep_delivered / 4)
LOOK_GAP_S = 0.25  # between two looks for runs FLORA's callbacks named (each costs a listing page per resource)


def is_fatal(exc: BaseException) -> bool:
    """An error no restart of a task can cure: the daemon stops (exit 1). The API key refused (``AuthError``),
    and a state store that cannot be used however long one waits (``StoreError``: corrupt, a schema written by a
    newer version, read-only, an SQL error). A store that is away (``StoreUnavailable``) is waited out, a lost
    lease (``LeaseLost``) is a standby's business, anything else is a bug: the task is restarted."""
    if isinstance(exc, AuthError):
        return True
    return isinstance(exc, StoreError) and not isinstance(exc, StoreUnavailable | lease.LeaseLost)


def store_hint(cfg: Config) -> str:
    """What to check when the state store failed for good, per back end."""
    if cfg.store.url is not None:
        return ("check the database: the server's log, the schema (a newer flora-watcher's?) and the role's "
                "grants on it")
    return ("check the state file and its directory: the disk, the permissions (the service's user), a corrupt "
            "file (move it aside or restore a backup)")


@dataclass(slots=True)
class Options:
    once: bool = False  # one sweep, deliver what is due, exit
    dry_run: bool = False  # decide from an in-memory copy of the state; print events, send nothing
    config_path: str | None = None  # for SIGHUP reload; None = reload from the search order
    reload: Callable[[], Config] | None = None  # how to re-read the config (defaults to config.load)
    install_signal_handlers: bool = True
    live_view: bool = False  # draw the live table (a terminal; never with once or dry_run)


class Daemon:
    def __init__(self, cfg: Config, options: Options | None = None, *, clock: Clock = SYSTEM_CLOCK,
                 env: dict[str, str] | None = None, observers: Iterable[Observer] = ()) -> None:
        self.cfg = cfg
        self.opts = options or Options()
        self.clock = clock
        self.env = dict(os.environ if env is None else env)
        self.observers = Observers(observers)  # more can subscribe until startup() (a status page, a test)
        self.rand = random.Random()
        # Requests (set by signal handlers, acted on by the loop).
        self.stop_event = asyncio.Event()
        self.reload_event = asyncio.Event()
        self.force_exit = False
        self._wakeup = asyncio.Event()  # set by either request: ends the wait between sweeps early
        # Built by startup(), released by shutdown().
        self.store: StateStore | None = None
        self.role: lease.SweeperRole | None = None  # with a PostgreSQL store: whether this instance sweeps
        self.sinks: dict[str, Sink] = {}
        self.client: FloraClient | None = None
        self.sweeper: Sweeper | None = None
        self.dispatcher: Dispatcher | None = None
        self.metrics: Metrics | None = None  # /metrics, and the API client's request counts
        self.health: HealthSource | None = None  # what /readyz answers
        self.notifier: Notifier | None = None  # a no-op outside systemd
        self.feeder: WatchdogFeeder | None = None  # when systemd's watchdog watches us
        self.server: Server | None = None
        self.page: StatusPage | None = None  # the status page's data, when [server] listen is set
        # Every long-lived task, restarted when it dies (told to the observers: metrics count it).
        self.supervisor = Supervisor(clock=clock, rand=self.rand, on_event=self.observers.on_task)
        # Whether the state store answers, as every part that uses it finds out (quiet store.* lines).
        self.store_health = StoreHealth(
            log, clock.now_ms, on_change=lambda ok, error: self.observers.on_store(ok, error and self._short(error)))
        self._state_stale = False  # a sweep ended without its commit: reload the sweeper's state before the next
        self.push: Push | None = None  # [ingress]: FLORA's callbacks, confirmed and fed to the sweep's rules
        self._next_look = 0.0  # clock.monotonic() before which the loop does not look again
        # What the last sweep left behind.
        self.last_report: Report | None = None
        self._last_prune: float | None = None  # clock.monotonic() of the last prune of delivered history
        self._api_waited_s = 0.0  # the client's rate-limit waits already reported
        self.exit_code = EXIT_OK

    # ------------------------------------------------------------------------------------------ signals

    def request_stop(self) -> None:
        if self.stop_event.is_set():
            self.force_exit = True  # a second Ctrl-C: stop waiting for deliveries
            log.warning("daemon.force_exit")
        self.supervisor.stopping = True  # a task that ends from now on is not restarted
        self.stop_event.set()
        self._wakeup.set()

    def request_reload(self) -> None:
        self.reload_event.set()
        self._wakeup.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    # ---------------------------------------------------------------------------------------------- run

    async def run(self) -> int:
        try:
            await self.startup()
        except ConfigError as exc:  # a config problem found at start: cli.py exits 2, as check-config would
            log.error("daemon.startup_failed", error=str(exc))
            self.exit_code = EXIT_CONFIG  # before shutdown(), which logs daemon.stopped with it
            await self.shutdown()
            raise
        except (StoreError, WatcherError) as exc:
            log.error("daemon.startup_failed", error=str(exc))
            self.exit_code = EXIT_FATAL
            await self.shutdown()
            return self.exit_code
        try:
            await self.main_loop()
        except AuthError as exc:
            log.error("api.auth_failed", error=str(exc),
                      hint="the API key was refused (revoked or rotated?); fix it and restart")
            self.exit_code = EXIT_FATAL
        except StoreError as exc:  # corrupt, read-only, newer schema: waiting will not help (an outage is waited out)
            log.error("store.failed", error=str(exc), hint=store_hint(self.cfg))
            self.exit_code = EXIT_FATAL
        finally:
            await self.shutdown()
        return self.exit_code

    # ------------------------------------------------------------------------------------------ startup

    async def startup(self) -> None:
        """Observers, sinks, API client, server; the state store, the sweeper's state, the lease role and the
        dispatcher (``connect``); then READY.

        READY means the service has started: the configuration is valid, the sinks are built, ``/readyz``
        answers, and the state store is open — or is away and waited for. Then READY comes at the first failed
        attempt (STATUS= "waiting for the state store: …", ``/readyz`` 503 "state store unreachable: …") and
        again once it opens: a database outage is not a failed start, which systemd would retry a few times and
        then give up on. Not waiting on the API either. Returns early when a stop is requested while waiting
        (``self.dispatcher`` stays None)."""
        cfg = self.cfg
        if self.opts.install_signal_handlers:
            self._install_signal_handlers()
        self._subscribe_builtin_observers()
        self.sinks = await self._build_sinks(self._sink_configs(cfg))
        self.client = self._make_client(cfg)
        if cfg.server.listen and not self.opts.once:
            from watcher.server import StatusPage, start_server

            assert self.metrics is not None and self.health is not None
            self.page = StatusPage(None, sink_types=self.sink_types, clock=self.clock, health=self.health)
            self.observers.subscribe(self.page)
            self.server = await start_server(cfg.server.listen, self.metrics, self.health, self.page)
            self.supervisor.start("http-server", self.server.serve)
        if not await self.connect():
            return
        if cfg.ingress.enabled and not self.opts.once and not self.opts.dry_run:
            await self._start_push()
        elif cfg.ingress.enabled:
            log.info("ingress.off", reason="--once" if self.opts.once else "--dry-run",
                     note="FLORA callbacks are taken by `flora-watcher run` only")
        self._ready()
        state = ":memory:" if self.opts.dry_run else stores.describe(cfg)
        log.info("daemon.started", version=__version__, state=state, sinks=list(self.sinks),
                 interval=cfg.watch.interval, dry_run=self.opts.dry_run, once=self.opts.once)

    async def connect(self) -> bool:
        """Open the state store and everything that needs it, waiting out a store that is away (backoff 0.5 s
        doubling to 5 s; ``--once`` and ``--dry-run`` do not wait). False when a stop was requested meanwhile."""
        attempt = 0
        while True:
            try:
                await self._open_state()
            except StoreUnavailable as exc:
                if self.opts.once or self.opts.dry_run:
                    raise
                self.store_health.failed("open", exc)
                if attempt == 0:
                    self._ready()  # started; what it waits for, STATUS= and /readyz say
                self._progress()  # waiting for the database is not a wedge: a restart would not bring it back
                with contextlib.suppress(TimeoutError):
                    await self.clock.wait_for(self.stop_event.wait(), store_retry_s(attempt, self.rand.random()))
                if self.stop_event.is_set():
                    return False
                attempt += 1
                continue
            self.store_health.succeeded("open")
            return True

    async def _open_state(self) -> None:
        """Each step once; a step that failed is done again by the next call."""
        cfg = self.cfg
        if self.store is None:
            # SQLite in state_dir, or PostgreSQL ([store] url); --dry-run decides from an in-memory copy
            self.store = await stores.open_async(cfg, dry_run=self.opts.dry_run)
        if self.sweeper is None:
            self.sweeper = Sweeper(self.client, self.store, watch=cfg.watch, sinks=self._sink_configs(cfg),  # type: ignore[arg-type]
                                   clock=self.clock, rand=self.rand, process_start_ms=self.clock.now_ms(),
                                   on_progress=self._progress, on_commit=self._committed)
        await self.sweeper.load()
        if cfg.store.url is not None and not self.opts.dry_run and self.role is None:
            # several instances: one sweeps, all deliver
            self.role = lease.SweeperRole(
                self.store, scope=lease.scope_of(cfg.api.base_url, cfg.watch.workspace_id, cfg.watch.project_id,
                                                 cfg.watch.technique_id, cfg.watch.resources),
                lease_s=cfg.store.lease, interval_s=cfg.watch.interval, version=__version__, clock=self.clock,
                health=self.store_health)
            await self.role.start()  # a store away now is waited out by the lease keeper
        disabled: dict[str, str | None] = {}
        paused: dict[str, tuple[int, int | None]] = {}
        if not self.opts.dry_run:
            states = await self.store.sink_states()
            disabled = {name: st.disabled_reason for name, st in states.items() if name in self.sinks}
            if not self.opts.once:  # a paused sink stays paused across a restart (its probes go on)
                paused = {name: p for name, p in (await self.store.sink_pauses()).items() if name in self.sinks}
            await self._dead_letter_removed_sinks()
        self.dispatcher = Dispatcher(self.sinks, self.store, cfg=cfg.delivery, clock=self.clock, rand=self.rand,
                                     disabled=disabled, on_outcome=self.observers.on_delivery,
                                     supervisor=self.supervisor, fatal=is_fatal, health=self.store_health,
                                     ride_out=not self.opts.once, paused=paused)
        self.sweeper.handoff = self.dispatcher  # each commit's new deliveries go straight to the workers
        if self.page is not None:
            self.page.store = self.store

    def _ready(self) -> None:
        """READY to the observers (systemd's READY=1 and STATUS=); the watchdog feeder starts with the first."""
        self.observers.on_state(State.READY, self.snapshot())
        if self.supervisor.task("watchdog") is None:
            self._start_watchdog()

    async def _start_push(self) -> None:
        """The ingress listener (bound now: an address in use fails the start) and the confirmer task."""
        from watcher.push import Push

        assert self.store is not None and self.sweeper is not None
        self.push = Push(self.cfg.ingress, store=self.store, sweeper=self.sweeper, client=self._client,
                         clock=self.clock, active=self._confirms, shared_store=self.cfg.store.url is not None,
                         observer=self.observers, wake=self._wakeup.set)
        if self.metrics is not None:
            self.metrics.ingress_enabled()
        await self.push.start()
        self.supervisor.start("ingress", self.push.ingress.serve)
        self.supervisor.start("confirmer", self.push.confirmer.run)
        if self.page is not None:
            self.page.ingress = self.push.status

    def _client(self) -> FloraClient:
        assert self.client is not None
        return self.client

    def _confirms(self) -> bool:
        """Whether this instance confirms callbacks now: it sweeps (alone, or holding the lease with the state
        loaded under it) and has swept once since (the first sweep decides what is new)."""
        if self.sweeper is None or self.sweeper.sweeps == 0 or self._state_stale:
            return False
        return self.role is None or self.role.sweeping

    def _subscribe_builtin_observers(self) -> None:
        from watcher import systemd
        from watcher.metrics import Metrics
        from watcher.server import HealthSource

        self.metrics = metrics = Metrics()
        self.health = health = HealthSource(
            interval=self.cfg.watch.interval, clock=self.clock, role=self.role_name, store_error=self.store_error,
            tasks_down=lambda: {name: down.error for name, down in self.supervisor.down.items()},
            last_heartbeat_ok_ms=lambda: None if self.role is None else self.role.last_ok_ms,
            heartbeat_window=self.cfg.store.lease)
        self.notifier = notifier = systemd.Notifier.from_env(self.env)
        ping_every = systemd.watchdog_interval(self.env)
        if ping_every and not self.opts.once:
            self.feeder = systemd.WatchdogFeeder(period=self._wedge_period(self.cfg), started=self.clock.monotonic())
        builtin: list[Observer] = [metrics, HealthObserver(health), systemd.SystemdObserver(notifier, self.feeder)]
        if self.opts.live_view and not self.opts.once and not self.opts.dry_run:
            from watcher.liveview import LiveViewObserver

            # a stdout sink prints each event above the table already: the table then does not list them again
            stdout_sink = any(s.type == "stdout" for s in self.cfg.sinks)
            builtin.append(LiveViewObserver(clock=self.clock, list_events=not stdout_sink))
        self.observers.subscribers[:0] = builtin

    def _wedge_period(self, cfg: Config) -> float:
        from watcher import systemd

        return systemd.wedge_period(systemd.watchdog_interval(self.env) or 0.0, cfg.watch.interval, cfg.api.timeout)

    def _start_watchdog(self) -> None:
        """Ping systemd's watchdog every half WatchdogSec while the loop makes progress (after READY=1)."""
        from watcher import systemd

        ping_every = systemd.watchdog_interval(self.env)
        feeder, notifier = self.feeder, self.notifier
        if feeder is not None and notifier is not None and ping_every:
            self.supervisor.start("watchdog", lambda: feeder.run(notifier, ping_every, self.clock,
                                                                  busy=self._api_paused))

    def _sink_configs(self, cfg: Config) -> list[SinkConfig]:
        """Where events are routed: the configured sinks' delivery targets (a sink, or each URL of an apprise
        sink: ``spec.delivery_targets``), or ``--dry-run``'s one printing sink."""
        if self.opts.dry_run:
            return [DryRunSink(events=cfg.watch.events).config]
        return list(delivery_targets(cfg.sinks))  # an apprise sink: one target per URL

    async def _build_sinks(self, configs: Iterable[SinkConfig]) -> dict[str, Sink]:
        if self.opts.dry_run:
            dry = DryRunSink(events=self.cfg.watch.events)
            return {dry.name: dry}
        from watcher.sinks.registry import build_sink

        built: dict[str, Sink] = {}
        try:
            for sc in configs:
                sink = build_sink(sc, clock=self.clock)
                await sink.start()
                built[sc.name] = sink
        except Exception:
            for sink in built.values():
                with contextlib.suppress(Exception):
                    await sink.close()
            raise
        return built

    def _make_client(self, cfg: Config) -> FloraClient:
        self._api_waited_s = 0.0
        return FloraClient(cfg.api.base_url, cfg.api.api_key, timeout=cfg.api.timeout, max_rps=cfg.api.max_rps,
                           clock=self.clock, on_request=self._on_api_request)

    async def _dead_letter_removed_sinks(self) -> None:
        """Deliveries pending for a sink that is no longer configured become dead letters, never lost."""
        assert self.store is not None
        pending = await self.store.pending_counts()
        for name, count in pending.items():
            if name not in self.sinks and count:
                n = await self.store.dead_letter_sink(name, now_ms=self.clock.now_ms(),
                                                      reason="sink removed from the configuration")
                log.warning("sink.removed_dead_lettered", sink=name, deliveries=n,
                            hint="re-add the sink and run `flora-watcher replay --failed` to send them")

    # -------------------------------------------------------------------------------------- main loop

    async def main_loop(self) -> None:
        """``--once``: one sweep, then deliver what is due. Otherwise the supervised tasks run — the sweep loop
        (a sweep every interval without drift, reloads between sweeps), the sink workers, the lease keeper —
        until a stop is requested, or a task meets an error no restart can cure (raised here)."""
        if self.dispatcher is None:  # stopped while waiting for the state store
            return
        if self.opts.once:
            result = await self.sweep()
            await self.dispatcher.drain_due()
            if not result.ok:
                self.exit_code = EXIT_FATAL
            return
        self.dispatcher.start()
        if self.role is not None:
            self.supervisor.start("lease", self.role.run, fatal=is_fatal)
        self.supervisor.start("sweep-loop", self._sweep_loop, fatal=is_fatal)
        stopped = asyncio.ensure_future(self.stop_event.wait())
        failed = asyncio.ensure_future(self.supervisor.failed.wait())
        try:
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            failed.cancel()
        if self.supervisor.failure is not None and not self.stop_event.is_set():
            raise self.supervisor.failure

    async def _sweep_loop(self) -> None:
        """The supervised task ``sweep-loop``: sweep, wake the workers, reload if asked, wait for the next sweep
        (without drift), until a stop is requested."""
        assert self.dispatcher is not None
        while not self.stop_event.is_set():
            started = self.clock.monotonic()
            # A full sweep lists every new run: it answers the looks asked for before it starts.
            _, waiters = self.push.looks.take() if self.push is not None else ({}, [])
            try:
                swept = await self._sweep_unless_stopped()
            except BaseException as exc:
                self._settle_looks(waiters, exc)
                raise
            self._settle_looks(waiters, self._looks_answer(swept))
            if not swept:
                break
            # Once a turn (a sweep, or a standby's turn) every sink worker reads the outbox, whatever the commits
            # handed over: on PostgreSQL the claims of an instance that died (with deliveries in hand, claimed in
            # its sweep commits) are taken over only by a claim, and an idle worker's recheck counts a claim of
            # another instance as due only when it expires (300 s), not when its instance stops beating.
            self.dispatcher.wake()
            if self.push is not None:  # callbacks recorded while this instance could not confirm (or by others)
                self.push.confirmer.kick()
            await self._reload_if_requested()
            await self._idle_until(plan.next_sweep_at(started, self.cfg.watch.interval, self.clock.monotonic()))
            await self._reload_if_requested()

    async def _sweep_unless_stopped(self) -> bool:
        """One sweep, abandoned (cancelled) when a stop is requested meanwhile. False when stopped."""
        sweep_task = asyncio.create_task(self.sweep())
        stop_task = asyncio.create_task(self.stop_event.wait())
        try:
            await asyncio.wait({sweep_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this task is cancelled (shutdown): the sweep goes with it
            stop_task.cancel()
            if not sweep_task.done():
                sweep_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweep_task
        if sweep_task.cancelled():
            return False
        sweep_task.result()  # re-raises AuthError and StoreError
        return True

    async def _idle_until(self, deadline: float) -> None:
        """Wait until the clock's monotonic ``deadline``, or until a stop or reload is requested. Meanwhile, look
        for the runs FLORA's callbacks named (``Push.looks``), at most every ``LOOK_GAP_S``."""
        while True:
            self._wakeup.clear()
            if self.stop_event.is_set() or self.reload_event.is_set():
                return
            now = self.clock.monotonic()
            if now >= deadline:
                return
            looks = self.push is not None and bool(self.push.looks)
            if looks and now >= self._next_look:
                await self._look()
                continue
            until = min(deadline, self._next_look) if looks else deadline
            with contextlib.suppress(TimeoutError):
                await self.clock.wait_for(self._wakeup.wait(), until - now)

    async def _look(self) -> None:
        """One look at the top of the listings for the runs callbacks named (``Sweeper.look``), between sweeps."""
        assert self.push is not None and self.sweeper is not None
        wanted, waiters = self.push.looks.take()
        self._next_look = self.clock.monotonic() + LOOK_GAP_S
        try:
            if self.role is not None and not self.role.sweeping:
                raise lease.LeaseLost("this instance does not sweep now")
            if self._state_stale:  # the next sweep reloads the state first; the callbacks wait for it
                self._settle_looks(waiters, StoreUnavailable("the sweeper's state is reloaded at the next sweep"))
                return
            await self.sweeper.look(wanted)
        except lease.LeaseLost as exc:
            if self.role is not None and self.role.token is not None:
                log.warning("sweeper.fenced_out", error=str(exc))
                self.role.lost()
            self._settle_looks(waiters, exc)
        except StoreUnavailable as exc:  # nothing of the look was committed: the memory is ahead of the store
            self._state_stale = True
            self.store_health.failed("look", exc)
            self._settle_looks(waiters, exc)
        except (WatcherError, OSError) as exc:  # the API (or a store error the sweeps will meet too)
            self._settle_looks(waiters, exc)
        except Exception as exc:  # a bug: logged, the callbacks stay recorded and the sweeps still see the runs
            log.exception("look.crashed", error=f"{type(exc).__name__}: {exc}")
            self._state_stale = True  # what the look observed may not be committed
            self._settle_looks(waiters, exc)
        else:
            self.store_health.succeeded("look")
            self._settle_looks(waiters)

    def _settle_looks(self, waiters: list[asyncio.Future[None]], error: BaseException | None = None) -> None:
        if waiters:
            from watcher.confirm import Looks

            Looks.settle(waiters, error)

    def _looks_answer(self, swept: bool) -> BaseException | None:
        """What the looks a full sweep was to answer get: nothing when it swept, else why not."""
        if self.role is not None and not self.role.sweeping:
            return lease.LeaseLost("this instance does not sweep now")
        report = self.last_report
        if not swept or (report is not None and report.sweep is not None and not report.sweep.ok):
            return _SweepFailed()
        return None

    async def _reload_if_requested(self) -> None:
        if self.reload_event.is_set() and not self.stop_event.is_set():
            await self.reload()

    async def sweep(self) -> SweepResult:
        """One sweep, housekeeping, then every observer hears of it. An unexpected error is logged and counts
        as a failed sweep (the daemon stays up), and so does a state store that is away; AuthError and a
        StoreError no wait can cure end the daemon.

        Nothing is detected that cannot be committed: a sweep changes the sweeper's memory (tracked runs,
        watermarks) before its commit, so one that ended without it (the store away, a bug) leaves the memory
        ahead of the store. The next sweep first reloads the state from the store (and lists the active runs
        in full): a transition seen by the lost sweep is seen again, and its event stored, once."""
        assert self.sweeper is not None
        started = self.clock.monotonic()
        try:
            if not await self._ready_to_sweep():
                self._progress()  # standby: another instance sweeps this scope; this one delivers
                # A sweep or prune that failed before this instance became a standby is no outage of its own:
                # a standby uses the store to deliver and to heartbeat, and those parts tell their own health.
                for part in ("sweep", "prune", "look"):
                    self.store_health.forget(part)
                await self._report(None)
                return SweepResult(ok=True)
            result = await self.sweeper.sweep()
        except lease.LeaseLost as exc:  # another instance took over while we swept: we committed nothing
            log.warning("sweeper.fenced_out", error=str(exc))
            if self.role is not None:
                self.role.lost()
            return SweepResult(ok=True)
        except AuthError:
            await self._report(SweepResult(ok=False, error="authentication failed",
                                           seconds=self.clock.monotonic() - started))
            raise
        except StoreUnavailable as exc:  # an outage: the store.* lines tell it; nothing of the sweep is kept
            self._state_stale = True
            self.store_health.failed("sweep", exc)
            result = SweepResult(ok=False, error=f"state store unreachable: {self._short(exc)}",
                                 seconds=self.clock.monotonic() - started)
            await self._report(result)
            return result
        except (asyncio.CancelledError, StoreError):
            raise
        except Exception as exc:  # a bug or an input we did not foresee: log it, keep the daemon alive
            log.exception("sweep.crashed", error=f"{type(exc).__name__}: {exc}")
            self._state_stale = True
            result = SweepResult(ok=False, error=f"internal error: {type(exc).__name__}",
                                 seconds=self.clock.monotonic() - started)
        else:  # committed: a look that failed before (the same listings, the same store) is over too
            self.store_health.succeeded("sweep")
            self.store_health.succeeded("look")
        await self._prune_history()
        await self._report(result)
        return result

    async def _ready_to_sweep(self) -> bool:
        """Whether this instance sweeps now (a standby does not); first, when the last sweep ended without its
        commit, the sweeper's state comes back from the store (and the next listing is a full resync)."""
        assert self.sweeper is not None
        if self.role is not None and not await self.role.ready_to_sweep(self.sweeper):
            return False
        if self._state_stale:
            await self.sweeper.load()
            self.sweeper.last_resync_ms = None
            self._state_stale = False
            log.info("sweeper.state_reloaded", note="the last sweep was not committed; its transitions are seen again")
        return True

    async def _prune_history(self) -> None:
        """Delivered events older than [delivery].keep_delivered leave the state store (pending deliveries and
        dead letters stay), so the store does not grow without bound. After a sweep, at most every
        keep_delivered / 4 and at least hourly."""
        keep = self.cfg.delivery.keep_delivered
        now = self.clock.monotonic()
        if self._last_prune is not None and now - self._last_prune < min(PRUNE_EVERY_MAX_S, keep / 4):
            return
        assert self.store is not None
        try:
            removed = await self.store.prune(now_ms=self.clock.now_ms(), keep_done_ms=int(keep * 1000))
        except StoreUnavailable as exc:  # tried again after the next sweep
            self.store_health.failed("prune", exc)
            return
        self.store_health.succeeded("prune")
        self._last_prune = now
        if removed:
            log.info("store.pruned", rows=removed, keep_delivered=keep)

    async def _report(self, result: SweepResult | None) -> None:
        """Tell every observer about a finished sweep (None: a standby instance's turn of the loop, no sweep of
        its own), with the outbox as it is now."""
        assert self.store is not None and self.client is not None
        before = self.last_report
        try:
            depth = await self.store.pending_counts()
            oldest = await self.store.oldest_pending_ms()
        except StoreUnavailable as exc:  # the outbox as last seen
            self.store_health.failed("status", exc)
            depth = dict(before.outbox) if before is not None else {}
            age = before.oldest_pending_age_s if before is not None else None
        else:
            self.store_health.succeeded("status")
            age = None if oldest is None else max(0.0, (self.clock.now_ms() - oldest) / 1000.0)
        waited = self.client.stats.rate_limit_wait_seconds + self.client.stats.throttle_wait_seconds
        self.last_report = dataclasses.replace(
            self.snapshot(), sweep=result, outbox=depth, api_wait_s=max(0.0, waited - self._api_waited_s),
            oldest_pending_age_s=age)
        self._api_waited_s = waited
        self.observers.on_sweep(self.last_report)

    def snapshot(self) -> Report:
        """The daemon's picture now: the tracked runs and configuration in force, the last sweep's outcome."""
        base: dict[str, Any] = dict(now_ms=self.clock.now_ms(), monotonic=self.clock.monotonic(),
                    runs=self.sweeper.tracked if self.sweeper is not None else {},
                    sinks=tuple(self.sinks), interval=self.cfg.watch.interval, store_error=self.store_error())
        if self.last_report is None:
            return Report(**base)
        return dataclasses.replace(self.last_report, api_wait_s=0.0, **base)

    def role_name(self) -> str:
        """``starting`` until the state store is open, then ``sweeper`` or (another instance holds the lease of
        this watch scope) ``standby``."""
        if self.dispatcher is None:
            return STARTING
        return self.role.role if self.role is not None else SWEEPER

    def store_error(self) -> str | None:
        """Why the state store does not answer now (None: it does), without the store's name."""
        reason = self.store_health.reason
        return None if reason is None else self._short(reason)

    def _short(self, error: BaseException | str) -> str:
        text = str(error)
        for name in (self.store.path if self.store is not None else None, stores.describe(self.cfg)):
            if name and text.startswith(f"state store {name}: "):
                return text[len(f"state store {name}: "):]
        return text

    def sink_types(self) -> dict[str, str]:
        """Configured sink name → type, for the status page (never a URL or a secret)."""
        return {s.name: s.type for s in self._sink_configs(self.cfg)}

    # ----------------------------------------------------------------------------------- liveness hooks

    def _progress(self) -> None:
        """A page, a poll or an API request finished: the loop is not wedged."""
        if self.feeder is not None:
            self.feeder.progress(self.clock.monotonic())

    def _committed(self, result: SweepResult) -> None:
        """A sweep (or a batch of a catch-up, or a callback's look or confirmation) is committed. (Its deliveries
        went to the sink workers with the commit: ``Sweeper.handoff``.)"""
        if result.callback and result.new_event_ids:
            new = set(result.new_event_ids)
            self.observers.on_events([e for e in result.events if e.id in new])

    def _on_api_request(self, route: str, outcome: str, seconds: float) -> None:
        """Every API request that ended (answered, refused or timed out) is headway of the loop."""
        if self.metrics is not None:
            self.metrics.api_request(route, outcome, seconds)
        self._progress()

    def _api_paused(self) -> bool:
        """Waiting out the API's 429 pause is not a wedge (the watchdog keeps being fed meanwhile)."""
        return self.client is not None and self.client.limiter.pause_remaining() > 0

    # --------------------------------------------------------------------------------------------- reload

    async def reload(self) -> None:
        """SIGHUP: re-read and validate the config, swap it in whole; keep the old one when the new is invalid."""
        self.reload_event.clear()
        self.observers.on_state(State.RELOADING, self.snapshot())
        try:
            if self.opts.reload is not None:
                new = self.opts.reload()
            else:
                from watcher.config import load
                from watcher.sinks.registry import REGISTRY

                new = load(self.opts.config_path, sink_types=REGISTRY)
            restart_only = restart_only_changes(self.cfg, new)
            new = in_force(self.cfg, new)  # what runs until the next start; that is what must pass the checks
            check_start(new)
        except ConfigError as exc:
            log.error("config.reload_rejected", error=str(exc), note="keeping the running configuration")
            self.observers.on_state(State.READY, self.snapshot())
            return
        old = self.cfg
        if not self.opts.dry_run:
            try:
                await self._swap_sinks(old, new)
            except Exception as exc:
                log.error("config.reload_rejected", error=f"a sink failed to start: {exc}",
                          note="keeping the running configuration")
                self.observers.on_state(State.READY, self.snapshot())
                return
        assert self.client is not None and self.sweeper is not None
        if new.api != old.api:
            await self.client.close()
            self.client = self._make_client(new)
            self.sweeper.client = self.client
        if self.push is not None:
            self.push.reconfigure(new.ingress)
        self.cfg = new
        self.sweeper.replace_config(new.watch, self._sink_configs(new))
        if self.feeder is not None:  # a longer interval must not read as a wedged loop
            self.feeder.period = self._wedge_period(new)
        if restart_only:
            log.warning("config.reload_needs_restart", keys=list(restart_only),
                        note="kept as they are until the next start (restart the service to apply them); the rest "
                             "of the new configuration is in force")
        self._warn_scope_kept(new)
        log.info("config.reloaded", sinks=list(self.sinks), interval=new.watch.interval)
        self.observers.on_state(State.READY, self.snapshot())

    def _warn_scope_kept(self, new: Config) -> None:
        """Several instances elect their sweeper per watch scope (API URL, filters, resources), fixed at the
        start: a reload that changes it sweeps the new scope at once but is elected under the old one."""
        if self.role is None:
            return
        scope = lease.scope_of(new.api.base_url, new.watch.workspace_id, new.watch.project_id,
                               new.watch.technique_id, new.watch.resources)
        if scope != self.role.scope:
            log.warning("config.reload_scope_kept", note="the sweeps use the new API URL, filters or resources now; "
                        "the sweeper is still elected under the old watch scope until the next start: restart "
                        "every instance of this scope (or give them all the same reload)")

    async def _swap_sinks(self, old: Config, new: Config) -> None:
        """Unchanged sinks keep their worker; removed or changed ones stop (their in-flight send may finish
        within the grace period); new or changed ones start enabled."""
        assert self.dispatcher is not None and self.store is not None
        old_by_name = {s.name: s for s in self._sink_configs(old)}
        keep: dict[str, Sink] = {}
        fresh: dict[str, Sink] = {}
        try:
            for sc in self._sink_configs(new):
                if old_by_name.get(sc.name) == sc and sc.name in self.sinks:
                    keep[sc.name] = self.sinks[sc.name]
                else:
                    fresh.update(await self._build_sinks([sc]))
        except Exception:
            for sink in fresh.values():
                with contextlib.suppress(Exception):
                    await sink.close()
            raise
        grace = self.cfg.delivery.shutdown_grace
        for name in [n for n in self.sinks if n not in keep]:
            await self.dispatcher.remove(name, grace)
            with contextlib.suppress(Exception):
                await self.sinks[name].close()
        self.sinks = {**keep, **fresh}
        self.dispatcher.set_config(new.delivery)
        for sink in fresh.values():
            self.dispatcher.add(sink)
        try:
            for name in fresh:
                # A new or changed sink starts enabled: a config change is how a 410-disabled sink is fixed.
                await self.store.set_sink_state(name, disabled_reason=None, now_ms=self.clock.now_ms())
            await self._dead_letter_removed_sinks()
        except StoreUnavailable as exc:  # the new sinks run already; the store learns it at the next start
            log.warning("config.reload_store_unavailable", error=self._short(exc),
                        note="the new configuration is in force; a re-enabled sink may still show as disabled and "
                             "removed sinks' deliveries are dead-lettered at the next start")

    # ------------------------------------------------------------------------------------------- shutdown

    async def _flush_sweeper(self) -> None:
        """A clean stop writes the stall clocks the sweeps left unwritten (plan.STALL_CLOCK_MAX_LAG_MS), while this
        instance still holds the sweep lease; a store that fails here costs only stall timing, never an event."""
        if self.sweeper is None or self.store is None or (self.role is not None and self.role.token is None):
            return
        if self._state_stale or not self.store_health.ok:  # nothing to write that the store would take now
            return
        try:
            written = await self.sweeper.flush()
        except StoreError as exc:  # LeaseLost too: another instance sweeps now
            log.warning("sweeper.flush_failed", error=str(exc)[:300],
                        note="stall clocks of runs whose progress moved in the last minute restart at the next start")
            return
        if written:
            log.debug("sweeper.flushed", runs=written)

    async def shutdown(self) -> None:
        """STOPPING, stop the supervised tasks (the sweep loop, the lease keeper, the watchdog feeder), drain
        deliveries within the grace period, STOPPED, close. Steps that need the state store are skipped while
        it is away (the lease then runs out by itself; claims expire)."""
        self.observers.on_state(State.STOPPING, self.snapshot())
        log.info("daemon.stopping")
        if self.push is not None:  # no callback is taken from now on (FLORA retries it, or polling finds the run)
            await self.supervisor.cancel("ingress")  # first: a listener closed under its task reads as a crash
            await self.push.close()
        self.supervisor.stop_all()
        for name in ("sweep-loop", "confirmer", "ingress", "lease", "watchdog"):
            await self.supervisor.cancel(name)
        if self.dispatcher is not None:
            grace = 0.0 if self.force_exit else self.cfg.delivery.shutdown_grace
            await self.dispatcher.stop(grace)
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                await sink.close()
        await self._flush_sweeper()
        self.observers.on_state(State.STOPPED, self.snapshot())
        if self.client is not None:
            await self.client.close()
        if self.server is not None:
            await self.supervisor.cancel("http-server")
            await self.server.close()
        if self.role is not None and self.store_health.ok:
            await self.role.stop()  # hands the lease and our delivery claims over at once
        if self.store is not None:
            await self.store.aclose()
        if self.opts.install_signal_handlers:
            self._remove_signal_handlers()
        log.info("daemon.stopped", exit_code=self.exit_code)


class _SweepFailed(WatcherError):
    """The full sweep that was to answer a look failed (the API away): the callback is left to the sweeps."""

    def __init__(self) -> None:
        super().__init__("the sweep failed")
