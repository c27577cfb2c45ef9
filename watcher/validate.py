"""Start-time checks of the world a valid config points at: the SQLite state directory, each sink's own checks (a
file it appends to, a program it runs) and each sink's construction. Shell: it looks at the filesystem and
PATH, and leaves nothing behind.

``check-config`` and ``run`` call the same ``check_start``, so they accept and refuse the same configs; a
problem is a ``ConfigError`` naming the key (``watch.state_dir``, ``sinks[0].path``), all of them at once
(``ConfigErrors``), and ``cli.py`` turns it into exit status 2. The filesystem probes themselves
(``dir_problem``, ``file_problem``) are in ``watcher/fsprobe.py``, which the file sink's own check uses too.

The daemon runs these checks again on SIGHUP, with its state store open. They never open a file a ``Store`` of
this process holds (``store.held_here``): closing that descriptor would drop the store's POSIX locks on it, and
the next admin command's close would then delete the WAL under the daemon (SQLite "How To Corrupt" §2.2).
"""

from __future__ import annotations

from pathlib import Path

from watcher.config import Config
from watcher.errors import ConfigError, raise_config_errors
from watcher.fsprobe import dir_problem, file_problem
from watcher.statelock import LOCK_FILENAME
from watcher.store import held_here, store_path


def state_dir_problem(state_dir: Path) -> str | None:
    """Why the state store could not be opened in ``state_dir`` for reading and writing; None when it can."""
    problem = dir_problem(state_dir)
    file = store_path(state_dir)
    # A store this process holds open (the daemon, reloading) is usable: it is not opened again to find out.
    if problem is None and file.exists() and not held_here(file):
        problem = file_problem(file, read=True)
    return problem


def state_files(state_dir: Path) -> set[Path]:
    """The files of a SQLite state: the database, its -wal/-shm/-journal sidecars and the daemon's lock file."""
    db = store_path(state_dir).absolute()
    return {db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal")), db.with_name(LOCK_FILENAME)}


def sink_path_problems(cfg: Config) -> list[ConfigError]:
    """A sink whose ``path`` is one of the state's own files would open (and close) it inside the daemon."""
    own = state_files(Path(cfg.watch.state_dir)) if cfg.store.url is None else set()
    errors = []
    for sink in cfg.sinks:
        path = getattr(sink.options, "path", None)
        if isinstance(path, (str, Path)) and Path(path).absolute() in own:
            errors.append(ConfigError(sink.key("path"), f"{path} is one of the watcher's own state files"))
    return errors


def start_problems(cfg: Config) -> list[ConfigError]:
    """Every start-time problem of ``cfg``, in config order. Builds each sink (not started) to run its own
    constructor checks, the same construction ``run`` does."""
    from watcher.sinks.registry import REGISTRY, build_sink

    errors: list[ConfigError] = []
    sqlite_state = cfg.store.url is None  # with a PostgreSQL [store], state_dir holds no state
    if sqlite_state and (problem := state_dir_problem(Path(cfg.watch.state_dir))) is not None:
        errors.append(ConfigError("watch.state_dir", problem))
    errors.extend(sink_path_problems(cfg))
    for sink in cfg.sinks:
        if any(e.key == sink.key("path") for e in errors):
            continue
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
