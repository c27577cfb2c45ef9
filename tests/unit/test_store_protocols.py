"""The admin commands' blocking view of the state store (``store_api.AdminStore``) is the engine's
``StateStore``, method for method: the SQLite ``Store`` has each one with the same parameters (mypy checks the
types where ``open_store`` returns it), and every ``StateStore`` coroutine of that name takes the same
parameters, so ``store_pg.BlockingStore`` over a PostgreSQL store gives the commands what SQLite gives them. A
rename on one side fails here instead of turning into a command that silently shows less."""

from __future__ import annotations

import inspect

import pytest

from watcher.store import AsyncStore, Store
from watcher.store_api import AdminStore, StateStore


def members(protocol: type) -> list[str]:
    return sorted(name for name in vars(protocol) if not name.startswith("_") and name not in ("path",))


def parameters(fn) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


ADMIN = members(AdminStore)


def test_the_admin_view_names_what_the_commands_call() -> None:
    assert {"summary", "sink_pauses", "sink_states", "list_deliveries", "replay", "list_events"} <= set(ADMIN)


@pytest.mark.parametrize("name", [n for n in ADMIN if n != "close"])
def test_each_admin_method_is_the_engines_coroutine_with_the_same_parameters(name: str) -> None:
    assert inspect.iscoroutinefunction(getattr(StateStore, name))
    assert parameters(getattr(AdminStore, name)) == parameters(getattr(StateStore, name))
    assert parameters(getattr(Store, name)) == parameters(getattr(AdminStore, name))
    assert inspect.iscoroutinefunction(getattr(AsyncStore, name))


def test_the_postgresql_store_has_every_admin_method_as_a_coroutine() -> None:
    store_pg = pytest.importorskip("watcher.store_pg")  # psycopg is an extra
    for name in ADMIN:
        if name == "close":  # BlockingStore's own: it closes the wrapped store's pool and its event loop
            assert callable(store_pg.BlockingStore.close)
            continue
        method = getattr(store_pg.PgStore, name)
        assert inspect.iscoroutinefunction(method), name
        assert parameters(method) == parameters(getattr(StateStore, name)), name
