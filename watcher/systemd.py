"""The systemd notify protocol without libsystemd (``sd_notify(3)``), and a watchdog tied to progress.

Shell module. ``Notifier`` sends ``KEY=VALUE`` datagrams to ``$NOTIFY_SOCKET``; without that variable it is a
no-op, so the daemon calls it unconditionally. Sending never raises: a failure is logged once (until the next
success) and reported as ``False``.

The watchdog is fed only while the sweep loop makes progress: the daemon calls ``feeder.progress(now)`` every
time a sweep finishes (successfully or not — an API outage is not a wedged process), and ``feeder.run()``
pings systemd every half ``WatchdogSec`` as long as the last progress is recent enough. A loop stuck on a
hung await stops the pings, and systemd restarts the service.

``SystemdObserver`` is how the daemon talks to all of this: it subscribes to the daemon's observer interface
(``watcher.observer``) and turns lifecycle states into ``READY=1``/``RELOADING=1``/``STOPPING=1``, every sweep
into a ``STATUS=`` line and a watchdog feed.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.observer import Observer, Report, State

log = structlog.get_logger("watcher.systemd")


def socket_address(value: str) -> str | None:
    """The ``connect()`` address for a ``$NOTIFY_SOCKET`` value; None when unusable.

    A leading ``@`` names a socket in the abstract namespace (``"\\0..."``); otherwise the value must be an
    absolute path. Other forms (``vsock:``, relative paths) are not supported.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def format_message(fields: Mapping[str, object]) -> bytes:
    """``KEY=VALUE`` lines, one per field. Newlines inside values (e.g. a STATUS text) become spaces."""
    lines = []
    for key, value in fields.items():
        text = str(int(value)) if isinstance(value, bool) else str(value)
        lines.append(f"{key}={text.replace(chr(10), ' ').replace(chr(13), ' ')}")
    return "\n".join(lines).encode("utf-8", "replace")


class Notifier:
    """Sends state changes to the service manager. ``Notifier(None)`` (no socket) does nothing."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._failing = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier for ``$NOTIFY_SOCKET``; a disabled one when unset or unusable (logged)."""
        raw = env.get("NOTIFY_SOCKET")
        if not raw:
            return cls(None)
        address = socket_address(raw)
        if address is None:
            log.warning("systemd.notify_socket_unsupported", notify_socket=raw)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: object) -> bool:
        """Send one datagram with these fields (``send(READY=1, STATUS="...")``). True when it was sent."""
        if self._address is None or not fields:
            return False
        message = format_message(fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # never stall the event loop on a full receive queue
                sock.connect(self._address)
                sock.send(message)
        except OSError as exc:
            if not self._failing:
                log.warning("systemd.notify_failed", error=f"{type(exc).__name__}: {exc}")
            self._failing = True
            return False
        if self._failing:
            log.info("systemd.notify_recovered")
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) finished: ``READY=1`` (+ ``STATUS=``)."""
        return self.send(READY=1, STATUS=status) if status else self.send(READY=1)

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status`` (e.g. the last sweep's summary)."""
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        """Shutdown began: ``STOPPING=1``."""
        return self.send(STOPPING=1)

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """A reload began: ``RELOADING=1`` with ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, as systemd ≥ 253 wants).

        Send ``ready()`` once the new configuration is in force (or the old one was kept).
        """
        usec = monotonic_usec
        if usec is None:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def watchdog(self) -> bool:
        """Keep-alive: ``WATCHDOG=1``."""
        return self.send(WATCHDOG=1)


