"""Files that ship with flora-watcher: the systemd unit, the example config and the docs.

In a wheel they are package data under ``watcher/_data/`` (setup.py copies them there at build time); in a
checkout or an editable install they are read from the repository itself.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent

# name inside watcher/_data/ -> where the file lives in the repository
_IN_CHECKOUT = {
    "flora-watcher.service": "systemd/flora-watcher.service",
    "flora-watcher.env.example": "systemd/flora-watcher.env.example",
    "flora-watcher.example.toml": "config/flora-watcher.example.toml",
    "docs/README.md": "README.md",
}


def data_path(name: str) -> Path | None:
    """The shipped file ``name`` (``flora-watcher.service``, ``docs/operations.md`` …), or None if missing."""
    packaged = _PACKAGE / "_data" / name
    if packaged.is_file():
        return packaged
    in_checkout = _CHECKOUT / _IN_CHECKOUT.get(name, name)
    return in_checkout if in_checkout.is_file() else None


def read_data(name: str) -> str:
    path = data_path(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not shipped with this install of flora-watcher")
    return path.read_text(encoding="utf-8")
