#!/usr/bin/env python3
"""Take the docs' status-page pictures (docs/status-page-light.png, docs/status-page-dark.png) from a real daemon.

    .venv/bin/python scripts/screenshots.py            # writes docs/status-page-{light,dark}.png
    .venv/bin/python scripts/screenshots.py --out /tmp/shots

What runs: the browser tests' stack (tests/browser/conftest.py) — the FLORA simulator on loopback, an HTTPS
thumbnail server with a self-signed certificate, and a real `flora-watcher run` subprocess with `[server] listen`,
`[ingress] listen`, a file sink and a webhook sink whose receiver is down — then Debian's chromium, driven by
playwright (``executable_path=/usr/bin/chromium``: no browser is downloaded).

The light picture: a working day seen by the sweeper (its role in the header), with active runs, failures, recent
outcomes with thumbnails, FLORA callbacks taken by the ingress and a sink that fails. The dark picture: the same
instance a little later, while every API request answers 503, so the page shows the readiness banner (/readyz's
reason) above the same data.

Needs: the test extras (`pip install -e '.[test]'`), /usr/bin/chromium (`apt-get install chromium`) and openssl.
Nothing here waits a fixed time: each step waits for what the page or the watcher shows (60 s bound each).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, INGRESS_SECRET, KEY, ManualClock, Stack  # noqa: E402
from watcher.simulator import Simulator  # noqa: E402

WAIT_MS = 60_000
VIEWPORT = {"width": 1100, "height": 900}


def working_day(stack: Stack) -> list[str]:
    """Three runs still active, seven that ended (three failed), two of them reported by FLORA's callback."""
    now = stack.clock.now_ms()
    stack.add_run(technique="storyboard-animate", created_at=now - 170_000, pending_ms=5_000, running_ms=400_000,
                  project_id="prj_sim2bravo")
    stack.add_run(created_at=now - 75_000, pending_ms=2_000, running_ms=120_000)
    stack.add_run(technique="voiceover", created_at=now - 20_000, pending_ms=600_000, project_id="prj_sim3charlie")
    ended = [
        stack.add_run(technique="product-shot", running_ms=800),
        stack.add_run(outcome="failed", error_code="GPU_PROVIDER_ERROR", running_ms=700, project_id="prj_sim2bravo"),
        stack.add_run(technique="caption-writer", running_ms=600, project_id="prj_sim3charlie"),
        stack.add_run(technique="storyboard-animate", running_ms=900, project_id="prj_sim2bravo"),
        stack.add_run(outcome="failed", error_code="GENERATION_PROMPT_MODERATED", running_ms=500),
    ]
    stack.advance(1_000)
    stack.wait_swept()
    callback_url = stack.ingress_url()

    pushed = [stack.add_run(running_ms=300),
              stack.add_run(technique="product-shot", outcome="failed", error_code="GPU_PROVIDER_ERROR",
                            running_ms=300)]
    for run_id in pushed:  # as `callback_url` on their start request would have asked FLORA
        stack.on_loop(lambda run_id=run_id: stack.sim.callbacks.schedule(stack.sim.scenario.runs[run_id],
                                                                          callback_url))
    ended += pushed
    stack.advance(1_000)  # they end; the simulator signs and sends FLORA's callbacks to the ingress
    stack.wait_for(lambda: stack.on_loop(lambda: stack.sim.callbacks.stats()["delivered"]) >= 2,
                   "FLORA's two callbacks taken by the ingress")
    stack.wait_swept()
    return ended


def shoot(out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory(prefix="flora-screenshots-") as tmp:
        stack = Stack(Path(tmp))
        # the simulator signs its callbacks with the ingress's secret (the tests' stack leaves them unsigned)
        stack.clock = ManualClock()
        stack.sim = Simulator(api_key=KEY, seed=11, clock=stack.clock, fail_ratio=0.0, signing_secret=INGRESS_SECRET)
        try:
            stack.start()
            ended = working_day(stack)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                try:
                    for scheme in ("light", "dark"):
                        if scheme == "dark":  # the API fails from now on: /readyz 503, the page's banner
                            stack.on_loop(lambda: stack.sim.set_faults(error_burst=(1, 1)))
                        context = browser.new_context(ignore_https_errors=True, color_scheme=scheme,
                                                      viewport=VIEWPORT, service_workers="block")
                        page = context.new_page()
                        page.goto(stack.page_url)
                        for run_id in ended:
                            expect(page.locator("#event-list > li", has_text=run_id)).to_be_visible(timeout=WAIT_MS)
                        expect(page.locator("#role")).to_have_text("sweeper", timeout=WAIT_MS)
                        expect(page.locator("#ingress-counts")).to_contain_text("2 accepted", timeout=WAIT_MS)
                        expect(page.locator("#sink-list .health-failing")).to_be_visible(timeout=WAIT_MS)
                        banner = page.locator("#ready")
                        if scheme == "dark":
                            expect(banner).to_be_visible(timeout=WAIT_MS)
                        else:
                            expect(banner).to_be_hidden(timeout=WAIT_MS)
                        page.wait_for_function(
                            "() => [...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth)")
                        out.mkdir(parents=True, exist_ok=True)
                        target = out / f"status-page-{scheme}.png"
                        page.screenshot(path=str(target), full_page=True)
                        print(f"{target}: {target.stat().st_size // 1024} KiB"
                              + (f"; banner: {banner.text_content()}" if scheme == "dark" else ""))
                        context.close()
                finally:
                    browser.close()
        finally:
            stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write the two PNGs (docs/)")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install -y chromium", file=sys.stderr)
        return 1
    shoot(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
