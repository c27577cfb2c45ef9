"""Can the daemon create, or append to, a path? Start-time probes for ``validate.py`` (the state directory) and
for the file sink's own check (``sinks/file.py``). Shell: it looks at the filesystem, and leaves nothing behind,
and never opens a file a state ``Store`` of this process holds (``store.held_here``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["dir_problem", "file_problem"]


def _reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def dir_problem(path: Path) -> str | None:
    """Why files could not be created in directory ``path`` (missing directories would be created); None when
    they can. Probes with a temporary file in the nearest existing directory, removed at once."""
    existing = path
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as exc:
        return f"cannot look at {existing}: {_reason(exc)}"
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".flora-watcher-probe-")
    except OSError as exc:
        where = "" if existing == path else f" (creating it in {existing})"
        return f"cannot create files in {path}{where}: {_reason(exc)}"
    os.close(fd)
    os.unlink(probe)
    return None


def file_problem(path: Path, *, read: bool = False) -> str | None:
    """Why the daemon could not append to ``path`` (or create it, with its directory); None when it can."""
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return f"cannot use {path}: {_reason(exc)}"
    if st is None:
        problem = dir_problem(path.parent)
        return None if problem is None else f"cannot create {path}: {problem}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    from watcher.store import held_here

    if held_here(path):  # never open (and close) a file our own state store holds: it would drop its locks
        return f"{path} is the watcher's state store"
    try:
        os.close(os.open(path, (os.O_RDWR if read else os.O_WRONLY) | os.O_APPEND | os.O_CLOEXEC))
    except OSError as exc:
        return f"cannot {'read and write' if read else 'write'} {path}: {_reason(exc)}"
    return None
