"""What a SIGHUP reload can put in force (``settings.restart_only_changes`` / ``in_force``): pure, no daemon."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from watcher.config import Config, IngressConfig, ServerConfig, StoreConfig, WatchConfig
from watcher.secret import Secret
from watcher.settings import RESTART_KEYS, in_force, restart_only_changes

PG = Secret("postgresql://watcher:hunter2-very-secret@db.internal:5432/flora")
RUNNING = Config(watch=WatchConfig(interval=5.0, state_dir=Path("/var/lib/a")),
                 server=ServerConfig(listen="127.0.0.1:9464"),
                 ingress=IngressConfig(listen="127.0.0.1:8788", signing_secrets=(Secret("whsec_old"),)))


def test_an_unchanged_config_changes_no_restart_key_and_is_put_in_force_as_it_is() -> None:
    new = replace(RUNNING, watch=replace(RUNNING.watch, interval=30.0))
    assert restart_only_changes(RUNNING, new) == ()
    assert in_force(RUNNING, new) is new


def test_every_restart_key_is_named_and_kept_as_it_runs_while_the_rest_applies() -> None:
    new = replace(
        RUNNING,
        watch=replace(RUNNING.watch, interval=30.0, state_dir=Path("/var/lib/b")),
        store=StoreConfig(url=PG, lease=20.0, url_source="url"),
        server=ServerConfig(listen="127.0.0.1:9465"),
        ingress=replace(RUNNING.ingress, listen="127.0.0.1:8789", signing_secrets=(Secret("whsec_new"),)),
    )
    keys = restart_only_changes(RUNNING, new)
    assert keys == ("watch.state_dir", "store.url", "server.listen", "ingress.listen")
    assert set(keys) <= set(RESTART_KEYS)
    assert "hunter2" not in repr(keys)  # names, never the URL
    now = in_force(RUNNING, new)
    assert now.watch.state_dir == Path("/var/lib/a") and now.store == StoreConfig()
    assert now.server.listen == "127.0.0.1:9464" and now.ingress.listen == "127.0.0.1:8788"
    assert now.watch.interval == 30.0 and now.ingress.signing_secrets == (Secret("whsec_new"),)  # the rest applies


def test_on_postgresql_the_lease_is_a_restart_key_and_state_dir_is_not() -> None:
    running = replace(RUNNING, store=StoreConfig(url=PG))
    new = replace(running, watch=replace(running.watch, state_dir=Path("/elsewhere")),
                  store=StoreConfig(url=PG, lease=30.0))
    assert restart_only_changes(running, new) == ("store.lease",)
    assert in_force(running, new).store.lease == running.store.lease
    other = replace(new, store=StoreConfig(url=Secret("postgresql://other@db/flora")))
    assert restart_only_changes(running, other) == ("store.url",)


def test_a_listener_turned_off_by_a_reload_keeps_its_running_section() -> None:
    """Without ``listen`` the new [ingress] needs no secret: the running listener keeps the one it verifies with."""
    new = replace(RUNNING, ingress=IngressConfig(), server=ServerConfig())
    assert restart_only_changes(RUNNING, new) == ("server.listen", "ingress.listen")
    now = in_force(RUNNING, new)
    assert now.ingress == RUNNING.ingress and now.server == RUNNING.server


def test_a_listener_turned_on_by_a_reload_stays_off_until_the_next_start() -> None:
    off = replace(RUNNING, server=ServerConfig(), ingress=IngressConfig())
    now = in_force(off, RUNNING)
    assert not now.ingress.enabled and now.server.listen is None
    assert now.ingress.signing_secrets == RUNNING.ingress.signing_secrets
