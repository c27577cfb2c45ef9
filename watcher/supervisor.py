"""Supervision of the daemon's long-lived tasks (Erlang/OTP's one-for-one supervisor, aiomisc's ``Service``).

Every task meant to run as long as the daemon does (the sweep loop, each sink worker, the lease keeper, the
HTTP server, the watchdog feeder) runs under one ``Supervisor``. A task that ends when nobody asked it to (it
raised, or returned) is

* logged at once: ``task.crashed`` with the error and its traceback,
* reported down until it runs again (``down``; ``/readyz`` names it) and counted (``on_event`` → metrics),
* started again after a capped, jittered backoff (``policy.retry_delay``: 1 s doubling to 60 s; the backoff
  starts over once a task has run for ``STABLE_S``), the others untouched (one for one).

An error no restart can cure (``fatal(exc)``: the API key refused, a state store that is corrupt or written by a
newer version) is not restarted: the supervisor keeps it in ``failure`` and sets ``failed``, and the daemon
stops with exit 1.

Restarting is the safety net for bugs. The tasks ride out what is expected (an API or database outage)
themselves, without ending. Shell: ``next_attempt`` is the one decision, pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from watcher.clock import Clock
from watcher.policy import retry_delay

log = structlog.get_logger("watcher.supervisor")

STABLE_S = 60.0  # a task that ran this long before it crashed is restarted after the shortest backoff again
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0


def next_attempt(attempt: int, ran_s: float, stable_s: float = STABLE_S) -> int:
    """Pure: the backoff step of a restart (0 = the shortest wait) after a run of ``ran_s`` seconds that ended
    in a crash, when the previous restart was at step ``attempt`` (-1: none yet)."""
    return 0 if ran_s >= stable_s else attempt + 1


def describe(exc: BaseException | None) -> str:
    """One line naming an error for logs and ``/readyz``."""
    if exc is None:
        return "ended unexpectedly"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _never(_exc: BaseException) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Down:
    """A supervised task that crashed and waits for its restart."""

    since_ms: int
    error: str
    crashes: int


@dataclass(eq=False)
class _Child:
    name: str
    run: Callable[[], Awaitable[None]]
    fatal: Callable[[BaseException], bool]
    task: asyncio.Task[None] | None = None
    retired: bool = False
    crashes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    """Keeps named tasks running; see the module's docstring."""

    def __init__(self, *, clock: Clock, rand: random.Random | None = None,
                 on_event: Callable[[str, str, str | None], None] | None = None) -> None:
        self.clock = clock
        self.rand = rand or random.Random()
        self.on_event = on_event  # (task name, "crashed" | "restarted", error or None)
        self.children: dict[str, _Child] = {}
        self.down: dict[str, Down] = {}
        self.failure: BaseException | None = None  # the first fatal error of a task
        self.failed = asyncio.Event()
        self.stopping = False  # the daemon is stopping: a task that ends now is not restarted

    def start(self, name: str, run: Callable[[], Awaitable[None]], *,
              fatal: Callable[[BaseException], bool] = _never) -> asyncio.Task[None]:
        """Run ``run()`` as the task ``name`` and keep it running until ``retire(name)``."""
        old = self.children.get(name)
        if old is not None and not old.retired:
            raise ValueError(f"a task named {name!r} is supervised already")
        child = _Child(name, run, fatal)
        child.task = asyncio.create_task(self._keep(child), name=name)
        self.children[name] = child
        return child.task

    def task(self, name: str) -> asyncio.Task[None] | None:
        child = self.children.get(name)
        return None if child is None else child.task

    def retire(self, name: str) -> asyncio.Task[None] | None:
        """The task ``name`` may end now (its owner asked it to): it is not restarted, and a restart it waits
        for is called off. Returns its task, to be awaited (or cancelled) by the caller."""
        child = self.children.get(name)
        if child is None:
            return None
        child.retired = True
        child.wake.set()
        self.down.pop(name, None)
        if self.children.get(name) is child:
            del self.children[name]
        return child.task

    async def cancel(self, name: str) -> None:
        """Retire the task ``name`` and cancel it (for tasks with nothing to finish: the lease keeper, the
        watchdog feeder)."""
        task = self.retire(name)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def stop_all(self) -> None:
        """The daemon is stopping: no task is restarted from now on (each owner ends its own)."""
        self.stopping = True
        for child in self.children.values():
            child.wake.set()
        self.down.clear()

    # ------------------------------------------------------------------------------------------ keeping

    async def _keep(self, child: _Child) -> None:
        attempt = -1
        while True:
            started = self.clock.monotonic()
            error: Exception | None = None
            try:
                await child.run()
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is None or current.cancelling():
                    raise  # the owner cancels the task (retire + cancel): it ends
                # A CancelledError nobody asked for (e.g. the HTTP server's socket closed under serve_forever)
                error = RuntimeError("cancelled from inside: the task's work ended under it")
            except Exception as exc:  # a supervisor catches what its child did not
                if child.fatal(exc):
                    if self.failure is None:
                        self.failure = exc
                    self.failed.set()
                    return
                error = exc
            if child.retired or self.stopping:
                if error is not None:
                    log.warning("task.failed_while_stopping", task=child.name, error=describe(error),
                                exc_info=error)
                return
            child.crashes += 1
            attempt = next_attempt(attempt, self.clock.monotonic() - started)
            delay = retry_delay(attempt, self.rand.random(), first=RESTART_FIRST_S, cap=RESTART_MAX_S)
            text = describe(error)
            self.down[child.name] = Down(since_ms=self.clock.now_ms(), error=text, crashes=child.crashes)
            log.error("task.crashed", task=child.name, error=text, crashes=child.crashes,
                      restart_in_s=round(delay, 2), exc_info=error)
            self._emit(child.name, "crashed", text)
            child.wake.clear()
            with contextlib.suppress(TimeoutError):
                await self.clock.wait_for(child.wake.wait(), delay)
            if child.retired or self.stopping:
                return
            self.down.pop(child.name, None)
            log.info("task.restarted", task=child.name, crashes=child.crashes)
            self._emit(child.name, "restarted", None)

    def _emit(self, name: str, what: str, error: str | None) -> None:
        if self.on_event is not None:
            try:
                self.on_event(name, what, error)
            except Exception:  # telling about it must not stop the supervising
                log.exception("supervisor.observer_failed", task=name)
