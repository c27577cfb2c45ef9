"""Push + poll against a real `flora-watcher run` (a subprocess) on loopback: the simulator starts runs with a
``callback_url`` pointing at the daemon's ingress and sends FLORA's signed callbacks in real time; a webhook
receiver on loopback gets the events.

What a user would see: callback runs reach the receiver before the next sweep is even due; runs started
without a callback come with the next sweep; each transition once, with one id, when both paths saw it;
forged, stale, unsigned, garbage and oversize requests get their 4xx and change nothing; a replayed delivery
gets 2xx and changes nothing; a kill -9 right after the 2xx loses nothing; the signing secret never shows up
in a log, ``status``, ``check-config``, the status page or the state. Bounded by events (log lines, receiver
counts, metrics), never by a sleep that must be long enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.reliability.harness import Receiver, WatcherProcess, find_leaks, http_get, write_config
from watcher.model import event_id
from watcher.signing import flora_headers, flora_key
from watcher.simulator import RunningSimulator, run_simulator

KEY = "sk_test_push_daemon_0123456789"
INTERVAL = 20.0  # long enough that a sweep cannot explain a callback run's event, even on a busy machine
LIVENESS = 60.0  # a bound for a hung test only


@dataclass
class Rig:
    sim: RunningSimulator
    receiver: Receiver
    watcher: WatcherProcess
    secret: str
    tmp: Path
    config: Path
    ingress_url: str = ""
    server_url: str = ""

    def events(self) -> list[dict]:
        return [r.event for r in self.receiver.accepted() if r.event is not None]

    def run_ids(self) -> list[str]:
        return [e["data"]["run_id"] for e in self.events()]

    async def wait(self, predicate, what: str, timeout: float = LIVENESS) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            if not self.watcher.alive():
                raise AssertionError(f"the watcher exited while waiting for {what}")
            await asyncio.sleep(0.02)

    async def metric(self, name: str, **labels: str) -> float:
        status, text = await http_get(self.server_url + "/metrics")
        assert status == 200
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    async def started(self) -> None:
        """The current process listens (its ingress and server lines) and has swept once."""
        offset = self.watcher.started_at_offset
        await self.watcher.wait_for_log('"ingress.listening"', LIVENESS, after=offset)
        await self.watcher.wait_for_log('"sweep.finished"', LIVENESS, after=offset)
        self.server_url = await self.watcher.server_url(LIVENESS)
        for line in self.watcher.log_events()[::-1]:
            if line.get("event") == "ingress.listening":
                self.ingress_url = f"http://127.0.0.1:{line['port']}/flora/callbacks"
                break
        await self.wait_metric("flora_watcher_sweeps_total", 1)  # the first sweep, as the metrics tell it

    async def wait_metric(self, name: str, at_least: float) -> None:
        deadline = time.monotonic() + LIVENESS
        while await self.metric(name) < at_least:
            assert time.monotonic() < deadline, f"{name} to reach {at_least}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, crash_points: tuple[str, ...] = ()) -> AsyncIterator[Rig]:
    secret = "whsec_CANARYpush" + secrets.token_hex(12)
    async with run_simulator(api_key=KEY, seed=31, signing_secret=secret) as sim, Receiver() as receiver:
        secret_file = tmp_path / "signing-secret"
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
        cfg = write_config(
            tmp_path, base_url=sim.base_url, api_key=KEY, events_file=tmp_path / "events.jsonl",
            webhook_url=receiver.origin + "/hook", interval=INTERVAL, listen="127.0.0.1:0",
            extra_sinks=f'\n[ingress]\nlisten = "127.0.0.1:0"\nsigning_secret_file = "{secret_file}"\n')
        watcher = WatcherProcess(cfg, tmp_path / "logs")
        r = Rig(sim, receiver, watcher, secret, tmp_path, cfg)
        await watcher.start(crash_points=crash_points)
        try:
            await r.started()
            yield r
        finally:
            if watcher.alive():
                await watcher.terminate()


async def post(url: str, body: bytes, headers: dict[str, str], *, method: str = "POST") -> int:
    async with aiohttp.ClientSession() as http, http.request(method, url, data=body, headers=headers) as resp:
        return resp.status


async def test_callback_runs_arrive_before_the_next_sweep_and_polling_covers_the_rest(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        sweeps_before = await r.metric("flora_watcher_sweeps_total")
        pushed = [r.sim.sim.create_run(pending_ms=(0, 200), running_ms=(100, 1_200), callback_url=r.ingress_url)
                  for _ in range(12)]
        pushed += [r.sim.sim.create_generation(pending_ms=0, running_ms=(100, 800), callback_url=r.ingress_url)
                   for _ in range(3)]
        await r.wait(lambda: set(pushed) <= set(r.run_ids()), "every callback run's event")
        assert await r.metric("flora_watcher_sweeps_total") == sweeps_before  # no sweep brought them
        # Quiet first: every callback sent (none left for the simulator to retry) and every recorded one confirmed.
        # A confirmation still in its retry delay looks at the top of the listing once more, and would find the
        # runs below before the sweep does (seen at load 20: the polled runs arrived with no sweep).
        await r.wait(lambda: r.sim.sim.callbacks.pending == 0, "the simulator's callbacks all sent")
        assert await r.metric("flora_watcher_callbacks_total", outcome="accepted") >= len(pushed)
        deadline = time.monotonic() + LIVENESS
        while (await r.metric("flora_watcher_callbacks_confirmed_total")
               < await r.metric("flora_watcher_callbacks_total", outcome="accepted")):
            assert time.monotonic() < deadline, "every recorded callback confirmed"
            await asyncio.sleep(0.05)
        # Runs started without a callback (while no callback comes) arrive with the next sweep.
        polled = r.sim.sim.create_runs(3, pending_ms=0, running_ms=300)
        await r.wait(lambda: set(polled) <= set(r.run_ids()), "the polled runs' events (next sweep)")
        assert await r.metric("flora_watcher_sweeps_total") > sweeps_before
        # That sweep listed the callback runs again too: still one event each, one id each.
        await r.wait_metric("flora_watcher_sweeps_total", sweeps_before + 1)
        events = r.events()
        assert sorted(e["id"] for e in events) == sorted(
            event_id(run, "run.completed" if r.sim.sim.run_truth(run)["outcome"] == "completed" else "run.failed")
            for run in pushed + polled)
        by_run = {e["data"]["run_id"]: e for e in events}
        for run in pushed:  # the API's view, with what only a listing gives
            truth = r.sim.sim.run_truth(run)
            assert by_run[run]["data"]["status"] == truth["outcome"] and by_run[run]["data"]["project_id"]
        assert await r.metric("flora_watcher_callbacks_total", outcome="accepted") == len(pushed)
        # each one confirmed: by its own look or fetch, or by another callback's look ("known" then)
        await r.wait_metric("flora_watcher_callbacks_confirmed_total", len(pushed))
        assert (await r.metric("flora_watcher_callbacks_confirmed_total", outcome="confirmed")
                + await r.metric("flora_watcher_callbacks_confirmed_total", outcome="known")) == len(pushed)


async def test_what_is_not_a_genuine_callback_changes_nothing_and_a_replay_is_2xx(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        run = r.sim.sim.create_run(pending_ms=0, running_ms=200, outcome="completed", callback_url=r.ingress_url)
        await r.wait(lambda: r.run_ids() == [run], "the callback run's event")
        (delivery,) = r.sim.sim.callbacks.deliveries.values()
        genuine = flora_headers(delivery.delivery_id, delivery.event_type, delivery.timestamp or 0, delivery.body,
                                [flora_key(r.secret)])
        now = int(time.time())
        other = json.dumps({"id": "whd_forged", "type": "run.failed", "data": {
            "run_id": "run_forged", "run_type": "technique", "workspace_id": "ws_sim4f10ra",
            "status": "failed"}}).encode()

        def signed(body: bytes, t: int = now, secret: str = r.secret) -> dict[str, str]:
            return flora_headers("whd_x", "run.failed", t, body, [flora_key(secret)])

        cases = {
            "forged": (other, signed(other, secret="whsec_attacker"), 401),
            "tampered": (delivery.body.replace(b"completed", b"failed"), genuine, 401),
            "stale": (other, signed(other, t=now - 3_600), 401),
            "unsigned": (other, {}, 401),
            "garbage": (b"\x00\xffnot json at all", signed(b"\x00\xffnot json at all"), 400),
            "no envelope": (b'{"id": 1}', signed(b'{"id": 1}'), 400),
            "oversize": (b" " * (256 * 1024 + 1), signed(b" " * (256 * 1024 + 1)), 413),
        }
        for name, (body, headers, status) in cases.items():
            assert await post(r.ingress_url, body, headers) == status, name
        assert await post(r.ingress_url, b"", {}, method="GET") == 405
        assert await post(r.ingress_url + "/other", delivery.body, genuine) == 404
        for _ in range(3):  # FLORA's retry of the same delivery, or a replay: 2xx, nothing new
            assert await post(r.ingress_url, delivery.body, genuine) == 200
        rejected = await r.metric("flora_watcher_callbacks_rejected_total")
        assert rejected == len(cases) + 2
        assert await r.metric("flora_watcher_callbacks_total", outcome="duplicate") == 3
        # one summary line, not a line per request
        await r.watcher.terminate()
        lines = [e for e in r.watcher.log_events() if e.get("event") == "ingress.rejected"]
        assert 1 <= len(lines) <= 2 and sum(line["total"] for line in lines) == len(cases) + 2
        assert r.run_ids() == [run]
        assert "run_forged" not in (tmp_path / "state" / "state.sqlite3").read_bytes().decode("latin-1")


async def test_a_kill_9_right_after_the_2xx_loses_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path, crash_points=("callback_answered",)) as r:
        run = r.sim.sim.create_run(pending_ms=0, running_ms=200, outcome="failed", callback_url=r.ingress_url)
        assert await r.watcher.wait(LIVENESS) == -9  # died right after answering
        (delivery,) = r.sim.sim.callbacks.deliveries.values()
        deadline = time.monotonic() + LIVENESS
        while not delivery.attempts and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert [a.status for a in delivery.attempts] == [200]  # FLORA saw a 2xx: it will not send it again
        assert r.run_ids() == []
        await r.watcher.start()  # no crash point this time
        await r.started()
        await r.wait(lambda: r.run_ids() == [run], "the event after the restart")
        await r.wait_metric("flora_watcher_callbacks_confirmed_total", 1)  # the recorded delivery, done too
        assert [e["id"] for e in r.events()] == [event_id(run, "run.failed")]


async def test_the_signing_secret_never_shows(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        run = r.sim.sim.create_run(pending_ms=0, running_ms=200, callback_url=r.ingress_url)
        await r.wait(lambda: r.run_ids() == [run], "the event")
        status, page = await http_get(r.server_url + "/api/v1/status")
        assert status == 200 and json.loads(page)["ingress"]["accepted"] == 1
        _, metrics = await http_get(r.server_url + "/metrics")
        outputs = [page, metrics]
        for args in (["status"], ["status", "--json"], ["check-config"]):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "watcher", args[0], "-c", str(r.config), *args[1:],
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), LIVENESS)
            assert proc.returncode == 0, err.decode()
            outputs.append(out.decode() + err.decode())
        assert "ingress:" in outputs[2] and "1 callback in 24 h (confirmed 1)" in outputs[2]
        assert json.loads(outputs[3])["ingress"]["last_24h"] == {"confirmed": 1}
        assert "127.0.0.1:0/flora/callbacks (signing secret from ingress.signing_secret_file" in outputs[4]
        await r.watcher.terminate()
    needle = r.secret.encode()
    assert not any(needle in text.encode() for text in outputs)
    leaks = find_leaks([tmp_path / "logs", tmp_path / "state", tmp_path / "events.jsonl"],
                       {"signing secret": needle, "its random part": r.secret[len("whsec_"):].encode()})
    assert leaks == []


pytestmark = pytest.mark.slow
