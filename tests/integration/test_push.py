"""Push + poll: the real daemon's loop with its ingress on loopback, the simulator sending FLORA's signed callbacks.

The simulator and the daemon share one manual ``FakeClock``: a run ends, and its callback is sent, when the test
moves the clock; the interval is 30 s, so an event that arrives while the clock moved less than that came
through the callback, not a sweep. Bounded by events (the file, the sweeps, the simulator's delivery log),
never by a sleep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.fakes import FakeClock, Recorder, until
from tests.integration.test_engine import EPOCH_MS, KEY, make_config, read_events, stepped_daemon
from watcher.config import IngressConfig, WatchConfig
from watcher.daemon import Daemon
from watcher.model import event_id
from watcher.secret import Secret
from watcher.simulator import RunningSimulator, run_simulator

SECRET = "whsec_push_poll_test_secret"
INTERVAL = 30.0


@dataclasses.dataclass
class Rig:
    sim: RunningSimulator
    clock: FakeClock
    daemon: Daemon
    recorder: Recorder
    events_file: Path

    @property
    def url(self) -> str:
        assert self.daemon.push is not None
        return f"http://127.0.0.1:{self.daemon.push.ingress.port}/flora/callbacks"

    def events(self) -> list[dict]:
        return read_events(self.events_file)

    def delivered(self, run_id: str) -> bool:
        return any(d["run_id"] == run_id and d["state"] == "delivered"
                   for d in (x.to_dict() for x in self.sim.sim.callbacks.deliveries.values()))

    async def step_until(self, predicate, what: str, *, step: float = 0.05, limit: float = 25.0) -> None:
        """Move the clock in small steps (less than the interval in all) until ``predicate()`` holds, letting the
        simulator send and the daemon work between steps."""
        start = self.clock.t
        while not predicate():
            assert self.clock.t - start <= limit, f"{what}: not within {limit:g}s of clock time"
            self.clock.advance(step)
            try:
                await until(predicate, what, timeout=0.05)
            except AssertionError:
                continue

    def sweeps(self) -> int:
        return len(self.recorder.reports)


@asynccontextmanager
async def rig(tmp_path: Path, **watch) -> AsyncIterator[Rig]:
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    async with run_simulator(api_key=KEY, seed=21, clock=clock, signing_secret=SECRET) as sim:
        events_file = tmp_path / "events.jsonl"
        cfg = make_config(sim.base_url, tmp_path / "state", events_file)
        cfg = dataclasses.replace(
            cfg, watch=dataclasses.replace(cfg.watch, interval=INTERVAL, **watch),
            ingress=IngressConfig(listen="127.0.0.1:0", signing_secrets=(Secret(SECRET),)))
        async with stepped_daemon(cfg, clock) as (daemon, recorder):
            await recorder.sweeps(1)
            clock.advance(0.5)  # runs created from here on are newer than the first start
            yield Rig(sim, clock, daemon, recorder, events_file)


async def test_a_callback_run_reaches_the_sink_without_waiting_for_a_sweep(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        run = r.sim.sim.create_run(technique="cctv-cam", pending_ms=200, running_ms=1_000, outcome="failed",
                                   error_code="GPU_PROVIDER_ERROR", callback_url=r.url)
        await r.step_until(lambda: r.events(), "the event")
        assert r.sweeps() == 1  # no sweep since the first: the callback brought it
        (event,) = r.events()
        assert event["id"] == event_id(run, "run.failed") and event["data"]["run_id"] == run
        assert event["data"]["error_code"] == "GPU_PROVIDER_ERROR"
        # the event is built from the API's list item: project and technique as polling gives them
        assert event["data"]["technique"]["technique_id"].startswith("tech_") and event["data"]["project_id"]
        assert event["data"]["late"] is False
        await until(lambda: r.daemon.push.confirmer.counts.get("confirmed") == 1, "the callback done")
        stats = r.daemon.push.status()
        assert stats["accepted"] == 1 and stats["rejected"] == {}


async def test_a_run_without_a_callback_still_arrives_by_polling_and_one_with_both_paths_once(
        tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        polled = r.sim.sim.create_run(technique="cctv-cam", pending_ms=100, running_ms=500, outcome="completed")
        pushed = r.sim.sim.create_generation(pending_ms=100, running_ms=500, outcome="completed",
                                             callback_url=r.url)
        await r.step_until(lambda: r.events(), "the callback's event")
        assert [e["data"]["run_id"] for e in r.events()] == [pushed]
        assert r.events()[0]["data"]["run_type"] == "generation" and r.events()[0]["data"]["model"]
        r.clock.advance(INTERVAL)  # the next sweep: the other run by polling; the pushed one is not sent again
        await r.recorder.sweeps(2)
        await until(lambda: len(r.events()) == 2, "the polled run's event")
        r.clock.advance(INTERVAL)
        await r.recorder.sweeps(3)
        ids = [e["id"] for e in r.events()]
        assert ids == [event_id(pushed, "run.completed"), event_id(polled, "run.completed")]


async def test_a_callback_that_beats_the_api_still_ends_in_the_right_event(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.sim.sim.set_faults(callback_early_ms=1_500)  # sent 1.5 s before the API shows the run ended
        tracked = r.sim.sim.create_run(technique="product-shot", pending_ms=0, running_ms=INTERVAL * 1000 + 3_000,
                                       outcome="completed", callback_url=r.url)
        r.clock.advance(INTERVAL)
        await r.recorder.sweeps(2)  # this one is tracked (running) when its callback comes
        fresh = r.sim.sim.create_run(technique="voiceover", pending_ms=0, running_ms=2_000, outcome="failed",
                                     error_code="model_timeout", callback_url=r.url)
        await r.step_until(lambda: len(r.events()) == 2, "both events")
        assert r.sweeps() == 2
        by_run = {e["data"]["run_id"]: e for e in r.events()}
        assert by_run[tracked]["type"] == "run.completed" and by_run[tracked]["data"]["status"] == "completed"
        assert by_run[fresh]["type"] == "run.failed" and by_run[fresh]["data"]["error_code"] == "model_timeout"
        for event in by_run.values():  # the event comes from the API's view, once it showed the run ended
            assert event["created_at"] >= event["data"]["completed_at"]
        # (the events can reach the sink before the confirmer counts its callback done: they are handed to the
        # sink's worker by the commit itself)
        await until(lambda: r.daemon.push.confirmer.counts.get("confirmed") == 2, "both callbacks confirmed")


async def test_callbacks_outside_the_watched_scope_are_acknowledged_and_ignored(tmp_path: Path) -> None:
    async with rig(tmp_path, workspace_id=("ws_sim4f10ra",), project_id=("prj_sim1alpha",)) as r:
        other_ws = r.sim.sim.create_run(workspace_id="ws_elsewhere", project_id="prj_sim1alpha", pending_ms=0,
                                        running_ms=300, outcome="completed", callback_url=r.url)
        other_prj = r.sim.sim.create_run(project_id="prj_sim2bravo", pending_ms=0, running_ms=300,
                                         outcome="completed", callback_url=r.url)
        watched = r.sim.sim.create_run(project_id="prj_sim1alpha", pending_ms=0, running_ms=300,
                                       outcome="completed", callback_url=r.url)
        await r.step_until(lambda: r.events(), "the watched run's event")
        await until(lambda: sum(r.daemon.push.confirmer.counts.values()) == 3, "all three callbacks done")
        assert all(r.delivered(run) for run in (other_ws, other_prj, watched))  # each answered 2xx
        assert [e["data"]["run_id"] for e in r.events()] == [watched]
        assert r.daemon.push.confirmer.counts == {"out_of_scope": 1, "unlisted": 1, "confirmed": 1}


async def test_replays_and_forgeries_change_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        run = r.sim.sim.create_run(pending_ms=0, running_ms=300, outcome="completed", callback_url=r.url)
        await r.step_until(lambda: r.events(), "the event")
        (delivery,) = r.sim.sim.callbacks.deliveries.values()
        await until(lambda: r.daemon.push.confirmer.counts.get("confirmed") == 1, "the callback done")
        body = delivery.body
        from watcher.signing import flora_headers, flora_key

        headers = flora_headers(delivery.delivery_id, delivery.event_type, delivery.timestamp or 0, body,
                                [flora_key(SECRET)])
        async with aiohttp.ClientSession() as http:
            for _ in range(3):  # FLORA's retries, an attacker's replays: 2xx, nothing new
                async with http.post(r.url, data=body, headers=headers) as resp:
                    assert resp.status == 200 and (await resp.json())["duplicate"] is True
            forged = body.replace(b"completed", b"failed")
            async with http.post(r.url, data=forged, headers=headers) as resp:
                assert resp.status == 401
        r.clock.advance(INTERVAL)
        await r.recorder.sweeps(2)
        assert [e["id"] for e in r.events()] == [event_id(run, "run.completed")]
        assert r.daemon.push.confirmer.counts == {"confirmed": 1}
        assert r.daemon.push.status()["duplicate"] == 3


async def test_a_standby_records_and_the_sweeper_confirms(tmp_path: Path) -> None:
    """The confirmer works only where the sweeps are: before the first sweep nothing is confirmed (the recorded
    callback waits in the store), and the first sweep's listing or the confirmer picks it up after."""
    clock = FakeClock(0.0, epoch_ms=EPOCH_MS, manual=True)
    async with run_simulator(api_key=KEY, seed=22, clock=clock, signing_secret=SECRET) as sim:
        events_file = tmp_path / "events.jsonl"
        cfg = make_config(sim.base_url, tmp_path / "state", events_file)
        cfg = dataclasses.replace(cfg, watch=WatchConfig(interval=INTERVAL, state_dir=tmp_path / "state"),
                                  ingress=IngressConfig(listen="127.0.0.1:0", signing_secrets=(Secret(SECRET),)))
        async with stepped_daemon(cfg, clock) as (daemon, recorder):
            await recorder.sweeps(1)
            clock.advance(0.5)
            assert daemon._confirms()
            daemon.sweeper.sweeps = 0  # as after a takeover: not confirming until it swept again
            assert not daemon._confirms()
            url = f"http://127.0.0.1:{daemon.push.ingress.port}/flora/callbacks"
            run = sim.sim.create_run(pending_ms=0, running_ms=300, outcome="completed", callback_url=url)
            clock.advance(1.0)
            await until(lambda: daemon.push.status()["accepted"] == 1, "the callback recorded")
            assert await daemon.store.pending_callbacks() != [] and read_events(events_file) == []
            clock.advance(INTERVAL)
            await recorder.sweeps(2)
            await until(lambda: read_events(events_file), "the event")
            daemon.push.confirmer.kick()
            await until(lambda: daemon.push.confirmer.counts.get("known") == 1, "the recorded callback done")
            assert [e["data"]["run_id"] for e in read_events(events_file)] == [run]


