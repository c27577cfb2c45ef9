"""The daemon's lifecycle, read top to bottom: ``startup()`` → ``main_loop()`` → ``shutdown()``.

The daemon does the work: it sweeps, hands events to the dispatcher, reloads and stops. Everything that only
*shows* the work — Prometheus metrics, systemd's READY/STATUS/watchdog, the ``/readyz`` health record, the live
table on a terminal — subscribes to one observer interface (``watcher.observer``) and is told about every
lifecycle state, sweep and delivery; the daemon updates none of them by hand.

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
from watcher.errors import AuthError, ConfigError, StoreError, WatcherError
from watcher.observer import HealthObserver, Observer, Observers, Report, State
from watcher.sinks.dryrun import DryRunSink
from watcher.sinks.spec import Sink
from watcher.sweep import Sweeper, SweepResult
from watcher.validate import check_start

if TYPE_CHECKING:
    from watcher.metrics import Metrics
    from watcher.server import HealthSource, Server
    from watcher.store_api import StateStore
    from watcher.systemd import Notifier, WatchdogFeeder

log = structlog.get_logger("watcher.daemon")

EXIT_OK = exits.OK
EXIT_FATAL = exits.FAILURE
EXIT_CONFIG = exits.USAGE  # what cli.py exits with for a ConfigError; recorded here so daemon.stopped says it too
PRUNE_EVERY_MAX_S = 3600.0  # delivered history is pruned at least this often (and every keep_delivered / 4)


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
        self._tasks: list[asyncio.Task] = []
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
        except StoreError as exc:  # disk full, file removed or corrupted under us: nothing safe to do but stop
            log.error("store.failed", error=str(exc), hint="check the state_dir's disk and permissions")
            self.exit_code = EXIT_FATAL
        finally:
            await self.shutdown()
        return self.exit_code

    # ------------------------------------------------------------------------------------------ startup

    async def startup(self) -> None:
        """Observers, state store, sinks, API client, sweeper, dispatcher, server; then READY. Not waiting on
        the API: READY means the config is valid and the state store is open."""
        cfg = self.cfg
        if self.opts.install_signal_handlers:
            self._install_signal_handlers()
        self._subscribe_builtin_observers()
        # SQLite in state_dir, or PostgreSQL ([store] url); --dry-run decides from an in-memory copy, writes nothing
        self.store = await stores.open_async(cfg, dry_run=self.opts.dry_run)
        self.sinks = await self._build_sinks(self._sink_configs(cfg))
        self.client = self._make_client(cfg)
        self.sweeper = Sweeper(self.client, self.store, watch=cfg.watch, sinks=self._sink_configs(cfg),
                               clock=self.clock, rand=self.rand, process_start_ms=self.clock.now_ms(),
                               on_progress=self._progress, on_commit=self._committed)
        await self.sweeper.load()
        if cfg.store.url is not None and not self.opts.dry_run:  # several instances: one sweeps, all deliver
            self.role = lease.SweeperRole(
                self.store, scope=lease.scope_of(cfg.api.base_url, cfg.watch.workspace_id, cfg.watch.project_id,
                                                 cfg.watch.technique_id, cfg.watch.resources),
                lease_s=cfg.store.lease, interval_s=cfg.watch.interval, version=__version__)
            await self.role.start()
        disabled: dict[str, str | None] = {}
        if not self.opts.dry_run:
            states = await self.store.sink_states()
            disabled = {name: st.disabled_reason for name, st in states.items() if name in self.sinks}
            await self._dead_letter_removed_sinks()
        self.dispatcher = Dispatcher(self.sinks, self.store, cfg=cfg.delivery, clock=self.clock, rand=self.rand,
                                     disabled=disabled, on_outcome=self.observers.on_delivery)
        if cfg.server.listen and not self.opts.once:
            from watcher.server import StatusPage, start_server

            assert self.metrics is not None and self.health is not None
            page = StatusPage(self.store, sink_types=self.sink_types, clock=self.clock, health=self.health)
            self.observers.subscribe(page)
            self.server = await start_server(cfg.server.listen, self.metrics, self.health, page)
        self.observers.on_state(State.READY, self.snapshot())
        self._start_watchdog()
        state = ":memory:" if self.opts.dry_run else stores.describe(cfg)
        log.info("daemon.started", version=__version__, state=state, sinks=list(self.sinks),
                 interval=cfg.watch.interval, dry_run=self.opts.dry_run, once=self.opts.once)

    def _subscribe_builtin_observers(self) -> None:
        from watcher import systemd
        from watcher.metrics import Metrics
        from watcher.server import HealthSource

        self.metrics = metrics = Metrics()
        self.health = health = HealthSource(interval=self.cfg.watch.interval, clock=self.clock)
        self.notifier = notifier = systemd.Notifier.from_env(self.env)
        ping_every = systemd.watchdog_interval(self.env)
        if ping_every and not self.opts.once:
            self.feeder = systemd.WatchdogFeeder(
                period=systemd.wedge_period(ping_every, self.cfg.watch.interval, self.cfg.api.timeout),
                started=self.clock.monotonic())
        builtin: list[Observer] = [metrics, HealthObserver(health), systemd.SystemdObserver(notifier, self.feeder)]
        if self.opts.live_view and not self.opts.once and not self.opts.dry_run:
            from watcher.liveview import LiveViewObserver

            # a stdout sink prints each event above the table already: the table then does not list them again
            stdout_sink = any(s.type == "stdout" for s in self.cfg.sinks)
            builtin.append(LiveViewObserver(clock=self.clock, list_events=not stdout_sink))
        self.observers.subscribers[:0] = builtin

    def _start_watchdog(self) -> None:
        """Ping systemd's watchdog every half WatchdogSec while the loop makes progress (after READY=1)."""
        from watcher import systemd

        ping_every = systemd.watchdog_interval(self.env)
        if self.feeder is not None and self.notifier is not None and ping_every:
            self._tasks.append(asyncio.create_task(
                self.feeder.run(self.notifier, ping_every, self.clock, busy=self._api_paused)))

    def _sink_configs(self, cfg: Config) -> list[SinkConfig]:
        """Where events are routed: the configured sinks, or ``--dry-run``'s one printing sink."""
        if self.opts.dry_run:
            return [DryRunSink(events=cfg.watch.events).config]
        return list(cfg.sinks)

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
        """``--once``: one sweep, then deliver what is due. Otherwise sweep every interval (without drift) while
        the dispatcher delivers, until a stop is requested; a reload is done between sweeps."""
        assert self.dispatcher is not None
        if self.opts.once:
            result = await self.sweep()
            await self.dispatcher.drain_due()
            if not result.ok:
                self.exit_code = EXIT_FATAL
            return
        self.dispatcher.start()
        while not self.stop_event.is_set():
            started = self.clock.monotonic()
            if not await self._sweep_unless_stopped():
                break
            self.dispatcher.wake()
            await self._reload_if_requested()
            await self._idle_until(plan.next_sweep_at(started, self.cfg.watch.interval, self.clock.monotonic()))
            await self._reload_if_requested()

    async def _sweep_unless_stopped(self) -> bool:
        """One sweep, abandoned (cancelled) when a stop is requested meanwhile. False when stopped."""
        sweep_task = asyncio.create_task(self.sweep())
        stop_task = asyncio.create_task(self.stop_event.wait())
        done, _ = await asyncio.wait({sweep_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        if sweep_task not in done:
            sweep_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweep_task
            return False
        sweep_task.result()  # re-raises AuthError and StoreError
        return True

    async def _idle_until(self, deadline: float) -> None:
        """Wait until the clock's monotonic ``deadline``, or until a stop or reload is requested."""
        self._wakeup.clear()
        if self.stop_event.is_set() or self.reload_event.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await self.clock.wait_for(self._wakeup.wait(), deadline - self.clock.monotonic())

    async def _reload_if_requested(self) -> None:
        if self.reload_event.is_set() and not self.stop_event.is_set():
            await self.reload()

    async def sweep(self) -> SweepResult:
        """One sweep, housekeeping, then every observer hears of it. An unexpected error is logged and counts
        as a failed sweep (the daemon stays up); AuthError and StoreError end the daemon."""
        assert self.sweeper is not None
        started = self.clock.monotonic()
        if self.role is not None and not await self.role.ready_to_sweep(self.sweeper):
            self._progress()  # standby: another instance sweeps this scope; this one delivers
            await self._report(None)
            return SweepResult(ok=True)
        try:
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
        except (asyncio.CancelledError, StoreError):
            raise
        except Exception as exc:  # a bug or an input we did not foresee: log it, keep the daemon alive
            log.exception("sweep.crashed", error=f"{type(exc).__name__}: {exc}")
            result = SweepResult(ok=False, error=f"internal error: {type(exc).__name__}",
                                 seconds=self.clock.monotonic() - started)
        await self._prune_history()
        await self._report(result)
        return result

    async def _prune_history(self) -> None:
        """Delivered events older than [delivery].keep_delivered leave the state store (pending deliveries and
        dead letters stay), so the store does not grow without bound. After a sweep, at most every
        keep_delivered / 4 and at least hourly."""
        keep = self.cfg.delivery.keep_delivered
        now = self.clock.monotonic()
        if self._last_prune is not None and now - self._last_prune < min(PRUNE_EVERY_MAX_S, keep / 4):
            return
        self._last_prune = now
        assert self.store is not None
        removed = await self.store.prune(now_ms=self.clock.now_ms(), keep_done_ms=int(keep * 1000))
        if removed:
            log.info("store.pruned", rows=removed, keep_delivered=keep)

    async def _report(self, result: SweepResult | None) -> None:
        """Tell every observer about a finished sweep (None: a standby instance's turn of the loop, no sweep of
        its own), with the outbox as it is now."""
        assert self.store is not None and self.client is not None
        depth = await self.store.pending_counts()
        oldest = await self.store.oldest_pending_ms()
        now_ms = self.clock.now_ms()
        waited = self.client.stats.rate_limit_wait_seconds + self.client.stats.throttle_wait_seconds
        self.last_report = dataclasses.replace(
            self.snapshot(), sweep=result, outbox=depth, api_wait_s=max(0.0, waited - self._api_waited_s),
            oldest_pending_age_s=None if oldest is None else max(0.0, (now_ms - oldest) / 1000.0))
        self._api_waited_s = waited
        self.observers.on_sweep(self.last_report)

    def snapshot(self) -> Report:
        """The daemon's picture now: the tracked runs and configuration in force, the last sweep's outcome."""
        base: dict[str, Any] = dict(now_ms=self.clock.now_ms(), monotonic=self.clock.monotonic(),
                    runs=self.sweeper.tracked if self.sweeper is not None else {},
                    sinks=tuple(self.sinks), interval=self.cfg.watch.interval)
        if self.last_report is None:
            return Report(**base)
        return dataclasses.replace(self.last_report, api_wait_s=0.0, **base)

    def sink_types(self) -> dict[str, str]:
        """Configured sink name → type, for the status page (never a URL or a secret)."""
        return {s.name: s.type for s in self._sink_configs(self.cfg)}

    # ----------------------------------------------------------------------------------- liveness hooks

    def _progress(self) -> None:
        """A page, a poll or an API request finished: the loop is not wedged."""
        if self.feeder is not None:
            self.feeder.progress(self.clock.monotonic())

    def _committed(self, result: SweepResult) -> None:
        """A sweep (or a batch of a catch-up) is committed: its deliveries are due now."""
        if self.dispatcher is not None:
            self.dispatcher.wake()

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
        self.cfg = new
        self.sweeper.replace_config(new.watch, self._sink_configs(new))
        log.info("config.reloaded", sinks=list(self.sinks), interval=new.watch.interval)
        self.observers.on_state(State.READY, self.snapshot())

    async def _swap_sinks(self, old: Config, new: Config) -> None:
        """Unchanged sinks keep their worker; removed or changed ones stop (their in-flight send may finish
        within the grace period); new or changed ones start enabled."""
        assert self.dispatcher is not None and self.store is not None
        old_by_name = {s.name: s for s in old.sinks}
        keep: dict[str, Sink] = {}
        fresh: dict[str, Sink] = {}
        try:
            for sc in new.sinks:
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
        for name, sink in fresh.items():
            # A new or changed sink starts enabled: a config change is how a 410-disabled sink is fixed.
            await self.store.set_sink_state(name, disabled_reason=None, now_ms=self.clock.now_ms())
            self.dispatcher.add(sink)
        await self._dead_letter_removed_sinks()

    # ------------------------------------------------------------------------------------------- shutdown

    async def _flush_sweeper(self) -> None:
        """A clean stop writes the stall clocks the sweeps left unwritten (plan.STALL_CLOCK_MAX_LAG_MS), while this
        instance still holds the sweep lease; a store that fails here costs only stall timing, never an event."""
        if self.sweeper is None or self.store is None or (self.role is not None and self.role.token is None):
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
        """STOPPING, stop the side tasks, drain deliveries within the grace period, STOPPED, close."""
        self.observers.on_state(State.STOPPING, self.snapshot())
        log.info("daemon.stopping")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
            await self.server.close()
        if self.role is not None:
            await self.role.stop()  # hands the lease and our delivery claims over at once
        if self.store is not None:
            await self.store.aclose()
        if self.opts.install_signal_handlers:
            self._remove_signal_handlers()
        log.info("daemon.stopped", exit_code=self.exit_code)
