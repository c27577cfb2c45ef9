"""The simulator against FLORA's official TypeScript SDK, a real client of the real API.

Runs when ``FLORA_SDK_DIR`` names a directory holding ``node_modules/@flora-ai/flora`` and ``node`` is on PATH
(CI: ``npm install --prefix "$FLORA_SDK_DIR" @flora-ai/flora``); skipped otherwise, and failed under CI
(``CI`` set: ``tests/needs.py``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.needs import unavailable
from watcher.simulator import run_simulator

SDK_DIR = os.environ.get("FLORA_SDK_DIR")
SCRIPT = Path(__file__).with_name("sdk_check.mjs")
KEY = "sk_test_conformance"


@pytest.fixture(autouse=True)
def _sdk_installed() -> None:
    if not SDK_DIR or not (Path(SDK_DIR) / "node_modules" / "@flora-ai" / "flora").is_dir() \
            or shutil.which("node") is None:
        unavailable("set FLORA_SDK_DIR to a directory with node_modules/@flora-ai/flora (and have node) to run")


async def test_the_official_typescript_sdk_speaks_to_the_simulator() -> None:
    async with run_simulator(api_key=KEY, seed=5, pending_ms=(0, 60_000), running_ms=(0, 60_000)) as running:
        sim = running.sim
        now = sim.now_ms()
        created = set(sim.create_runs(250, created_at=(now - 120_000, now)))
        generations = {sim.create_generation(created_at=now - 1_000 * i) for i in range(130)}
        proc = await asyncio.create_subprocess_exec(
            "node", str(SCRIPT),
            env={**os.environ, "FLORA_SDK_DIR": SDK_DIR, "FLORA_BASE_URL": running.base_url,
                 "FLORA_API_KEY": KEY, "SIM_ADMIN_URL": running.admin_url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        report = json.loads(out.decode().strip().splitlines()[-1])
        stats = sim.stats()

    listed = report["listed_ids"]
    assert len(listed) == len(set(listed)) == 250 and set(listed) == created
    assert stats["by_route"]["GET /api/v1/technique-runs"]["200"] >= 3  # 250 runs at 100 a page
    item = report["first_item"]
    assert item["technique_run_id"] == item["run_id"] and item["technique"]["technique_id"].startswith("tech_")
    for run in report["retrieved"]:
        assert run["run_id"] in created and run["status"] in ("pending", "running", "completed", "failed")
        assert "technique" not in run and run["poll_url"].startswith(running.base_url)
    assert report["bad_key_error"] == "AuthenticationError"
    assert report["not_found_error"] == "NotFoundError"
    assert report["bad_request_error"] == "BadRequestError"
    assert report["created"]["status"] == "pending" and report["created"]["run_id"].startswith("run_")
    assert report["generation_ids"] and set(report["generation_ids"]) == generations  # two pages
    gen = report["first_generation"]
    assert gen["generation_id"] == gen["run_id"] and gen["model"]["model_id"] and "technique" not in gen
    ticket = report["generation_ticket"]
    assert ticket["type"] == "generation" and ticket["model"] == {"model_id": "kling-v2.1"}
    assert ticket["poll_url"] == f"{running.base_url}/runs/{ticket['run_id']}"
    assert report["generation_retrieved"]["run_id"] == ticket["run_id"]
    assert report["generation_retrieved"]["status"] == "pending"
    assert report["rate_limit_error"] == "RateLimitError"
    assert stats["by_route"]["GET /api/v1/technique-runs"]["429"] == 3  # first try + maxRetries 2
    assert report["rate_limit_ms"] < 5_000  # it waited retry-after-ms (50 ms), not its own backoff


# ------------------------------------------------------------------------------------------------ webhooks

WEBHOOK_SECRET = "whsec_conformance_Zm9vYmFy"


async def _unwrap_with_the_sdk(cases: list[dict], tmp_path: Path) -> dict:
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), "webhooks", str(path), env={**os.environ, "FLORA_SDK_DIR": SDK_DIR or ""},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])["results"]


def _case(name: str, body: bytes, headers: dict[str, str], secret: str, now_ms: int) -> dict:
    return {"name": name, "body_b64": base64.b64encode(body).decode(), "headers": headers, "secret": secret,
            "now_ms": now_ms}


def _tampered(name: str, body: bytes, headers: dict[str, str], secret: str, now_ms: int) -> list[dict]:
    """The genuine request and what must not pass: another byte in the body, another secret, a v1 off by one
    digit, a shifted t, an old t."""
    sig = headers["Flora-Signature"]
    t = int(sig.split(",")[0].removeprefix("t="))
    v1 = sig.split("v1=")[1].split(",")[0]
    flipped = v1[:-1] + ("0" if v1[-1] != "0" else "1")
    return [
        _case(name, body, headers, secret, now_ms),
        _case(f"{name}/body", body.replace(b'"', b"'", 1), headers, secret, now_ms),
        _case(f"{name}/body+space", body + b" ", headers, secret, now_ms),
        _case(f"{name}/secret", body, headers, secret + "x", now_ms),
        _case(f"{name}/v1", body, {**headers, "Flora-Signature": sig.replace(v1, flipped)}, secret, now_ms),
        _case(f"{name}/t", body, {**headers, "Flora-Signature": sig.replace(f"t={t}", f"t={t + 1}")}, secret,
              now_ms),
        _case(f"{name}/stale", body, headers, secret, now_ms + 3_600_000),
    ]


async def test_the_sdk_unwraps_the_simulators_callbacks_and_our_flora_signed_webhooks(tmp_path: Path) -> None:
    from tests.sinks.helpers import Receiver, make_event
    from watcher.clock import SYSTEM_CLOCK
    from watcher.secret import Secret
    from watcher.sinks.registry import sink_config
    from watcher.sinks.webhook import WebhookSink

    receiver = Receiver()
    await receiver.start()
    try:
        async with run_simulator(api_key=KEY, seed=9, signing_secret=WEBHOOK_SECRET) as running:
            sim = running.sim
            technique = sim.create_run(callback_url=receiver.url(), pending_ms=0, running_ms=20, outcome="failed",
                                       error_code="GPU_PROVIDER_ERROR")
            generation = sim.create_generation(callback_url=receiver.url(), pending_ms=0, running_ms=20,
                                               outcome="completed")
            deadline = asyncio.get_running_loop().time() + 20
            while len(receiver.requests) < 2:
                assert asyncio.get_running_loop().time() < deadline, "no callbacks from the simulator"
                await asyncio.sleep(0.01)
            now_ms = sim.now_ms()
        sink = WebhookSink(sink_config(name="ops", type="webhook", url=Secret(receiver.url("/sink")),
                                      secrets=(Secret(WEBHOOK_SECRET), Secret("whsec_rotated")),
                                      signature="flora"), clock=SYSTEM_CLOCK)
        await sink.start()
        await sink.send(make_event("run.completed"))
        await sink.close()
    finally:
        await receiver.stop()

    by_run = {json.loads(r.body)["data"]["run_id"]: r for r in receiver.requests[:2]}
    ours = receiver.requests[2]
    cases: list[dict] = []
    for name, req in (("technique", by_run[technique]), ("generation", by_run[generation]), ("sink", ours)):
        headers = {k: v for k, v in req.headers.items() if k.lower().startswith("flora-")}
        cases += _tampered(name, req.body, headers, WEBHOOK_SECRET, now_ms)
    sink_headers = {k: v for k, v in ours.headers.items() if k.lower().startswith("flora-")}
    cases.append(_case("sink/rotated", ours.body, sink_headers, "whsec_rotated", now_ms))
    results = await _unwrap_with_the_sdk(cases, tmp_path)

    accepted = {name for name, r in results.items() if r["ok"]}
    assert accepted == {"technique", "generation", "sink", "sink/rotated"}, results
    assert all(r["error"] == "WebhookVerificationError" for r in results.values() if not r["ok"]), results
    failed = results["technique"]["event"]
    assert failed["id"].startswith("whd_") and failed["type"] == "run.failed"
    assert failed["data"] == {"run_id": technique, "run_type": "technique", "workspace_id": "ws_sim4f10ra",
                              "status": "failed", "error_code": "GPU_PROVIDER_ERROR",
                              "error_message": failed["data"]["error_message"]}
    assert results["generation"]["event"]["data"]["run_type"] == "generation"
    assert results["sink"]["event"]["type"] == "run.completed"
