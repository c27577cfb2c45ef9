"""Start-time checks of the world a valid config points at: the SQLite state directory, each sink's own checks (a
file it appends to, a program it runs) and each sink's construction. Shell: it looks at the filesystem and
PATH, and leaves nothing behind.

``check-config`` and ``run`` call the same ``check_start``, so they accept and refuse the same configs; a
problem is a ``ConfigError`` naming the key (``watch.state_dir``, ``sinks[0].path``), all of them at once
(``ConfigErrors``), and ``cli.py`` turns it into exit status 2.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from watcher.config import Config
from watcher.errors import ConfigError, raise_config_errors
from watcher.store import store_path


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
    try:
        os.close(os.open(path, (os.O_RDWR if read else os.O_WRONLY) | os.O_APPEND | os.O_CLOEXEC))
    except OSError as exc:
        return f"cannot {'read and write' if read else 'write'} {path}: {_reason(exc)}"
    return None


def state_dir_problem(state_dir: Path) -> str | None:
    """Why the state store could not be opened in ``state_dir`` for reading and writing; None when it can."""
    problem = dir_problem(state_dir)
    if problem is None and store_path(state_dir).exists():
        problem = file_problem(store_path(state_dir), read=True)
    return problem


def start_problems(cfg: Config) -> list[ConfigError]:
    """Every start-time problem of ``cfg``, in config order. Builds each sink (not started) to run its own
    constructor checks, the same construction ``run`` does."""
    from watcher.sinks import REGISTRY, build_sink

    errors: list[ConfigError] = []
    sqlite_state = cfg.store.url is None  # with a PostgreSQL [store], state_dir holds no state
    if sqlite_state and (problem := state_dir_problem(Path(cfg.watch.state_dir))) is not None:
        errors.append(ConfigError("watch.state_dir", problem))
    for sink in cfg.sinks:
        try:
            build_sink(sink)
        except ConfigError as exc:
            errors.append(exc)
            continue
        spec = REGISTRY[sink.type]
        errors.extend(spec.check(sink))
    return errors


def check_start(cfg: Config) -> None:
    """Raise ``ConfigError`` (``ConfigErrors`` for several) unless ``cfg`` can start. Used by ``check-config``
    and by the daemon's startup and reload."""
    raise_config_errors(start_problems(cfg))
