"""Which sinks an event goes to. Pure: no I/O.

A sink takes an event when the event's type is in the sink's ``events`` and, for every key of its ``match``
table, at least one of that key's globs matches the event's field (``fnmatch.fnmatchcase``: case-sensitive,
``*``, ``?``, ``[seq]``). A field that is null never matches, whatever the glob (even ``"*"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from watcher.model import Event
from watcher.sinks.spec import SinkConfig


def event_field(event: Event, key: str) -> str | None:
    """The value a ``match`` key is compared with: ``technique_id``/``technique`` come from
    ``data.technique``, ``model_id`` from ``data.model``; every other key (``run_type`` too) is the ``data``
    field of that name. None when absent or null (a generation has no technique, a technique run no model)."""
    data = event.data
    if key in ("technique_id", "technique"):
        technique = data.get("technique")
        if not isinstance(technique, dict):
            return None
        value = technique.get("technique_id" if key == "technique_id" else "name")
    elif key == "model_id":
        model = data.get("model")
        value = model.get("model_id") if isinstance(model, dict) else None
    else:
        value = data.get(key)
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def matches(cfg: SinkConfig, event: Event) -> bool:
    """Whether the sink ``cfg`` takes ``event`` (its ``events`` list and every ``match`` key)."""
    if event.type not in cfg.events:
        return False
    for key, globs in cfg.match.items():
        value = event_field(event, key)
        if value is None or not any(fnmatchcase(value, glob) for glob in globs):
            return False
    return True


def route(sinks: Iterable[SinkConfig], event: Event) -> list[str]:
    """The names of the sinks that take ``event``, in configuration order."""
    return [cfg.name for cfg in sinks if matches(cfg, event)]
