"""Typed reads of one TOML table, with the dotted key path in every error: what ``config.py`` parses each section
with, and what every sink type's ``parse`` receives (``watcher/sinks/spec.py``).

Pure: the environment (for ``${VAR}``), the file reader (for ``*_file`` keys) and the config file's directory
(for relative paths) come in a ``ReadContext``. Every problem is a ``ConfigError`` whose key is the dotted path
(``sinks[2].url_file``) and whose message never holds a secret.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watcher.errors import ConfigError, raise_config_errors

_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VAR_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MISSING: Any = object()  # a key that is not in the table


# ---------------------------------------------------------------------------------------- ${VAR}


def interpolate(value: str, env: Mapping[str, str], key: str = "") -> str:
    """Replace every ``${VAR}`` in ``value`` from ``env``; ``$$`` is a literal ``$``; a lone ``$`` stays.

    Raises ``ConfigError(key, ...)`` naming the variable (never a value) when it is not set, and on an
    unterminated ``${`` or an invalid variable name.
    """
    out: list[str] = []
    i = 0
    while True:
        j = value.find("$", i)
        if j < 0:
            out.append(value[i:])
            return "".join(out)
        out.append(value[i:j])
        nxt = value[j + 1 : j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = value.find("}", j + 2)
            if end < 0:
                raise ConfigError(key, "unterminated '${' (write '$$' for a literal '$')")
            name = value[j + 2 : end]
            if not _VAR_NAME_RE.match(name):
                raise ConfigError(key, "invalid variable name in '${...}' (letters, digits and _ only)")
            if name not in env:
                raise ConfigError(key, f"environment variable {name} is not set")
            out.append(env[name])
            i = end + 1
        else:
            out.append("$")
            i = j + 1


# ------------------------------------------------------------------------------------------ helpers


def type_name(value: object) -> str:
    """What a TOML value is, for messages: "a string", "an array", ..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def os_reason(exc: OSError) -> str:
    """An OSError as a short reason ("No such file or directory"), never a traceback."""
    return exc.strerror or str(exc) or type(exc).__name__


def hint(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss among ``choices``; "" otherwise."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def choices_text(choices: Iterable[str]) -> str:
    """``a, b, c``: the choices in a message."""
    return ", ".join(choices)


def empty_message(raw: str) -> str:
    """Why a value is empty, naming the ``${VAR}`` it came from (never its value)."""
    refs = _VAR_REF_RE.findall(raw)
    return f"is empty (${refs[0]} is set to an empty string)" if refs else "is empty"


def check_secret_text(value: str, raw: str, key: str) -> None:
    """A secret read from ``raw`` (the text before interpolation) must be one non-empty line."""
    if not value:
        raise ConfigError(key, empty_message(raw))
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(key, "contains a line break or NUL character")


# ------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True, slots=True)
class ReadContext:
    """What reading a config may look at: the environment, a file reader (raises OSError) and the directory
    relative paths are resolved against (None: they stay as given)."""

    env: Mapping[str, str]
    read_file: Callable[[str], str]
    base_dir: Path | None

    def resolve_path(self, raw: str, key: str) -> Path:
        if not raw:
            raise ConfigError(key, "must not be empty")
        if raw == "~" or raw.startswith("~/"):
            home = self.env.get("HOME")
            if not home:
                raise ConfigError(key, "starts with ~ but $HOME is not set")
            raw = home + raw[1:]
        path = Path(raw)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return Path(os.path.normpath(path))  # cfg/../state prints as state: same file, readable

    def read_secret_file(self, path: Path, key: str) -> str:
        try:
            content = self.read_file(str(path))
        except OSError as exc:
            raise ConfigError(key, f"cannot read {path}: {os_reason(exc)}") from None
        value = content.rstrip("\r\n")
        if not value:
            raise ConfigError(key, f"{path} is empty")
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(key, f"{path} holds more than one line (or a NUL character)")
        return value


class Table:
    """One TOML table with its dotted path: typed, interpolated reads and strict key checks."""

    __slots__ = ("ctx", "data", "prefix")

    def __init__(self, data: dict[str, Any], prefix: str, ctx: ReadContext) -> None:
        self.data = data
        self.prefix = prefix
        self.ctx = ctx

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def has(self, name: str) -> bool:
        return name in self.data

    def check_keys(self, allowed: Iterable[str], *, elsewhere: Iterable[str] = (), kind: str = "") -> None:
        """Every key not in ``allowed`` is an error (all of them are reported); keys in ``elsewhere`` belong to
        another kind of sink."""
        allowed = tuple(allowed)
        elsewhere = frozenset(elsewhere)
        errors = [
            ConfigError(self.key(name), f"does not apply to a {kind} sink") if name in elsewhere
            else ConfigError(self.key(name), "unknown key" + hint(name, allowed))
            for name in self.data if name not in allowed
        ]
        raise_config_errors(errors)

    def table(self, name: str) -> Table:
        raw = self.data.get(name, MISSING)
        if raw is MISSING:
            raw = {}
        elif not isinstance(raw, dict):
            raise ConfigError(self.key(name), f"must be a table, got {type_name(raw)}")
        return Table(raw, self.key(name), self.ctx)

    def _interpolated(self, raw: Any, key: str) -> str:
        if not isinstance(raw, str):
            raise ConfigError(key, f"must be a string, got {type_name(raw)}")
        return interpolate(raw, self.ctx.env, key)

    def string(self, name: str, default: str | None = None) -> str | None:
        raw = self.data.get(name, MISSING)
        if raw is MISSING:
            return default
        return self._interpolated(raw, self.key(name))

    def required_string(self, name: str, what: str = "") -> str:
        value = self.string(name)
        if value is None:
            raise ConfigError(self.key(name), "required" + (f" ({what})" if what else ""))
        if not value:
            raise ConfigError(self.key(name), empty_message(self.data[name]))
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        assert value is not None
        if value not in choices:
            raise ConfigError(
                self.key(name), f"must be one of {choices_text(choices)}, got {value!r}" + hint(value, choices)
            )
        return value

    def strings(self, name: str) -> tuple[tuple[str, str, str], ...] | None:
        """A string or a non-empty list of strings → ((value, raw, key), ...); None when absent."""
        raw = self.data.get(name, MISSING)
        if raw is MISSING:
            return None
        key = self.key(name)
        if isinstance(raw, str):
            return ((self._interpolated(raw, key), raw, key),)
        if not isinstance(raw, list):
            raise ConfigError(key, f"must be a string or an array of strings, got {type_name(raw)}")
        if not raw:
            raise ConfigError(key, "must not be an empty array (leave the key out instead)")
        keys = [f"{key}[{i}]" for i in range(len(raw))]
        return tuple((self._interpolated(item, k), item, k) for item, k in zip(raw, keys, strict=True))

    def non_empty_strings(self, name: str) -> tuple[str, ...] | None:
        items = self.strings(name)
        if items is None:
            return None
        for value, raw, key in items:
            if not value:
                raise ConfigError(key, empty_message(raw))
        return tuple(dict.fromkeys(value for value, _, _ in items))

    def number(self, name: str, default: float, *, minimum: float = 0.0, inclusive: bool = False) -> float:
        raw = self.data.get(name, MISSING)
        if raw is MISSING:
            return default
        key = self.key(name)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(key, f"must be a number, got {type_name(raw)}")
        if not math.isfinite(raw):
            raise ConfigError(key, "must be a finite number")
        if raw < minimum or (raw == minimum and not inclusive):
            bound = "at least" if inclusive else "greater than"
            raise ConfigError(key, f"must be {bound} {minimum:g}, got {raw:g}")
        return float(raw)

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        raw = self.data.get(name, MISSING)
        if raw is MISSING:
            return default
        key = self.key(name)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(key, f"must be an integer, got {type_name(raw)}")
        if raw < minimum:
            raise ConfigError(key, f"must be at least {minimum}, got {raw}")
        return raw

    def path(self, name: str) -> Path | None:
        value = self.string(name)
        return None if value is None else self.ctx.resolve_path(value, self.key(name))

    def secret(self, name: str, file_name: str, *, many: bool = False) -> tuple[tuple[str, ...], str | None]:
        """Read ``name`` or its ``*_file`` twin → (values, which key was used). Both given is an error."""
        if self.has(name) and self.has(file_name):
            raise ConfigError(self.key(name), f"set either {name} or {file_name}, not both")
        if self.has(name):
            items = self.strings(name) if many else ((self._interpolated(self.data[name], self.key(name)),
                                                      self.data[name], self.key(name)),)
            assert items is not None
            for value, raw, key in items:
                check_secret_text(value, raw, key)
            return tuple(value for value, _, _ in items), name
        if self.has(file_name):
            items = self.strings(file_name) if many else (
                (self._interpolated(self.data[file_name], self.key(file_name)), "", self.key(file_name)),
            )
            assert items is not None
            values = tuple(
                self.ctx.read_secret_file(self.ctx.resolve_path(raw_path, key), key)
                for raw_path, _, key in items
            )
            return values, file_name
        return (), None

