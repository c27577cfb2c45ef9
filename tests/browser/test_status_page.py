"""The status page against a running watcher on the simulator, in chromium (see conftest.py)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import HOSTILE, KEY, Stack

WAIT_MS = 30_000  # a liveness bound: a sweep (0.2 s) plus a poll of the page (1.5 s) take seconds on a busy machine


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def event_card(page: Any, run_id: str) -> Any:
    return page.locator("#event-list > li", has_text=run_id)


def active_card(page: Any, run_id: str) -> Any:
    return page.locator("#active-list > li", has_text=run_id)


def test_screenshots_light_and_dark(stack: Stack, open_page: Any, tmp_path: Path) -> None:
    """Both themes render the page whole (the docs' pictures are scripts/screenshots.py's). First in this file,
    so the page shows a plausible working day rather than the hostile runs of the tests below."""
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
        stack.add_run(running_ms=500),
        stack.add_run(outcome="failed", error_code="GPU_PROVIDER_ERROR", technique="product-shot", running_ms=400),
    ]
    stack.advance(1_000)
    stack.wait_swept()
    for scheme in ("light", "dark"):
        page, _ = open_page(color_scheme=scheme, viewport={"width": 1100, "height": 900})
        for run_id in ended:
            expect(event_card(page, run_id)).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#sink-list .health-failing")).to_be_visible(timeout=WAIT_MS)
        page.wait_for_function("() => [...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth)")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(17, 20, 24)") == (scheme == "dark")
        page.screenshot(path=str(tmp_path / f"status-page-{scheme}.png"), full_page=True)
        assert (tmp_path / f"status-page-{scheme}.png").stat().st_size > 10_000


def test_active_failed_and_completed_runs_are_shown(stack: Stack, open_page: Any) -> None:
    active = stack.add_run(running_ms=3_600_000)  # an hour-long run, some way in
    failed = stack.add_run(outcome="failed", error_code="GPU_PROVIDER_ERROR", running_ms=500)
    done = stack.add_run(technique="product-shot", running_ms=500)
    stack.advance(60_000)
    stack.wait_swept()

    page, seen = open_page()
    run = active_card(page, active)
    expect(run).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#role")).to_have_text("sweeper")  # its role, as /readyz says it (issue 24 item 5)
    expect(run.locator(".badge")).to_have_text("running")
    expect(run.locator(".subject")).to_have_text("CCTV Cam")
    assert 0 < float(run.locator("progress").get_attribute("value") or 0) < 100

    card = event_card(page, failed)
    expect(card.locator(".error-code")).to_have_text("GPU_PROVIDER_ERROR", timeout=WAIT_MS)
    expect(card.locator(".error-message")).to_have_text("The provider failed to complete the generation.")
    expect(page.locator("#failure-list li", has_text="GPU_PROVIDER_ERROR")).to_be_visible()

    thumbs = event_card(page, done).locator("img")
    expect(thumbs).to_have_count(2, timeout=WAIT_MS)
    assert thumbs.first.get_attribute("loading") == "lazy"
    assert (thumbs.first.get_attribute("src") or "").startswith(stack.thumb_origin + f"/{done}/")
    page.wait_for_function("() => [...document.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0)")
    assert any(done in hit for hit in stack.thumb_hits)

    sinks = page.locator("#sink-list > li")
    expect(sinks.filter(has_text="journal")).to_be_visible()
    expect(sinks.filter(has_text="ops-webhook").locator(".badge")).to_have_text("failing", timeout=WAIT_MS)

    # Nothing but the page's own origin and the thumbnails' origin was asked for.
    assert seen and all(url.startswith((stack.page_url, stack.thumb_origin + "/")) for url in seen), seen


def test_a_run_that_fails_while_the_page_is_open_appears_without_reload(stack: Stack, open_page: Any) -> None:
    page, _ = open_page()
    page.evaluate("window.__same_document = true")
    run = stack.add_run(outcome="failed", error_code="GENERATION_PROVIDER_TIMEOUT", running_ms=120_000)
    expect(active_card(page, run)).to_be_visible(timeout=WAIT_MS)
    expect(event_card(page, run)).to_have_count(0)

    stack.advance(121_000)  # the run fails now, on the simulator's clock
    expect(event_card(page, run).locator(".error-code")).to_have_text("GENERATION_PROVIDER_TIMEOUT", timeout=WAIT_MS)
    expect(active_card(page, run)).to_have_count(0, timeout=WAIT_MS)
    assert page.evaluate("window.__same_document") is True


def test_hostile_api_text_stays_inert(stack: Stack, open_page: Any) -> None:
    hostile_active = stack.add_run(name=HOSTILE, running_ms=3_600_000)
    hostile_failed = stack.add_run(name=HOSTILE, outcome="failed", error_code="<b>GPU_*</b>",
                                   error_message=HOSTILE + " </script><script>window.__pwned=2</script>",
                                   running_ms=500)
    hostile_links = stack.add_run(name=HOSTILE, running_ms=500, outputs=(
        ("o1", "imageUrl", "javascript:window.__pwned=3"),
        ("o2", "videoUrl", "javascript:window.__pwned=4"),
        ("o3", "imageUrl", "data:image/svg+xml,<svg onload='window.__pwned=5'/>"),
        ("o4", "text", HOSTILE),
    ))
    stack.advance(2_000)
    stack.wait_swept()

    page, _ = open_page()
    expect(active_card(page, hostile_active).locator(".subject")).to_have_text(HOSTILE, timeout=WAIT_MS)
    card = event_card(page, hostile_failed)
    expect(card.locator(".subject")).to_have_text(HOSTILE, timeout=WAIT_MS)
    expect(card.locator(".error-code")).to_have_text("<b>GPU_*</b>")
    expect(card.locator(".error-message")).to_contain_text("<script>window.__pwned=2</script>")
    links = event_card(page, hostile_links)
    expect(links.locator(".text-output")).to_have_text(HOSTILE, timeout=WAIT_MS)
    page.wait_for_timeout(300)  # give an injected handler a chance to run
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img[src='x'], main script, main b, [onerror], [onload]").count() == 0
    assert page.locator("a[href^='javascript:'], img[src^='javascript:'], img[src^='data:']").count() == 0


def test_security_headers_and_no_secret(stack: Stack) -> None:
    for path in ("", "api/v1/status", "static/status.js", "static/status.css", "metrics", "nope"):
        status, headers, _ = fetch(stack.page_url + path)
        assert status in (200, 404), path
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "img-src 'self' https:" in csp
        assert "default-src 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
    _, headers, body = fetch(stack.page_url + "api/v1/status")
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store"
    document = json.loads(body)
    assert {"active_runs", "recent_events", "sinks", "failures_last_hour", "version", "now"} <= set(document)
    _, _, html = fetch(stack.page_url)
    for text in (body, html):
        for secret in (KEY, "secret-path-0123", "127.0.0.1:9/", "hooks/"):
            assert secret.encode() not in text
    assert {s["name"]: s["type"] for s in document["sinks"]} == {"journal": "file", "ops-webhook": "webhook"}


def test_page_and_json_refuse_a_foreign_host_name(stack: Stack) -> None:
    """DNS rebinding: a page on another site that resolves its name to 127.0.0.1 cannot read the status."""
    for path in ("", "api/v1/status"):
        status, headers, _ = fetch(stack.page_url + path, {"Host": "rebind.example.com"})
        assert status == 421
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert fetch(stack.page_url + "api/v1/status", {"Host": "localhost"})[0] == 200


def test_readable_on_a_phone(stack: Stack, open_page: Any) -> None:
    stack.add_run(name="A technique with a rather long name that has to wrap on a small screen",
                  running_ms=3_600_000)
    failed = stack.add_run(outcome="failed", error_code="GENERATION_DOWNSTREAM_SERVICE_ERROR", running_ms=500)
    stack.advance(1_000)
    page, _ = open_page(color_scheme="dark", viewport={"width": 390, "height": 844})
    expect(page.locator("#active-list > li").first).to_be_visible(timeout=WAIT_MS)
    expect(event_card(page, failed).locator(".error-message")).to_be_visible(timeout=WAIT_MS)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    font_px = page.evaluate("parseFloat(getComputedStyle(document.querySelector('.error-message')).fontSize)")
    assert font_px >= 14


def test_the_ingress_is_shown_with_its_refusals(stack: Stack, open_page: Any) -> None:
    """[ingress]: where it listens and what it refused, by reason; the signing secret nowhere."""
    from tests.browser.conftest import INGRESS_SECRET

    url = stack.ingress_url()
    for headers in ({}, {"Flora-Signature": "t=1,v1=" + "a" * 64}):
        request = urllib.request.Request(url, data=b'{"id":"whd_x"}', headers=headers, method="POST")
        try:
            urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
    page, _ = open_page()
    box = page.locator("#ingress")
    expect(box).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#ingress-where")).to_contain_text("/flora/callbacks", timeout=WAIT_MS)
    bound = url.split("//", 1)[1].split("/", 1)[0]  # listen = "127.0.0.1:0": the port it got, not ":0"
    expect(page.locator("#ingress-where")).to_contain_text(f"listening on {bound}/flora/callbacks", timeout=WAIT_MS)
    expect(page.locator("#ingress-counts")).to_contain_text("2 rejected (stale 1, unsigned 1)", timeout=WAIT_MS)
    status, _, body = fetch(stack.page_url + "api/v1/status")
    assert status == 200 and json.loads(body)["ingress"]["rejected"] == {"stale": 1, "unsigned": 1}
    assert INGRESS_SECRET.encode() not in body and INGRESS_SECRET not in page.content()
