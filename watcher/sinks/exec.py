"""Exec: run the configured argv (no shell) with the event's JSON on stdin (CONTRACT §5).

The child gets the daemon's environment minus what is not its business (``FLORA_API_KEY`` and systemd's
``NOTIFY_SOCKET``/``WATCHDOG_*``/``LISTEN_*``), plus ``FLORA_EVENT_ID``, ``FLORA_EVENT_TYPE`` and
``FLORA_RUN_ID``. It runs in its own session, so a timeout kills it and everything it started.

Outcome: exit 0 → delivered; exit 75 (``EX_TEMPFAIL``) → retry later; any other exit → permanent
``exec_failed`` with the start of stderr; not finished within ``timeout`` → killed, retry later; program not
found or not executable → permanent ``bad_config``.

Keys: ``command`` (required: argv as an array; no shell), ``concurrency`` (default 8). Start-time check: the
program exists and is executable (``shutil.which``); ``check-config`` runs the same check, and ``run``
refuses to start without it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import structlog

from watcher.errors import ConfigError, DeliveryError, Reason
from watcher.model import Event
from watcher.render import event_body, one_line
from watcher.sinks.spec import SendResult, SinkConfig, SinkType, Table, type_name

log = structlog.get_logger("watcher.sinks")

EX_TEMPFAIL = 75
OUTPUT_CAP = 64 * 1024
DETAIL_CHARS = 200
HIDDEN_ENV = frozenset({
    "FLORA_API_KEY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
    "LISTEN_FDNAMES",
})


@dataclass(frozen=True, slots=True)
class ExecOptions:
    command: tuple[str, ...] = ()  # argv: the program and its arguments
    concurrency: int = 8  # programs running at once (the events of one run stay in order)


def parse(t: Table) -> ExecOptions:
    key = t.key("command")
    raw = t.data.get("command")
    if raw is None:
        raise ConfigError(key, "required: the program and its arguments as an array (no shell)")
    if not isinstance(raw, list):
        raise ConfigError(key, f"must be an array of strings (argv; no shell), got {type_name(raw)}")
    items = t.strings("command")
    assert items is not None
    if not items[0][0]:
        raise ConfigError(items[0][2], "the program must not be empty")
    return ExecOptions(command=tuple(value for value, _, _ in items),
                       concurrency=t.integer("concurrency", 8, minimum=1))


def program_problem(program: str) -> str | None:
    """Why ``program`` cannot be run (not found on PATH, missing, not executable); None when it can."""
    if shutil.which(program) is not None:
        return None
    if "/" in program:
        return f"{program} does not exist or is not executable"
    return f"program {program!r} not found on PATH"


def check(cfg: SinkConfig[ExecOptions]) -> Iterator[ConfigError]:
    command = cfg.options.command
    if command and command[0] and (problem := program_problem(command[0])) is not None:
        yield ConfigError(cfg.key("command[0]"), problem)


def child_env(base: Mapping[str, str], event: Event) -> dict[str, str]:
    """The child's environment: ``base`` without ``HIDDEN_ENV``, plus the event's id, type and run id."""
    env = {k: v for k, v in base.items() if k not in HIDDEN_ENV}
    env.update(FLORA_EVENT_ID=event.id, FLORA_EVENT_TYPE=event.type, FLORA_RUN_ID=str(event.data.get("run_id")))
    return env


def _snippet(data: bytes) -> str:
    text = one_line(data.decode("utf-8", errors="replace"))
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS] + "…"


async def _read_capped(stream: asyncio.StreamReader | None, cap: int = OUTPUT_CAP) -> bytes:
    """Everything up to ``cap`` bytes; the rest is read and dropped so the child never blocks on a full pipe."""
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
    return bytes(kept)


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child does not read stdin; its exit status decides
    finally:
        proc.stdin.close()


class ExecSink:
    def __init__(self, cfg: SinkConfig[ExecOptions]) -> None:
        if not cfg.options.command or not cfg.options.command[0]:
            raise ConfigError(cfg.key("command"), "required: the program and its arguments (no shell)")
        self.name = cfg.name
        self.config = cfg
        self.command: tuple[str, ...] = cfg.options.command
        self.program = self.command[0]

    def __repr__(self) -> str:
        return f"<ExecSink {self.name!r} {self.program!r}>"

    async def start(self) -> None:
        if program_problem(self.program) is not None:  # run refuses this at start (check); the program went away
            log.warning("sink.command_not_found", sink=self.name, program=self.program,
                        hint="deliveries to this sink will fail until the program exists and is executable")

    async def close(self) -> None:
        return None

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        data = body if body is not None else event_body(event)
        proc = await self._spawn(event)
        try:
            stdout, stderr, _ = await asyncio.wait_for(
                asyncio.gather(_read_capped(proc.stdout), _read_capped(proc.stderr), _feed(proc, data)),
                timeout=self.config.timeout,
            )
            await proc.wait()
        except TimeoutError:
            await self._kill(proc)
            raise DeliveryError(f"{self.program} did not finish within {self.config.timeout:g}s and was killed",
                                retryable=True, reason=Reason.TIMEOUT) from None
        except BaseException:  # cancelled (shutdown): do not leave the child behind
            await self._kill(proc)
            raise
        return self._outcome(proc.returncode, stdout, stderr)

    async def _spawn(self, event: Event) -> asyncio.subprocess.Process:
        failure: DeliveryError | None = None
        try:
            return await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=child_env(os.environ, event), start_new_session=True,
            )
        except FileNotFoundError:
            failure = DeliveryError(f"command not found: {self.program}", retryable=False,
                                    reason=Reason.BAD_CONFIG)
        except PermissionError:
            failure = DeliveryError(f"command is not executable: {self.program}", retryable=False,
                                    reason=Reason.BAD_CONFIG)
        except OSError as exc:
            reason = (exc.strerror or type(exc).__name__).lower()
            failure = DeliveryError(f"cannot start {self.program}: {reason}", retryable=True,
                                    reason=Reason.IO_ERROR)
        raise failure

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
        await asyncio.shield(proc.wait())

    def _outcome(self, code: int | None, stdout: bytes, stderr: bytes) -> SendResult:
        if code == 0:
            return SendResult(status=0, detail=_snippet(stdout))
        said = _snippet(stderr)
        tail = f": {said}" if said else ""
        if code == EX_TEMPFAIL:
            raise DeliveryError(f"{self.program} exited with 75 (temporary failure){tail}", retryable=True,
                                reason=Reason.EXEC_FAILED, status=code)
        if code is not None and code < 0:
            raise DeliveryError(f"{self.program} was killed by signal {-code}{tail}", retryable=False,
                                reason=Reason.EXEC_FAILED, status=code)
        raise DeliveryError(f"{self.program} exited with {code}{tail}", retryable=False,
                            reason=Reason.EXEC_FAILED, status=code)


SINK = SinkType(name="exec", keys=("command", "concurrency"), options=ExecOptions, parse=parse,
                build=lambda cfg, ctx: ExecSink(cfg), check=check)