def watchdog_interval(env: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings: half of ``$WATCHDOG_USEC``, or None when no watchdog applies to us.

    None when ``WATCHDOG_USEC`` is unset, not a positive integer, or ``WATCHDOG_PID`` names another process.
    """
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def should_ping(now: float, last_progress: float | None, period: float) -> bool:
    """Pure: ping the watchdog only if the loop made progress within the last ``period`` seconds."""
    if last_progress is None:
        return False
    return now - last_progress <= period


class WatchdogFeeder:
    """Decides, at every ping interval, whether the loop is healthy enough to send ``WATCHDOG=1``.

    ``period`` is how long the sweep loop may go without reporting progress before it counts as wedged; the
    daemon picks it (a few sweep intervals, and at least ``WatchdogSec``). ``started`` (monotonic seconds),
    when given, counts as the first progress; until then (or the first ``progress()``) nothing is sent.
    """

    def __init__(self, period: float, *, started: float | None = None) -> None:
        if not period > 0:
            raise ValueError("WatchdogFeeder: period must be positive")
        self.period = period
        self.last_progress: float | None = started
        self.missed = 0  # pings withheld since the last one sent
        self.stopped = False  # after STOPPING=1 nothing may claim the service is alive

    def progress(self, now: float) -> None:
        """The sweep loop finished an iteration at ``now`` (monotonic seconds)."""
        self.last_progress = now

    def due(self, now: float) -> bool:
        return should_ping(now, self.last_progress, self.period)

    def tick(self, notifier: Notifier, now: float) -> bool:
        """One decision: send ``WATCHDOG=1`` if the loop is healthy. Returns whether a ping was sent."""
        if self.stopped:
            return False
        if self.due(now):
            if self.missed:
                log.info("systemd.watchdog_resumed", withheld=self.missed)
            self.missed = 0
            return notifier.watchdog()
        if self.missed == 0:
            stalled = None if self.last_progress is None else round(now - self.last_progress, 1)
            log.error("systemd.watchdog_withheld", stalled_s=stalled, period_s=self.period)
        self.missed += 1
        return False

    async def run(self, notifier: Notifier, interval: float, clock: Clock = SYSTEM_CLOCK,
                  busy: Callable[[], bool] | None = None) -> None:
        """Decide every ``interval`` seconds (``watchdog_interval()``) until cancelled. Run it as a task.

        ``busy()``, when given, says the loop is legitimately waiting (e.g. out a 429 pause of the API): that
        counts as progress."""
        if not interval > 0:
            raise ValueError("WatchdogFeeder.run: interval must be positive")
        while True:
            if busy is not None and busy():
                self.progress(clock.monotonic())
            self.tick(notifier, clock.monotonic())
            await clock.sleep(interval)


def wedge_period(ping_interval: float, sweep_interval: float, api_timeout: float) -> float:
    """How long the sweep loop may report no progress before it counts as wedged.

    Progress = an API request answered or timed out, a page, a poll or a sweep finished. Every await of a sweep
    is bounded (api.timeout per request, a short backoff between retries, the store's busy timeout), so a
    healthy loop reports progress at least every api.timeout + a few seconds, even while the API is down;
    waiting out a 429 pause counts too. An API outage is not a wedge: restarting would not fix the API (that is
    what /readyz, STATUS= and the metrics report). A wedge is an await that never returns, or a blocked loop.
    """
    return max(ping_interval * 2, sweep_interval * 3, api_timeout * 2 + 5.0)


def status_line(report: Report) -> str:
    """The ``STATUS=`` text: ``tracking 3 active runs; 0 deliveries pending; API ok``, and while the state
    store is away ``…; waiting for the state store: connection refused``."""
    api = "ok" if report.api_ok else "failing"
    line = f"tracking {report.active} active runs; {report.pending} deliveries pending; API {api}"
    return line if report.store_error is None else f"{line}; waiting for the state store: {report.store_error}"


class SystemdObserver(Observer):
    """The daemon's observer for the service manager: lifecycle notifications, ``STATUS=`` after every
    sweep, and (``feeder`` given) a watchdog fed by every finished sweep."""

    def __init__(self, notifier: Notifier, feeder: WatchdogFeeder | None = None) -> None:
        self.notifier = notifier
        self.feeder = feeder

    def on_state(self, state: State, report: Report) -> None:
        if state is State.READY:
            self.notifier.ready(status=status_line(report))
        elif state is State.RELOADING:
            self.notifier.reloading()
        elif state is State.STOPPING:
            if self.feeder is not None:
                self.feeder.stopped = True
            self.notifier.stopping()

    def on_store(self, ok: bool, error: str | None) -> None:
        if not ok:  # at once, not at the next sweep (at a start, no sweep comes until the store answers)
            self.notifier.status(f"waiting for the state store: {error}")

    def on_sweep(self, report: Report) -> None:
        if self.feeder is not None:
            # The watchdog watches the loop, not the API: a failed sweep is progress too.
            self.feeder.progress(report.monotonic)
        self.notifier.status(status_line(report))
