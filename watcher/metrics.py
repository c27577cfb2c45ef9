"""Prometheus metrics for the daemon (prometheus-client, on a registry of our own).

Shell module. Each ``Metrics`` owns a ``CollectorRegistry`` (not the process-global one), so tests and a
reloaded daemon can make as many as they like. It subscribes to the daemon's observer interface
(``watcher.observer``: ``on_sweep``, ``on_delivery``, ``on_state``), and the API client reports each request
to ``api_request``; ``server.py`` exposes ``registry`` at ``/metrics``. Every name starts with
``flora_watcher_`` (listed in docs/operations.md).

Label values are bounded: routes are the API client's route names (not URLs), sinks are configured names,
outcomes and types are small fixed sets. Run ids never become labels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from watcher import __version__
from watcher.model import KNOWN_STATUSES, Event
from watcher.observer import Observer, Report, State

PREFIX = "flora_watcher"

# Seconds from the API's completed_at to the event being stored: sub-second (a sweep right after the
# transition) up to minutes (a long interval, rate limiting or a backlog).
DETECTION_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300)
SWEEP_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
API_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

DELIVERY_OUTCOMES = ("delivered", "retry", "dead", "disabled")
INGRESS_OUTCOMES = ("accepted", "duplicate", "rejected", "unrecorded")
# Seconds from a callback's receipt to its run confirmed with the API (and its event stored).
CALLBACK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

# No ``*_created`` series: they double the series count and no dashboard uses them. (A process-wide switch
# of prometheus-client; flora-watcher is the only exporter in its process.)
disable_created_metrics()


def asyncio_task_count() -> float:
    """Tasks of the running event loop (the scrape runs on it); 0 when read outside any loop."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return 0.0


