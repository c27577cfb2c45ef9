"""The metrics and health endpoint, scraped over real HTTP on loopback."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FakeClock
from watcher.errors import ConfigError, WatcherError
from watcher.metrics import Metrics
from watcher.server import HealthSource, parse_listen, start_server


@pytest.fixture
async def served():
    """(metrics, health, clock, base url) with a server on an OS-chosen loopback port."""
    metrics = Metrics()
    clock = FakeClock(1000.0, epoch_ms=0)
    health = HealthSource(interval=5, clock=clock)
    server = await start_server("127.0.0.1:0", metrics, health)
    try:
        yield metrics, health, clock, server.url
    finally:
        await server.close()


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_move_after_the_daemon_reports(served):
    metrics, _, _, url = served
    status, content_type, before = await get(url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    b = samples(before)
    assert b[("flora_watcher_sweeps_total", (("outcome", "ok"),))] == 0
    assert b[("flora_watcher_tracked_runs", (("status", "running"),))] == 0

    metrics.sweep_done(True, 0.4)
    metrics.sweep_done(False, 2.0)
    metrics.api_request("list_runs", "ok", 0.05)
    metrics.api_request("list_runs", "rate_limited", 0.01)
    metrics.rate_limit_wait(1.5)
    metrics.set_tracked({"running": 3, "pending": 1})
    metrics.event("run.failed")
    metrics.set_sinks(["ops", "console"])
    metrics.delivery("ops", "retry")
    metrics.delivery("ops", "delivered")
    metrics.set_outbox({"ops": 4}, 12.5)
    metrics.detection_latency(0.7)

    _, _, after = await get(url + "/metrics")
    a = samples(after)
    assert a[("flora_watcher_sweeps_total", (("outcome", "ok"),))] == 1
    assert a[("flora_watcher_sweeps_total", (("outcome", "error"),))] == 1
    assert a[("flora_watcher_sweep_duration_seconds_count", ())] == 2
    assert a[("flora_watcher_api_requests_total", (("outcome", "rate_limited"), ("route", "list_runs")))] == 1
    assert a[("flora_watcher_api_request_duration_seconds_count", (("route", "list_runs"),))] == 2
    assert a[("flora_watcher_rate_limit_wait_seconds_total", ())] == 1.5
    assert a[("flora_watcher_tracked_runs", (("status", "running"),))] == 3
    assert a[("flora_watcher_tracked_runs", (("status", "completed"),))] == 0
    assert a[("flora_watcher_events_total", (("type", "run.failed"),))] == 1
    assert a[("flora_watcher_deliveries_total", (("outcome", "delivered"), ("sink", "ops")))] == 1
    assert a[("flora_watcher_deliveries_total", (("outcome", "dead"), ("sink", "console")))] == 0
    assert a[("flora_watcher_outbox_pending", (("sink", "ops"),))] == 4
    assert a[("flora_watcher_outbox_pending", (("sink", "console"),))] == 0
    assert a[("flora_watcher_outbox_oldest_pending_age_seconds", ())] == 12.5
    assert a[("flora_watcher_detection_latency_seconds_bucket", (("le", "1.0"),))] == 1
    assert a[("flora_watcher_detection_latency_seconds_bucket", (("le", "0.5"),))] == 0
    assert a[("flora_watcher_last_successful_sweep_timestamp_seconds", ())] > 0

    # Gauges follow the latest snapshot: what is gone drops to 0.
    metrics.set_tracked({"pending": 2})
    metrics.set_outbox({}, None)
    a = samples((await get(url + "/metrics"))[2])
    assert a[("flora_watcher_tracked_runs", (("status", "running"),))] == 0
    assert a[("flora_watcher_outbox_pending", (("sink", "ops"),))] == 0
    assert a[("flora_watcher_outbox_oldest_pending_age_seconds", ())] == 0


async def test_openmetrics_when_the_scraper_asks(served):
    _, _, _, url = served
    status, content_type, body = await get(url + "/metrics", {"Accept": "application/openmetrics-text"})
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_registries_are_independent():
    one, two = Metrics(process_metrics=False), Metrics(process_metrics=False)
    one.event("run.completed")
    assert b'flora_watcher_events_total{type="run.completed"} 1.0' in one.render()
    assert b"run.completed" not in two.render()


async def test_health_and_readiness_follow_the_sweeps(served):
    _, health, clock, url = served
    assert await get(url + "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")

    status, _, body = await get(url + "/readyz")
    assert (status, body) == (503, "not ready: sweeper, no successful sweep yet\n")

    health.sweep_ok(clock.now_ms())
    clock.advance(4)
    status, _, body = await get(url + "/readyz")
    assert status == 200
    assert body == "ok: sweeper, last successful sweep 4.0s ago\n"

    health.sweep_failed("API unavailable: connection refused")
    clock.advance(12)  # 16 s > 3 x 5 s
    status, _, body = await get(url + "/readyz")
    assert status == 503
    assert body == ("not ready: sweeper, last successful sweep 16s ago (limit 15s): API unavailable: connection "
                    "refused\n")

    health.sweep_ok(clock.now_ms())
    health.stopping = True
    assert (await get(url + "/readyz"))[::2] == (503, "not ready: sweeper, shutting down\n")


async def test_ipv6_loopback_and_bound_port():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = await start_server("[::1]:0", Metrics(process_metrics=False), HealthSource(interval=5))
    except WatcherError:
        pytest.skip("::1 not available here")
    try:
        assert server.port > 0
        assert server.url == f"http://[::1]:{server.port}"
        assert (await get(server.url + "/healthz"))[0] == 200
    finally:
        await server.close()


async def test_a_taken_port_is_a_clear_error(served):
    _, _, _, url = served
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(WatcherError, match=rf"server.listen: cannot listen on 127.0.0.1:{port}"):
        await start_server(f"127.0.0.1:{port}", Metrics(process_metrics=False), HealthSource(interval=5))


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)), ("localhost:80", ("localhost", 80))],
)
def test_parse_listen(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", ":9464", "::1:9464", "[::1]", "[nope]:1", "host:99999", "host:x"])
def test_parse_listen_rejects_with_the_key(listen):
    with pytest.raises(ConfigError) as exc:
        parse_listen(listen)
    assert exc.value.key == "server.listen"


def test_health_source_can_read_the_daemon_through_a_function():
    state = {"ok_ms": None}
    clock = FakeClock(50.0, epoch_ms=0)
    health = HealthSource(interval=5, clock=clock, last_sweep_ok_ms=lambda: state["ok_ms"])
    assert health.readiness()[0] is False
    state["ok_ms"] = 49_000
    assert health.readiness()[0] is True
