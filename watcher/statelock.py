"""One daemon per SQLite state: an exclusive ``flock`` on ``<state_dir>/flora-watcher.lock``.

Two daemons on one SQLite state would both sweep and silently split the events between them. ``run`` takes
this lock before it opens the store and holds it until it exits; a second ``run`` is refused with the PID
of the holder. The kernel drops the lock when the holder's process ends, however it ends (SIGKILL, crash),
so a stale lock file never blocks a restart; the file itself stays (deleting it would race with the next
holder). Read-only commands (status, deliveries) do not take it; several instances on one PostgreSQL store
are a separate, deliberate mode and do not use it either.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from watcher.errors import ConfigError

LOCK_FILENAME = "flora-watcher.lock"


class StateLocked(Exception):
    """Another process holds the lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"PID {pid}" if pid else "another process"
        super().__init__(
            f"the state in {path.parent} is in use by another flora-watcher ({holder}); "
            "stop it first: two daemons on one state would split the events between them"
        )


class StateLock:
    """A held lock; ``release()`` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def acquire(state_dir: str | os.PathLike[str]) -> StateLock:
    """Take the lock without waiting. Raises ``StateLocked`` when it is held, ``ConfigError`` (key
    ``watch.state_dir``) when the directory or the lock file cannot be created."""
    directory = Path(state_dir)
    path = directory / LOCK_FILENAME
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError("watch.state_dir", f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise StateLocked(path, pid) from None
    except OSError as exc:
        os.close(fd)
        raise ConfigError("watch.state_dir", f"cannot lock {path}: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):  # the PID is for the message of the next one refused; best effort
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
