"""Push + poll inside the daemon: the ingress listener, the confirmer and the looks, built from ``[ingress]``.

Shell (thin): it wires ``ingress.Ingress`` (verify, record, answer), ``confirm.Confirmer`` (confirm each recorded
callback with the API, through the sweep's rules) and ``confirm.Looks`` (the runs the sweep loop is asked to look
for between its sweeps) to the daemon's store, sweeper, API client, clock and observers. The daemon builds one
``Push`` when ``[ingress] listen`` is set (not with ``--once`` or ``--dry-run``), starts it after the store is
open, runs ``confirmer.run`` as a long-lived task, serves ``looks`` from its sweep loop and closes it first at
shutdown (no request is taken once the daemon stops).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from watcher.clock import Clock
from watcher.config import IngressConfig, parse_listen
from watcher.confirm import Confirmer, GroupCommit, Looks, Outcome
from watcher.ingress import Ingress
from watcher.observer import Observer
from watcher.signing import Callback, Rejection, signing_keys
from watcher.store_api import RecordedCallback

if TYPE_CHECKING:
    from watcher.api import FloraClient
    from watcher.store_api import StateStore
    from watcher.sweep import Sweeper

log = structlog.get_logger("watcher.push")

SHARED_STORE_POLL_S = 0.25  # how often the sweeper looks for callbacks other instances recorded (PostgreSQL)


def keys_of(cfg: IngressConfig) -> tuple[bytes, ...]:
    return signing_keys("flora", [secret.reveal() for secret in cfg.signing_secrets])


class Push:
    def __init__(self, cfg: IngressConfig, *, store: StateStore, sweeper: Sweeper, client: Callable[[], FloraClient],
                 clock: Clock, active: Callable[[], bool], shared_store: bool, observer: Observer,
                 wake: Callable[[], None]) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.observer = observer
        self.looks = Looks(on_request=wake)
        self._records: GroupCommit[RecordedCallback, bool] = GroupCommit(store.record_callbacks)
        self.confirmer = Confirmer(
            sweeper=sweeper, store=store, client=client, clock=clock, look=self.looks.request, active=active,
            on_outcome=self._done, poll_s=SHARED_STORE_POLL_S if shared_store else None)
        self.ingress = Ingress(path=cfg.path, keys=keys_of(cfg), tolerance_s=cfg.tolerance, record=self._record,
                               on_accepted=lambda _cb: self.confirmer.kick(), on_outcome=self._answered,
                               clock=clock)

    async def start(self) -> None:
        """Listen on ``[ingress] listen``. WatcherError when the address cannot be bound."""
        assert self.cfg.listen is not None
        host, port = parse_listen(self.cfg.listen, "ingress.listen")
        await self.ingress.start(host, port)

    def reconfigure(self, cfg: IngressConfig) -> None:
        """A reload: new secrets (a rotation), path and tolerance apply at once; another address at a restart."""
        if cfg.listen != self.cfg.listen:
            log.warning("ingress.listen_unchanged", listening=self.cfg.listen, configured=cfg.listen,
                        note="ingress.listen changes at the next restart")
        self.ingress.keys = keys_of(cfg)
        self.ingress.path = cfg.path
        self.ingress.tolerance_s = cfg.tolerance
        self.cfg = IngressConfig(listen=self.cfg.listen, path=cfg.path, signing_secrets=cfg.signing_secrets,
                                 tolerance=cfg.tolerance, secret_source=cfg.secret_source)

    async def close(self) -> None:
        await self.ingress.close()
        self.looks.cancel_all()

    async def _record(self, cb: Callback) -> bool:
        """Durably, before the answer; requests that come together share one transaction (one fsync)."""
        return await self._records.submit(RecordedCallback(
            delivery_id=cb.delivery_id, run_id=cb.run_id, type=cb.type, run_type=cb.run_type,
            workspace_id=cb.workspace_id, received_ms=self.clock.now_ms()))

    def _answered(self, outcome: str, reason: Rejection | None) -> None:
        self.observer.on_ingress(outcome, None if reason is None else reason.value)

    def _done(self, run_id: str, outcome: Outcome, seconds: float) -> None:
        self.observer.on_callback(run_id, str(outcome), seconds)

    def status(self) -> dict[str, Any]:
        """What ``/api/v1/status`` and the page show: where it listens and what it has seen (no secret)."""
        return {"listen": self.cfg.listen, "path": self.cfg.path, "host": self.ingress.host, "port": self.ingress.port,
                "tolerance": self.cfg.tolerance, "confirming": self.confirmer.pending,
                "confirmed": dict(sorted(self.confirmer.counts.items())), **self.ingress.stats.snapshot()}
