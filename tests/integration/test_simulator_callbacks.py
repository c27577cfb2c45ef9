"""The simulator's run callbacks (flora-api.md §5) to a real receiver on loopback, on the simulator's clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from tests.fakes import FakeClock, until
from watcher.signing import CallbackRejected, Rejection, flora_key, unwrap, verify_flora
from watcher.simulator import RunningSimulator, run_simulator
from watcher.simulator.callbacks import DEFAULT_SIGNING_SECRET, RETRY_DELAYS_MS

KEY = "sk_test_sim"
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRET = "whsec_callbacks_test"
T0 = 1_764_400_000_000
CREATE_BODY = {"inputs": [{"id": "prompt", "type": "text", "value": "a fox"}], "mode": "async"}


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    url: str
    got: list[Received] = field(default_factory=list)
    status: int = 204


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver("")

    async def hook(request: web.Request) -> web.Response:
        rec.got.append(Received(await request.read(), dict(request.headers)))
        if rec.status in (301, 302, 307):
            return web.Response(status=rec.status, headers={"Location": "/elsewhere"})
        return web.Response(status=rec.status)

    async def elsewhere(request: web.Request) -> web.Response:
        raise AssertionError("a redirect was followed")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_route("*", "/elsewhere", elsewhere)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0, epoch_ms=T0, manual=True)


@pytest.fixture
async def running(clock: FakeClock) -> AsyncIterator[RunningSimulator]:
    async with run_simulator(api_key=KEY, seed=11, clock=clock, pending_ms=1_000, running_ms=4_000,
                             signing_secret=SECRET) as r:
        yield r


async def post(running: RunningSimulator, path: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession(headers=AUTH) as http, http.post(running.base_url + path, json=body) as resp:
        return resp.status, await resp.json()


def verified(got: Received, now_ms: int, secret: str = SECRET):
    return unwrap(got.body, got.headers.get("Flora-Signature"), [flora_key(secret)], now_s=now_ms / 1000,
                  tolerance_s=600)


async def test_a_technique_run_started_with_a_callback_url_calls_back_once_when_it_ends(
        running, clock, receiver) -> None:
    status, created = await post(running, "/techniques/cctv-cam/runs", {**CREATE_BODY, "callback_url": receiver.url})
    assert status == 201
    run_id = created["run_id"]
    truth = running.sim.run_truth(run_id)
    clock.advance((truth["completed_at"] - clock.now_ms()) / 1000 - 0.001)
    running.sim.now_ms()
    assert running.sim.callbacks.stats()["attempts"] == 0  # not before the run ends
    clock.advance(0.001)
    await until(lambda: receiver.got, "the callback")
    await until(lambda: running.sim.callbacks.stats()["delivered"] == 1, "the delivery to count")
    [got] = receiver.got
    cb = verified(got, clock.now_ms())
    assert cb.delivery_id.startswith("whd_") and cb.run_id == run_id and cb.run_type == "technique"
    assert cb.workspace_id == truth["workspace_id"] and cb.status == truth["outcome"]
    assert cb.type == f"run.{truth['outcome']}" and cb.api_version == "2026-06-11"
    assert got.headers["Flora-Webhook-Id"] == cb.delivery_id and got.headers["Flora-Event"] == cb.type
    assert got.headers["Content-Type"] == "application/json"
    assert "outputs" not in json.loads(got.body)["data"]  # FLORA sends no outputs
    assert cb.timestamp == clock.now_ms() // 1000
    await until(lambda: running.sim.callbacks.pending == 0, "nothing left to send")
    clock.advance(3600)
    running.sim.now_ms()
    assert len(receiver.got) == 1 and running.sim.callbacks.pending == 0


async def test_a_failed_generation_calls_back_with_its_error(running, clock, receiver) -> None:
    sim = running.sim
    sim.set_faults(callback_delay_ms=250)
    status, ticket = await post(running, "/generate", {
        "project_id": "prj_sim1alpha", "workspace_id": "ws_sim4f10ra", "prompt": "p", "type": "image",
        "callback_url": receiver.url})
    assert status == 201
    run_id = ticket["run_id"]
    failed = sim.create_generation(outcome="failed", error_code="GPU_PROVIDER_ERROR", callback_url=receiver.url,
                                   running_ms=100, pending_ms=0)
    clock.advance(60)
    await until(lambda: len(receiver.got) == 2, "both callbacks")
    by_run = {verified(g, clock.now_ms()).run_id: verified(g, clock.now_ms()) for g in receiver.got}
    assert by_run[run_id].run_type == "generation"
    cb = by_run[failed]
    assert (cb.status, cb.error_code, cb.type) == ("failed", "GPU_PROVIDER_ERROR", "run.failed")
    assert cb.error_message
    delivery = next(d for d in sim.callbacks.deliveries.values() if d.run_id == failed)
    assert delivery.due_ms == sim.run_truth(failed)["completed_at"] + 250  # callback_delay_ms


async def test_failed_attempts_are_retried_after_10s_1min_5min_byte_for_byte(running, clock, receiver) -> None:
    receiver.status = 503
    sim = running.sim
    run_id = sim.create_run(callback_url=receiver.url, pending_ms=0, running_ms=500)
    ends = sim.run_truth(run_id)["completed_at"]
    clock.advance((ends - clock.now_ms()) / 1000)
    await until(lambda: len(receiver.got) == 1, "the first attempt")
    for n, delay_ms in enumerate(RETRY_DELAYS_MS, start=2):
        await until(lambda: sim.callbacks.next_due_ms() is not None, "the retry to be planned")
        clock.advance(delay_ms / 1000 - 0.01)
        sim.now_ms()
        assert len(receiver.got) == n - 1, f"attempt {n} came early"
        clock.advance(0.01)
        await until(lambda n=n: len(receiver.got) == n, f"attempt {n}")
    await until(lambda: sim.callbacks.stats()["failed"] == 1, "the delivery to fail for good")
    assert len({g.body for g in receiver.got}) == 1
    assert len({g.headers["Flora-Signature"] for g in receiver.got}) == 1  # same t, same signature
    [delivery] = sim.callbacks.deliveries.values()
    assert delivery.state == "failed" and [a.status for a in delivery.attempts] == [503] * 4
    gaps = [b.at_ms - a.at_ms for a, b in zip(delivery.attempts, delivery.attempts[1:], strict=False)]
    assert gaps == list(RETRY_DELAYS_MS)
    # The last retry comes ~6 min after t: a 600 s tolerance still takes it (the SDK's 300 s would not).
    verified(receiver.got[-1], clock.now_ms())
    with pytest.raises(CallbackRejected) as err:
        verify_flora(receiver.got[-1].body, receiver.got[-1].headers["Flora-Signature"], [flora_key(SECRET)],
                     now_s=clock.now_ms() / 1000, tolerance_s=300)
    assert err.value.reason is Rejection.STALE
    clock.advance(3600)
    sim.now_ms()
    assert len(receiver.got) == 4


async def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(running, clock, receiver) -> None:
    receiver.status = 302
    sim = running.sim
    sim.create_run(callback_url=receiver.url, pending_ms=0, running_ms=100)
    clock.advance(1)
    await until(lambda: sim.callbacks.stats()["failed_attempts"] == 1, "the redirected attempt")
    receiver.status = 200
    clock.advance(RETRY_DELAYS_MS[0] / 1000)
    await until(lambda: sim.callbacks.stats()["delivered"] == 1, "the retry to be delivered")
    assert len(receiver.got) == 2


async def test_an_unreachable_receiver_is_retried(running, clock, receiver) -> None:
    sim = running.sim
    dead = receiver.url.rsplit(":", 1)[0] + ":9/hook"  # discard port: nothing listens
    sim.create_run(callback_url=dead, pending_ms=0, running_ms=100)
    clock.advance(1)
    await until(lambda: sim.callbacks.stats()["failed_attempts"] == 1, "the failed attempt")
    [delivery] = sim.callbacks.deliveries.values()
    assert delivery.attempts[0].status is None and delivery.attempts[0].error
    assert delivery.state == "pending" and sim.callbacks.next_due_ms() == delivery.attempts[0].at_ms + 10_000


async def test_an_early_callback_arrives_while_the_api_still_shows_the_run_running(running, clock, receiver) -> None:
    sim = running.sim
    sim.set_faults(callback_early_ms=2_000)
    run_id = sim.create_run(callback_url=receiver.url, pending_ms=0, running_ms=5_000)
    clock.advance(3.5)
    await until(lambda: receiver.got, "the early callback")
    async with aiohttp.ClientSession(headers=AUTH) as http, \
            http.get(f"{running.base_url}/runs/{run_id}") as resp:
        assert (await resp.json())["status"] == "running"
    assert verified(receiver.got[0], clock.now_ms()).status in ("completed", "failed")


async def test_dropped_and_duplicated_callbacks(running, clock, receiver) -> None:
    sim = running.sim
    sim.set_faults(callback_drop_share=1.0)
    dropped = sim.create_run(callback_url=receiver.url, pending_ms=0, running_ms=100)
    sim.set_faults(callback_drop_share=0.0, callback_duplicate_share=1.0)
    twice = sim.create_run(callback_url=receiver.url, pending_ms=0, running_ms=100)
    clock.advance(120)
    await until(lambda: len(receiver.got) == 2, "the duplicated callback")
    # the receiver holds a request before the simulator has its answer: wait for the simulator to count it
    await until(lambda: sim.callbacks.pending == 0 and sim.callbacks.stats()["delivered"] == 1, "the sends settled")
    assert {verified(g, clock.now_ms()).run_id for g in receiver.got} == {twice}
    assert receiver.got[0].body == receiver.got[1].body
    states = {d.run_id: d.state for d in sim.callbacks.deliveries.values()}
    assert states == {dropped: "dropped", twice: "delivered"}
    assert sim.stats()["callbacks"] == {
        "scheduled": 2, "attempts": 1, "delivered": 1, "failed_attempts": 0, "failed": 0, "dropped": 1,
        "duplicates": 1, "pending": 0}


async def test_several_signing_secrets_sign_with_one_v1_each(clock, receiver) -> None:
    async with run_simulator(api_key=KEY, seed=2, clock=clock, signing_secret=["whsec_old", "whsec_new"]) as r:
        r.sim.create_run(callback_url=receiver.url, pending_ms=0, running_ms=100)
        clock.advance(1)
        await until(lambda: receiver.got, "the callback")
    header = receiver.got[0].headers["Flora-Signature"]
    assert header.count("v1=") == 2
    for secret in ("whsec_old", "whsec_new"):
        verified(receiver.got[0], clock.now_ms(), secret)


async def test_the_default_secret_signs_when_none_is_given(clock, receiver) -> None:
    async with run_simulator(api_key=KEY, seed=2, clock=clock) as r:
        r.sim.create_run(callback_url=receiver.url, pending_ms=0, running_ms=100)
        clock.advance(1)
        await until(lambda: receiver.got, "the callback")
    verified(receiver.got[0], clock.now_ms(), DEFAULT_SIGNING_SECRET)


async def test_admin_api_creates_runs_with_callbacks_and_lists_deliveries(running, clock, receiver) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{running.admin_url}/runs", json={
                "count": 3, "callback_url": receiver.url, "pending_ms": 0, "running_ms": 100}) as resp:
            assert resp.status == 201
            run_ids = (await resp.json())["run_ids"]
        clock.advance(1)
        await until(lambda: len(receiver.got) == 3, "three callbacks")
        await until(lambda: running.sim.callbacks.stats()["delivered"] == 3, "the simulator to count them delivered")
        async with http.get(f"{running.admin_url}/callbacks", params={"run_id": run_ids[0]}) as resp:
            listing = await resp.json()
        async with http.post(f"{running.admin_url}/runs", json={"callback_url": "https://10.0.0.1/x"}) as resp:
            assert resp.status == 400
    [delivery] = listing["deliveries"]
    assert delivery["run_id"] == run_ids[0] and delivery["state"] == "delivered"
    assert delivery["attempts"][0]["status"] == 204 and listing["stats"]["delivered"] == 3


@pytest.mark.parametrize(("url", "ok"), [
    ("http://127.0.0.1:8000/hook", True),  # loopback: the simulator only
    ("http://localhost/hook", True),
    ("http://[::1]:9/hook", True),
    ("https://hooks.example.com/flora", True),
    ("http://hooks.example.com/flora", False),  # FLORA: https only
    ("https://10.0.0.7/hook", False),
    ("https://192.168.1.2/hook", False),
    ("https://box.local/hook", False),
    ("https://api.internal/hook", False),
    ("https://169.254.169.254/latest", False),
    ("ftp://127.0.0.1/hook", False),
    ("https://hooks.example.com:99999/x", False),
])
async def test_callback_urls_follow_floras_rules_plus_loopback(running, url, ok) -> None:
    status, body = await post(running, "/techniques/cctv-cam/runs", {**CREATE_BODY, "callback_url": url})
    assert status == (201 if ok else 400), body


def test_the_cli_default_secret_is_the_simulators() -> None:
    from watcher.commands import simulate
    assert simulate.DEFAULT_SIGNING_SECRET == DEFAULT_SIGNING_SECRET
