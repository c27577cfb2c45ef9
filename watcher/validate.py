"""Start-time checks of the world a valid config points at: the SQLite state directory, each sink's own checks (a
file it appends to, a program it runs) and each sink's construction. Shell: it looks at the filesystem and
PATH, and leaves nothing behind.

``check-config`` and ``run`` call the same ``check_start``, so they accept and refuse the same configs; a
problem is a ``ConfigError`` naming the key (``watch.state_dir``, ``sinks[0].path``), all of them at once
(``ConfigErrors``), and ``cli.py`` turns it into exit status 2. The filesystem probes themselves
(``dir_problem``, ``file_problem``) are in ``watcher/fsprobe.py``, which the file sink's own check uses too.
"""

from __future__ import annotations

from pathlib import Path

from watcher.config import Config
from watcher.errors import ConfigError, raise_config_errors
from watcher.fsprobe import dir_problem, file_problem
from watcher.store import store_path


def state_dir_problem(state_dir: Path) -> str | None:
    """Why the state store could not be opened in ``state_dir`` for reading and writing; None when it can."""
    problem = dir_problem(state_dir)
    if problem is None and store_path(state_dir).exists():
        problem = file_problem(store_path(state_dir), read=True)
    return problem


def start_problems(cfg: Config) -> list[ConfigError]:
    """Every start-time problem of ``cfg``, in config order. Builds each sink (not started) to run its own
    constructor checks, the same construction ``run`` does."""
    from watcher.sinks.registry import REGISTRY, build_sink

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
