"""The daemon's lifecycle, read top to bottom: startup → sweep loop → shutdown.

Signal handlers only set flags (``request_stop``, ``request_reload``); the loop acts on them between sweeps.
Shutdown mirrors startup in reverse: STOPPING=1, stop sweeping, let in-flight deliveries finish within the
grace period (their outcome is recorded), cancel the rest (still pending, sent after the next start), close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from watcher import __version__, lease, plan, stores
from watcher.api import FloraClient
from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.config import Config, SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.errors import AuthError, ConfigError, StoreError, WatcherError
from watcher.model import Event, Run, TrackedRun
from watcher.sinks.base import SendResult, Sink
from watcher.store import AsyncStore
from watcher.sweep import Sweeper, SweepResult
from watcher.validate import check_start

log = structlog.get_logger("watcher.daemon")

EXIT_OK = 0
EXIT_FATAL = 1
STATE_FILE = "state.sqlite3"
PRUNE_EVERY_MAX_S = 3600.0  # delivered history is pruned at least this often (and every keep_delivered / 4)
LIVE_KEEP_ENDED_MS = 60_000  # the live view keeps a finished run on screen this long


def state_path(cfg: Config) -> Path:
    return Path(cfg.watch.state_dir) / STATE_FILE


class DryRunSink:
    """``--dry-run``: renders every event to stdout and sends nothing."""

    def __init__(self, stream=None) -> None:
        self.name = "dry-run"
        self.config = SinkConfig(name="dry-run", type="stdout")
        self.stream = stream or sys.stdout

    async def start(self) -> None:
        return None

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        from watcher.render import text_line

        print(f"[dry-run] {text_line(event)}", file=self.stream, flush=True)
        return SendResult(status=None, detail="printed")

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class Options:
    once: bool = False
    dry_run: bool = False
    config_path: str | None = None  # for SIGHUP reload; None = reload from the search order
    reload: Callable[[], Config] | None = None  # how to re-read the config (defaults to config.load)
    install_signal_handlers: bool = True
    live_view: bool = False


class Daemon:
    def __init__(self, cfg: Config, options: Options | None = None, *, clock: Clock = SYSTEM_CLOCK,
                 env: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.opts = options or Options()
        self.clock = clock
        self.env = dict(os.environ if env is None else env)
        self.rand = random.Random()
        self.stop_event = asyncio.Event()
        self.reload_event = asyncio.Event()
        self.force_exit = False
        self.store: AsyncStore | None = None
        self.role = None  # lease.SweeperRole with a PostgreSQL store: whether this instance sweeps
        self.client: FloraClient | None = None
        self.sweeper: Sweeper | None = None
        self.dispatcher: Dispatcher | None = None
        self.sinks: dict[str, Sink] = {}
        self.metrics = None
        self.health = None  # server.HealthSource: what /readyz answers
        self.server = None
        self.notifier = None
        self.feeder = None
        self.live = None
        self._aux_tasks: list[asyncio.Task] = []
        self.last_result: SweepResult | None = None
        self._outbox_depth = 0  # pending deliveries, all sinks, as of the last sweep (for STATUS=)
        self.last_prune: float | None = None  # clock.monotonic() of the last prune of delivered history
        self._api_waited_s = 0.0  # the client's rate-limit waits already counted in the metrics
        self.exit_code = EXIT_OK

    # ------------------------------------------------------------------------------------------ signals

    def request_stop(self) -> None:
        if self.stop_event.is_set():
            self.force_exit = True  # a second Ctrl-C: stop waiting for deliveries
            log.warning("daemon.force_exit")
        self.stop_event.set()

    def request_reload(self) -> None:
        self.reload_event.set()

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

    # ------------------------------------------------------------------------------------------- run

    async def run(self) -> int:
        try:
            await self.startup()
        except ConfigError as exc:  # a config problem found at start: cli.py exits 2, as check-config would
            log.error("daemon.startup_failed", error=str(exc))
            await self.shutdown()
            raise
        except (StoreError, WatcherError) as exc:
            log.error("daemon.startup_failed", error=str(exc))
            await self.shutdown()
            return EXIT_FATAL
        try:
            if self.opts.once:
                await self.run_once()
            else:
                await self.run_until_stopped()
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

    async def startup(self) -> None:
        from watcher import metrics as metrics_mod
        from watcher import systemd
        from watcher.server import HealthSource

        cfg = self.cfg
        if self.opts.install_signal_handlers:
            self._install_signal_handlers()
        self.notifier = systemd.Notifier.from_env(self.env)
        self.metrics = metrics_mod.Metrics()
        self.health = HealthSource(interval=cfg.watch.interval, clock=self.clock)
        # SQLite in state_dir, or PostgreSQL ([store] url); --dry-run decides from an in-memory copy, writes nothing
        self.store = await stores.open_async(cfg, dry_run=self.opts.dry_run)
        self.sinks = await self._build_sinks(cfg.sinks)
        self.client = self._make_client(cfg)
        process_start = self.clock.now_ms()
        self.sweeper = Sweeper(self.client, self.store, watch=cfg.watch, sinks=self._sink_configs(), clock=self.clock,
                               rand=self.rand, process_start_ms=process_start, on_commit=self._on_commit,
                               on_progress=self._progress)
        await self.sweeper.load()
        if self.cfg.store.url is not None and not self.opts.dry_run:  # several instances: one sweeps, all deliver
            self.role = lease.SweeperRole(
                self.store, scope=lease.scope_of(cfg.api.base_url, cfg.watch.workspace_id, cfg.watch.project_id,
                                                 cfg.watch.technique_id),
                lease_s=cfg.store.lease, interval_s=cfg.watch.interval, version=__version__)
            await self.role.start()
        disabled = {}
        if not self.opts.dry_run:
            states = await self.store.sink_states()
            disabled = {name: st.disabled_reason for name, st in states.items() if name in self.sinks}
            await self._dead_letter_removed_sinks()
        self.dispatcher = Dispatcher(self.sinks, self.store, cfg=cfg.delivery, clock=self.clock, rand=self.rand,
                                     disabled=disabled, on_outcome=self.metrics.delivery)
        self.metrics.set_sinks(self.sinks)
        if cfg.server.listen and not self.opts.once:
            from watcher.server import StatusPage, start_server

            page = StatusPage(self.store, self, clock=self.clock, health=self.health)
            self.server = await start_server(cfg.server.listen, self.metrics, self.health, page)
        # READY once the config is valid and the state store is open; not waiting on the API.
        self.notifier.ready(status=self._status_line())
        interval = systemd.watchdog_interval(self.env)
        if interval and not self.opts.once:
            # Wedged = no API request answered or timed out, no page, poll or sweep finished, for this long.
            # Every await of a sweep is bounded (api.timeout per request, a short backoff between retries, the
            # store's busy timeout), so a healthy loop reports progress at least every api.timeout + a few
            # seconds, even while the API is down; waiting out a 429 pause counts too (_rate_limit_progress).
            # An API outage is not a wedge: restarting would not fix the API (that is what /readyz, STATUS=
            # and the metrics report). A wedge is an await that never returns, or a blocked event loop.
            wedged_after = max(interval * 2, cfg.watch.interval * 3, cfg.api.timeout * 2 + 5.0)
            self.feeder = systemd.WatchdogFeeder(period=wedged_after)
            self.feeder.progress(self.clock.monotonic())
            self._aux_tasks.append(asyncio.create_task(self.feeder.run(self.notifier, interval, self.clock)))
            self._aux_tasks.append(asyncio.create_task(self._rate_limit_progress(interval)))
        if self.opts.live_view and not self.opts.dry_run and not self.opts.once:
            self._start_live_view()
        state = ":memory:" if self.opts.dry_run else stores.describe(cfg)
        log.info("daemon.started", version=__version__, state=state, sinks=list(self.sinks),
                 interval=cfg.watch.interval, dry_run=self.opts.dry_run, once=self.opts.once)

    def _start_live_view(self) -> None:
        """The rich live table on the terminal. While it runs, rich redirects sys.stdout and sys.stderr through
        its console, so stdout-sink lines and log lines are printed above the table instead of through it."""
        from watcher.liveview import LiveView

        self.live = LiveView(clock=self.clock)
        self.live.update(self._live_runs(), self.clock.now_ms())
        self.live.start()

    # The status page's feed (server.StatusFeed): runs from memory, sink names and types from the config.
    def active_runs(self) -> list[Run]:
        return [] if self.sweeper is None else [t.run for t in self.sweeper.tracked.values() if not t.terminal]

    def sink_types(self) -> dict[str, str]:
        return {s.name: s.type for s in self._sink_configs()}

    def _live_runs(self) -> list:
        """Active runs, and runs that ended within the last minute (so a finished run stays visible a while)."""
        if self.sweeper is None:
            return []
        return live_runs(self.sweeper.tracked.values(), self.clock.now_ms(), keep_ms=LIVE_KEEP_ENDED_MS)

    async def _rate_limit_progress(self, every: float) -> None:
        """A sweep waiting out the API's 429 pause is not wedged: keep the watchdog fed while the pause lasts."""
        while True:
            await self.clock.sleep(every / 2)
            if self.client is not None and self.client.limiter.pause_remaining() > 0:
                self._progress()

    def _progress(self) -> None:
        if self.feeder is not None:
            self.feeder.progress(self.clock.monotonic())

    def _on_api_request(self, route: str, outcome: str, seconds: float) -> None:
        """Every API request that ended (answered, refused or timed out) is headway of the loop."""
        if self.metrics is not None:
            self.metrics.api_request(route, outcome, seconds)
        self._progress()

    def _make_client(self, cfg: Config) -> FloraClient:
        self._api_waited_s = 0.0
        return FloraClient(cfg.api.base_url, cfg.api.api_key, timeout=cfg.api.timeout, max_rps=cfg.api.max_rps,
                           on_request=self._on_api_request)

    def _count_rate_limit_waits(self) -> None:
        if self.client is None or self.metrics is None:
            return
        waited = self.client.stats.rate_limit_wait_seconds + self.client.stats.throttle_wait_seconds
        self.metrics.rate_limit_wait(waited - self._api_waited_s)
        self._api_waited_s = waited

    def _sink_configs(self) -> list[SinkConfig]:
        if self.opts.dry_run:
            return [SinkConfig(name="dry-run", type="stdout", events=tuple(self.cfg.watch.events))]
        return list(self.cfg.sinks)

    async def _build_sinks(self, configs) -> dict[str, Sink]:
        if self.opts.dry_run:
            sink = DryRunSink()
            return {sink.name: sink}
        from watcher.sinks import build_sink

        built: dict[str, Sink] = {}
        try:
            for sc in configs:
                sink = build_sink(sc, user_agent=f"flora-watcher/{__version__}")
                await sink.start()
                built[sc.name] = sink
        except Exception:
            for sink in built.values():
                with contextlib.suppress(Exception):
                    await sink.close()
            raise
        return built

    async def _dead_letter_removed_sinks(self) -> None:
        """Deliveries pending for a sink that is no longer configured become dead letters, never lost."""
        pending = await self.store.pending_counts()
        for name, count in pending.items():
            if name not in self.sinks and count:
                n = await self.store.dead_letter_sink(name, now_ms=self.clock.now_ms(),
                                                      reason="sink removed from the configuration")
                log.warning("sink.removed_dead_lettered", sink=name, deliveries=n,
                            hint="re-add the sink and run `flora-watcher replay --failed` to send them")

    def _on_commit(self, result: SweepResult) -> None:
        if self.metrics is not None:
            for event in result.events:
                if event.id in result.new_event_ids:
                    self.metrics.event(event.type)
                    completed = event.data.get("completed_at")
                    if completed and not event.data.get("late"):
                        self.metrics.detection_latency(max(0.0, (event.created_at - completed) / 1000.0))
        if self.live is not None:
            for event in result.events:
                if event.id in result.new_event_ids:
                    self.live.add_event(event)

    async def run_once(self) -> None:
        result = await self._sweep()
        await self.dispatcher.drain_due()
        if not result.ok:
            self.exit_code = EXIT_FATAL

    async def _sweep(self) -> SweepResult:
        started = self.clock.monotonic()
        if self.role is not None and not await self.role.ready_to_sweep(self.sweeper):
            self._progress()  # standby: another instance sweeps this scope; this one delivers
            await self._refresh_outbox_metrics()
            return SweepResult(ok=True)
        try:
            result = await self.sweeper.sweep()
        except lease.LeaseLost as exc:  # another instance took over while we swept: we committed nothing
            log.warning("sweeper.fenced_out", error=str(exc))
            self.role.lost()
            return SweepResult(ok=True)
        except AuthError:
            self.metrics.sweep_done(False, self.clock.monotonic() - started)
            raise
        except (asyncio.CancelledError, StoreError):
            raise
        except Exception as exc:  # a bug or an input we did not foresee: log it, keep the daemon alive
            log.exception("sweep.crashed", error=f"{type(exc).__name__}: {exc}")
            result = SweepResult(ok=False, error=f"internal error: {type(exc).__name__}",
                                 seconds=self.clock.monotonic() - started)
        self.last_result = result
        self.metrics.sweep_done(result.ok, result.seconds)
        self._count_rate_limit_waits()
        if result.ok:
            self.health.sweep_ok(self.clock.now_ms())
        else:
            self.health.sweep_failed(result.error or "the sweep failed")
        if self.feeder is not None:
            # The watchdog watches the loop, not the API: an API outage must not get us restarted by systemd
            # (that is what /readyz, STATUS= and the metrics report).
            self.feeder.progress(self.clock.monotonic())
        counts: dict[str, int] = {}
        for t in self.sweeper.tracked.values():
            counts[t.status] = counts.get(t.status, 0) + 1
        self.metrics.set_tracked(counts)
        await self._prune_history()
        await self._refresh_outbox_metrics()
        self.notifier.status(self._status_line())
        if self.live is not None:
            self.live.update(self._live_runs(), self.clock.now_ms())
        return result

    async def _prune_history(self) -> None:
        """Delivered events older than [delivery].keep_delivered leave the state store (pending deliveries and
        dead letters stay), so the store does not grow without bound. After a sweep, at most every
        keep_delivered / 4 and at least hourly."""
        keep = self.cfg.delivery.keep_delivered
        now = self.clock.monotonic()
        if self.last_prune is not None and now - self.last_prune < min(PRUNE_EVERY_MAX_S, keep / 4):
            return
        self.last_prune = now
        removed = await self.store.prune(now_ms=self.clock.now_ms(), keep_done_ms=int(keep * 1000))
        if removed:
            log.info("store.pruned", rows=removed, keep_delivered=keep)

    async def _refresh_outbox_metrics(self) -> None:
        depth = await self.store.pending_counts()
        oldest = await self.store.oldest_pending_ms()
        age = None if oldest is None else max(0.0, (self.clock.now_ms() - oldest) / 1000.0)
        self.metrics.set_outbox(depth, age)
        self._outbox_depth = sum(depth.values())

    def _status_line(self) -> str:
        tracked = 0 if self.sweeper is None else sum(1 for t in self.sweeper.tracked.values() if not t.terminal)
        api = "ok" if self.last_result is None or self.last_result.ok else "failing"
        return f"tracking {tracked} active runs; {self._outbox_depth} deliveries pending; API {api}"

    async def run_until_stopped(self) -> None:
        self.dispatcher.start()
        interval = self.cfg.watch.interval
        while not self.stop_event.is_set():
            started = self.clock.monotonic()
            sweep_task = asyncio.create_task(self._sweep())
            stop_task = asyncio.create_task(self.stop_event.wait())
            done, _ = await asyncio.wait({sweep_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            if sweep_task not in done:
                sweep_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweep_task
                break
            sweep_task.result()  # re-raises AuthError
            self.dispatcher.wake()
            if self.reload_event.is_set():
                await self.reload()
                interval = self.cfg.watch.interval
            next_at = plan.next_sweep_at(started, interval, self.clock.monotonic())
            await self._wait_until(next_at)
            if self.reload_event.is_set():
                await self.reload()
                interval = self.cfg.watch.interval

    async def _wait_until(self, monotonic_deadline: float) -> None:
        delay = monotonic_deadline - self.clock.monotonic()
        if delay <= 0:
            return
        stop = asyncio.create_task(self.stop_event.wait())
        reload = asyncio.create_task(self.reload_event.wait())
        try:
            await asyncio.wait({stop, reload}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            reload.cancel()

    # ------------------------------------------------------------------------------------------- reload

    async def reload(self) -> None:
        """SIGHUP: re-read and validate the config, swap it in whole; keep the old one when the new is invalid."""
        self.reload_event.clear()
        self.notifier.reloading()
        try:
            if self.opts.reload is not None:
                new = self.opts.reload()
            else:
                from watcher.config import load

                new = load(self.opts.config_path)
            check_start(new)
        except ConfigError as exc:
            log.error("config.reload_rejected", error=str(exc), note="keeping the running configuration")
            self.notifier.ready(status=self._status_line())
            return
        old = self.cfg
        try:
            new_sinks = await self._swap_sinks(old, new)
        except Exception as exc:
            log.error("config.reload_rejected", error=f"a sink failed to start: {exc}",
                      note="keeping the running configuration")
            self.notifier.ready(status=self._status_line())
            return
        if new.api != old.api:
            await self.client.close()
            self.client = self._make_client(new)
            self.sweeper.client = self.client
        self.cfg = new
        self.sweeper.replace_config(new.watch, list(new.sinks))
        self.sinks = new_sinks
        self.health.interval = new.watch.interval
        self.metrics.set_sinks(self.sinks)
        log.info("config.reloaded", sinks=list(self.sinks), interval=new.watch.interval)
        self.notifier.ready(status=self._status_line())

    async def _swap_sinks(self, old: Config, new: Config) -> dict[str, Sink]:
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
        # Stop workers of removed or changed sinks, then start the new set.
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
        return self.sinks

    # ------------------------------------------------------------------------------------------- shutdown

    async def shutdown(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        if self.health is not None:
            self.health.stopping = True  # /readyz answers 503 "shutting down" while deliveries drain
        log.info("daemon.stopping")
        for task in self._aux_tasks:
            task.cancel()
        await asyncio.gather(*self._aux_tasks, return_exceptions=True)
        if self.dispatcher is not None:
            grace = 0.0 if self.force_exit else self.cfg.delivery.shutdown_grace
            await self.dispatcher.stop(grace)
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                await sink.close()
        if self.live is not None:
            self.live.stop()  # after the drain, so the last events are on screen; gives the terminal back
            self.live = None
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


def live_runs(tracked: Iterable[TrackedRun], now_ms: int, *, keep_ms: int) -> list[Run]:
    """Pure: the runs the live view shows — every active run, and runs that ended at most ``keep_ms`` ago."""
    shown = []
    for t in tracked:
        if not t.terminal:
            shown.append(t.run)
        elif t.run.completed_at is not None and now_ms - t.run.completed_at <= keep_ms:
            shown.append(t.run)
    return shown
