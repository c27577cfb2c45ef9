"""JSON Lines file: one event per line, each event at most once per file (CONTRACT §5).

The file is opened ``O_APPEND`` and created mode 0600 (its parent directory 0700 when missing); every line is
written with one ``write`` and ``fsync``ed before ``send`` returns. On start the existing file is scanned for
event ids, so an event already in it is not appended again (``send`` reports success) — across restarts too.
A torn last line (a crash mid-write) is ignored by the scan, and the next append starts on a fresh line.
All file I/O runs in a worker thread, off the event loop.

Keys: ``path`` (required; relative to the config file). Start-time check: the file can be appended to, or
created (``fsprobe.file_problem``); ``check-config`` and ``run`` run the same check.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from watcher.errors import ConfigError, DeliveryError, Reason
from watcher.fsprobe import file_problem
from watcher.model import Event
from watcher.render import event_body
from watcher.sinks.spec import SendResult, SinkConfig, SinkType, Table

FILE_MODE = 0o600
DIR_MODE = 0o700


@dataclass(frozen=True, slots=True)
class FileOptions:
    path: Path | None = None


def parse(t: Table) -> FileOptions:
    path = t.path("path")
    if path is None:
        raise ConfigError(t.key("path"), "required: the JSON Lines file to append events to")
    return FileOptions(path=path)


def check(cfg: SinkConfig[FileOptions]) -> Iterator[ConfigError]:
    if cfg.options.path is not None and (problem := file_problem(Path(cfg.options.path))) is not None:
        yield ConfigError(cfg.key("path"), problem)


def scan_ids(path: Path) -> tuple[set[str], bool]:
    """The event ids in a JSON Lines file, and whether it ends without a line break (a torn last line).
    Lines that are empty or do not parse as a JSON object with a string ``id`` are ignored."""
    ids: set[str] = set()
    last = b"\n"
    with open(path, "rb") as f:
        for raw in f:
            last = raw
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                ids.add(obj["id"])
    return ids, not last.endswith(b"\n")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSink:
    def __init__(self, cfg: SinkConfig[FileOptions]) -> None:
        if cfg.options.path is None:
            raise ConfigError(cfg.key("path"), "required: the JSON Lines file to append events to")
        self.name = cfg.name
        self.config = cfg
        self.path = Path(cfg.options.path)
        self._fd: int | None = None
        self._ids: set[str] = set()
        self._needs_newline = False
        self._rescan = False  # a batch write failed: read the ids back before writing again
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<FileSink {self.name!r} {str(self.path)!r}>"

    async def start(self) -> None:
        """Open (creating) the file and read the ids already in it. Raises ConfigError when the file or its
        directory cannot be created or read (a path the daemon cannot use is a configuration problem)."""
        async with self._lock:
            if self._fd is not None:
                return
            try:
                await asyncio.to_thread(self._open)
            except OSError as exc:
                reason = (exc.strerror or type(exc).__name__).lower()
                raise ConfigError(self.config.key("path"), f"cannot open {self.path}: {reason}") from None

    def _open(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(parent, DIR_MODE)
        existed = self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        try:
            if existed:
                self._ids, self._needs_newline = scan_ids(self.path)
            else:
                _fsync_dir(parent)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    async def close(self) -> None:
        async with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                await asyncio.to_thread(os.close, fd)

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        """Append the event as one line and fsync; an event already in the file is a success."""
        if self._fd is None:
            await self.start()
        line = body if body is not None and b"\n" not in body else event_body(event)
        async with self._lock:
            if event.id in self._ids:
                return SendResult(detail=f"already in {self.path}")
            data = (b"\n" if self._needs_newline else b"") + line + b"\n"
            failure: DeliveryError | None = None
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                self._needs_newline = True  # a partial write may have left a torn line
                reason = (exc.strerror or type(exc).__name__).lower()
                failure = DeliveryError(f"cannot write {self.path}: {reason}", retryable=True,
                                        reason=Reason.IO_ERROR)
            if failure is not None:
                raise failure
            self._needs_newline = False
            self._ids.add(event.id)
        return SendResult(detail=f"appended to {self.path}")

    async def send_many(self, events: list[Event], bodies: list[bytes | None]) -> SendResult:
        """Append several events (one line each, those not yet in the file) with one ``write`` and one
        ``fsync``: the dispatcher's batch, so a burst costs one fsync, not one per event. After a failed write
        the file is scanned again before the next one (lines that made it are not written twice)."""
        if self._fd is None:
            await self.start()
        async with self._lock:
            if self._rescan:
                self._ids, self._needs_newline = await asyncio.to_thread(scan_ids, self.path)
                self._rescan = False
            lines: list[bytes] = []
            fresh: list[str] = []
            for event, body in zip(events, bodies, strict=True):
                if event.id in self._ids or event.id in fresh:
                    continue
                lines.append(body if body is not None and b"\n" not in body else event_body(event))
                fresh.append(event.id)
            if not lines:
                return SendResult(detail=f"already in {self.path}")
            data = (b"\n" if self._needs_newline else b"") + b"\n".join(lines) + b"\n"
            failure: DeliveryError | None = None
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                self._needs_newline = True
                self._rescan = True
                reason = (exc.strerror or type(exc).__name__).lower()
                failure = DeliveryError(f"cannot write {self.path}: {reason}", retryable=True,
                                        reason=Reason.IO_ERROR)
            if failure is not None:
                raise failure
            self._needs_newline = False
            self._ids.update(fresh)
        return SendResult(detail=f"appended {len(fresh)} events to {self.path}")

    def _append(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise OSError(0, "the file is closed")
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)


SINK = SinkType(name="file", keys=("path",), options=FileOptions, parse=parse,
                build=lambda cfg, ctx: FileSink(cfg), check=check,
                describe=lambda cfg: [str(cfg.options.path)])
