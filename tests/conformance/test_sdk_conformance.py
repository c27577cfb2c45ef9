"""The simulator against FLORA's official TypeScript SDK, a real client of the real API.

Runs only when ``FLORA_SDK_DIR`` names a directory holding ``node_modules/@flora-ai/flora`` and ``node`` is on
PATH (CI: ``npm install --prefix "$FLORA_SDK_DIR" @flora-ai/flora``); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from watcher.simulator import run_simulator

SDK_DIR = os.environ.get("FLORA_SDK_DIR")
SCRIPT = Path(__file__).with_name("sdk_check.mjs")
KEY = "sk_test_conformance"

pytestmark = pytest.mark.skipif(
    not SDK_DIR or not (Path(SDK_DIR) / "node_modules" / "@flora-ai" / "flora").is_dir()
    or shutil.which("node") is None,
    reason="set FLORA_SDK_DIR to a directory with node_modules/@flora-ai/flora (and have node) to run",
)


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
