"""A wrapper that keeps secrets out of reprs, logs and tracebacks. Pure."""

from __future__ import annotations


class Secret:
    """Holds a secret string. ``str()``/``repr()`` print ``<secret>``; ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<secret>')"

    def __str__(self) -> str:
        return "<secret>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)