@pytest.mark.parametrize("tolerance", [600.0])
async def test_the_signing_secret_can_be_rotated_with_a_reload(tmp_path: Path, tolerance: float) -> None:
    async with rig(tmp_path) as r:
        new = dataclasses.replace(r.daemon.cfg, ingress=IngressConfig(
            listen="127.0.0.1:0", signing_secrets=(Secret("whsec_rotated"),), tolerance=tolerance))
        r.daemon.opts.reload = lambda: new
        r.daemon.request_reload()
        r.clock.advance(0.01)
        await until(lambda: r.daemon.cfg is new, "the reload")
        r.sim.sim.create_run(pending_ms=0, running_ms=300, outcome="completed", callback_url=r.url)
        r.clock.advance(1.0)
        await until(lambda: r.daemon.push.status()["rejected"], "the callback refused")
        assert r.daemon.push.status()["rejected"] == {"bad_signature": 1}


async def test_the_ingress_listener_is_supervised_and_binds_its_address_again(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        ingress = r.daemon.push.ingress
        port = ingress.port
        ingress._listener.close()  # the socket goes away under the running task
        await until(lambda: "ingress" in r.daemon.supervisor.down, "the ingress task reported down")
        await r.step_until(lambda: ingress._listener.is_serving(), "the ingress listening again", step=0.5)
        assert ingress.port == port and "ingress" not in r.daemon.supervisor.down
        run = r.sim.sim.create_run(pending_ms=0, running_ms=300, outcome="completed", callback_url=r.url)
        await r.step_until(lambda: r.events(), "the callback run's event")
        assert [e["data"]["run_id"] for e in r.events()] == [run]