class Metrics(Observer):
    """Every metric the daemon exports. Methods never raise on unknown label values."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process_metrics:
            # process_* (RSS, CPU, open fds), python_info and python_gc_* — cheap, and what a leak hunt needs.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self._build_info = Gauge(
            f"{PREFIX}_build_info", "Version of the running flora-watcher.", ["version"], registry=r)
        self._build_info.labels(version=__version__).set(1)
        self._sweeps = Counter(
            f"{PREFIX}_sweeps", "Sweeps finished, by outcome (ok|error).", ["outcome"], registry=r)
        self._sweep_duration = Histogram(
            f"{PREFIX}_sweep_duration_seconds", "Wall time of one sweep.",
            buckets=SWEEP_DURATION_BUCKETS, registry=r)
        self._last_sweep_ok = Gauge(
            f"{PREFIX}_last_successful_sweep_timestamp_seconds",
            "Unix time of the last sweep that succeeded (0 = none yet).", registry=r)
        self._api_requests = Counter(
            f"{PREFIX}_api_requests", "FLORA API requests, by route and outcome.", ["route", "outcome"],
            registry=r)
        self._api_duration = Histogram(
            f"{PREFIX}_api_request_duration_seconds", "FLORA API request latency, by route.", ["route"],
            buckets=API_DURATION_BUCKETS, registry=r)
        self._rate_limit_wait = Counter(
            f"{PREFIX}_rate_limit_wait_seconds",
            "Seconds spent waiting for the API request budget or a 429's Retry-After.", registry=r)
        self._tracked = Gauge(
            f"{PREFIX}_tracked_runs", "Runs in the state store, by last seen status.", ["status"], registry=r)
        self._events = Counter(f"{PREFIX}_events", "Transition events stored, by type.", ["type"], registry=r)
        self._deliveries = Counter(
            f"{PREFIX}_deliveries", "Delivery attempts, by sink and outcome (delivered|retry|dead|disabled).",
            ["sink", "outcome"], registry=r)
        self._outbox = Gauge(
            f"{PREFIX}_outbox_pending", "Pending deliveries in the outbox, by sink.", ["sink"], registry=r)
        self._oldest_pending = Gauge(
            f"{PREFIX}_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending delivery (0 when the outbox is empty).", registry=r)
        self._detection_latency = Histogram(
            f"{PREFIX}_detection_latency_seconds",
            "Seconds from a run's completed_at (API) to its event being stored.",
            buckets=DETECTION_LATENCY_BUCKETS, registry=r)
        self._task_crashes = Counter(
            f"{PREFIX}_task_crashes", "Supervised tasks that ended unexpectedly and were restarted, by task.",
            ["task"], registry=r)
        self._store_up = Gauge(
            f"{PREFIX}_state_store_up", "1 while the state store answers, 0 during a state store outage.",
            registry=r)
        self._store_up.set(1)
        self._callbacks_received = Counter(
            f"{PREFIX}_callbacks_received", "Requests to the ingress ([ingress]), genuine or not.", registry=r)
        self._callbacks = Counter(
            f"{PREFIX}_callbacks", "Requests to the ingress by outcome (accepted|duplicate|rejected|unrecorded).",
            ["outcome"], registry=r)
        self._callbacks_rejected = Counter(
            f"{PREFIX}_callbacks_rejected", "Requests the ingress refused, by reason (signing.Rejection).",
            ["reason"], registry=r)
        self._callbacks_done = Counter(
            f"{PREFIX}_callbacks_confirmed", "Recorded callbacks done, by outcome (confirm.Outcome).", ["outcome"],
            registry=r)
        self._callback_seconds = Histogram(
            f"{PREFIX}_callback_confirm_seconds",
            "Seconds from a callback's receipt to its run confirmed with the API.", buckets=CALLBACK_BUCKETS,
            registry=r)
        self._asyncio_tasks = Gauge(
            f"{PREFIX}_asyncio_tasks", "asyncio tasks alive in the daemon's event loop (growth = a task leak).",
            registry=r)
        self._asyncio_tasks.set_function(asyncio_task_count)
        for status in sorted(KNOWN_STATUSES):
            self._tracked.labels(status=status).set(0)
        for outcome in ("ok", "error"):
            self._sweeps.labels(outcome=outcome)
        self._tracked_labels: set[str] = set(KNOWN_STATUSES)
        self._outbox_labels: set[str] = set()

    # --------------------------------------------------------------------------------------- observer

    def on_sweep(self, report: Report) -> None:
        if report.sweep is not None:
            self.sweep_done(report.sweep.ok, report.sweep.seconds)
            for event_type, count in report.sweep.batched.items():  # a catch-up's earlier batches
                self._events.labels(type=event_type).inc(count)
            for event in report.new_events:
                self.event(event.type)
                completed = event.data.get("completed_at")
                if completed and not event.data.get("late"):
                    self.detection_latency(max(0.0, (event.created_at - completed) / 1000.0))
        self.rate_limit_wait(report.api_wait_s)
        counts: dict[str, int] = {}
        for t in report.runs.values():
            counts[t.status] = counts.get(t.status, 0) + 1
        self.set_tracked(counts)
        self.set_outbox(report.outbox, report.oldest_pending_age_s)

    def on_delivery(self, sink: str, outcome: str) -> None:
        self.delivery(sink, outcome)

    def on_state(self, state: State, report: Report) -> None:
        if state is State.READY:
            self.set_sinks(report.sinks)

    def on_task(self, name: str, what: str, error: str | None) -> None:
        if what == "crashed":
            self._task_crashes.labels(task=name).inc()

    def on_store(self, ok: bool, error: str | None) -> None:
        self._store_up.set(1 if ok else 0)
    def on_ingress(self, outcome: str, reason: str | None) -> None:
        self._callbacks_received.inc()
        self._callbacks.labels(outcome=outcome).inc()
        if reason is not None:
            self._callbacks_rejected.labels(reason=reason).inc()

    def on_callback(self, run_id: str, outcome: str, seconds: float) -> None:
        self._callbacks_done.labels(outcome=outcome).inc()
        self._callback_seconds.observe(max(0.0, seconds))

    def on_events(self, events: Sequence[Event]) -> None:
        for event in events:
            self.event(event.type)
            completed = event.data.get("completed_at")
            if completed and not event.data.get("late"):
                self.detection_latency(max(0.0, (event.created_at - completed) / 1000.0))

    def ingress_enabled(self) -> None:
        """Pre-create the ingress series at 0 (an alert on rejections sees the series before the first one)."""
        self._callbacks_received.inc(0)
        for outcome in INGRESS_OUTCOMES:
            self._callbacks.labels(outcome=outcome)

    # ------------------------------------------------------------------------------------------ sweeps

    def sweep_done(self, ok: bool, seconds: float) -> None:
        self._sweeps.labels(outcome="ok" if ok else "error").inc()
        self._sweep_duration.observe(max(0.0, seconds))
        if ok:
            self._last_sweep_ok.set_to_current_time()

    # --------------------------------------------------------------------------------------------- API

    def api_request(self, route: str, outcome: str, seconds: float) -> None:
        """One API request (signature of FloraClient's ``on_request`` hook)."""
        self._api_requests.labels(route=route, outcome=outcome).inc()
        self._api_duration.labels(route=route).observe(max(0.0, seconds))

    def rate_limit_wait(self, seconds: float) -> None:
        if seconds > 0:
            self._rate_limit_wait.inc(seconds)

    # ------------------------------------------------------------------------------------ runs, events

    def set_tracked(self, counts: Mapping[str, int]) -> None:
        """Tracked runs by status; statuses missing from ``counts`` are 0."""
        for status in self._tracked_labels - counts.keys():
            self._tracked.labels(status=status).set(0)
        for status, n in counts.items():
            self._tracked.labels(status=status).set(n)
        self._tracked_labels |= counts.keys()

    def event(self, type: str) -> None:
        self._events.labels(type=type).inc()

    def detection_latency(self, seconds: float) -> None:
        self._detection_latency.observe(max(0.0, seconds))

    # ------------------------------------------------------------------------------------- deliveries

    def set_sinks(self, names: Iterable[str]) -> None:
        """Pre-create every sink's series at 0, so rate() and alerts see a sink before its first delivery."""
        for name in names:
            for outcome in DELIVERY_OUTCOMES:
                self._deliveries.labels(sink=name, outcome=outcome)
            if name not in self._outbox_labels:
                self._outbox.labels(sink=name).set(0)
                self._outbox_labels.add(name)

    def delivery(self, sink: str, outcome: str) -> None:
        """One delivery attempt's outcome: delivered, retry, dead or disabled."""
        self._deliveries.labels(sink=sink, outcome=outcome).inc()

    def set_outbox(self, depth: Mapping[str, int], oldest_age_s: float | None) -> None:
        """Pending deliveries by sink (sinks missing from ``depth`` are 0) and the oldest one's age."""
        for sink in self._outbox_labels - depth.keys():
            self._outbox.labels(sink=sink).set(0)
        for sink, n in depth.items():
            self._outbox.labels(sink=sink).set(n)
        self._outbox_labels |= depth.keys()
        self._oldest_pending.set(max(0.0, oldest_age_s) if oldest_age_s is not None else 0.0)

    # -------------------------------------------------------------------------------------- exposition

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
