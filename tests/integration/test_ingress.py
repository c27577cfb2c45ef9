"""The ingress listener on loopback: every answer of CONTRACT §9, what reaches ``record``, the refusal summary."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.fakes import FakeClock
from watcher.errors import StoreError
from watcher.ingress import MAX_BODY, Ingress, RejectionSummary
from watcher.signing import Callback, Rejection, flora_headers, flora_key

SECRET = "whsec_ingress_test"
KEY = flora_key(SECRET)
PATH = "/flora/callbacks"
T0_MS = 1_764_400_000_000


def envelope(delivery_id: str = "whd_1", run_id: str = "run_1", **data) -> bytes:
    return json.dumps({"id": delivery_id, "type": "run.completed", "api_version": "2026-06-11",
                       "created_at": T0_MS, "data": {"run_id": run_id, "run_type": "technique",
                                                     "workspace_id": "ws_1", "status": "completed", **data}},
                      separators=(",", ":")).encode()


class Rig:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.recorded: dict[str, Callback] = {}
        self.accepted: list[Callback] = []
        self.outcomes: list[tuple[str, Rejection | None]] = []
        self.fail_store = False
        self.ingress = Ingress(path=PATH, keys=[KEY], tolerance_s=600, record=self.record,
                               on_accepted=self.accepted.append,
                               on_outcome=lambda o, r: self.outcomes.append((o, r)), clock=clock)
        self.url = ""

    async def record(self, cb: Callback) -> bool:
        if self.fail_store:
            raise StoreError("database is locked")
        new = cb.delivery_id not in self.recorded
        self.recorded.setdefault(cb.delivery_id, cb)
        return new

    def signed(self, body: bytes, *, t: int | None = None, secret: str = SECRET) -> dict[str, str]:
        ts = self.clock.now_ms() // 1000 if t is None else t
        return {**flora_headers("whd_1", "run.completed", ts, body, [flora_key(secret)]),
                "Content-Type": "application/json"}


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig(FakeClock(0.0, epoch_ms=T0_MS, manual=True))
    await r.ingress.start("127.0.0.1", 0)
    r.url = f"http://127.0.0.1:{r.ingress.port}"
    try:
        yield r
    finally:
        await r.ingress.close()


async def send(rig: Rig, body: bytes = b"", headers: dict[str, str] | None = None, *, method: str = "POST",
               path: str = PATH) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.request(method, rig.url + path, data=body,
                                                              headers=headers or {}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_a_genuine_callback_is_recorded_then_answered_200_then_handed_on(rig: Rig) -> None:
    body = envelope()
    status, answer = await send(rig, body, rig.signed(body))
    assert (status, answer) == (200, {"received": True, "duplicate": False})
    assert rig.recorded["whd_1"].run_id == "run_1" and [c.delivery_id for c in rig.accepted] == ["whd_1"]
    assert rig.outcomes == [("accepted", None)]
    assert rig.ingress.stats.accepted == 1 and rig.ingress.stats.received == 1


async def test_a_replayed_delivery_id_is_answered_200_and_changes_nothing(rig: Rig) -> None:
    body = envelope()
    for _ in range(3):
        status, _ = await send(rig, body, rig.signed(body))
        assert status == 200
    status, answer = await send(rig, body, rig.signed(body))
    assert answer == {"received": True, "duplicate": True}
    assert len(rig.accepted) == 1 and rig.ingress.stats.duplicate == 3


async def test_a_delivery_signed_with_any_configured_secret_is_accepted(rig: Rig) -> None:
    rig.ingress.keys = (flora_key("whsec_new"), KEY)
    body = envelope("whd_rot")
    assert (await send(rig, body, rig.signed(body)))[0] == 200


@pytest.mark.parametrize(("case", "status", "reason"), [
    ("other path", 404, Rejection.PATH),
    ("GET", 405, Rejection.METHOD),
    ("PUT", 405, Rejection.METHOD),
    ("unsigned", 401, Rejection.UNSIGNED),
    ("garbage header", 401, Rejection.MALFORMED_SIGNATURE),
    ("forged", 401, Rejection.BAD_SIGNATURE),
    ("wrong secret", 401, Rejection.BAD_SIGNATURE),
    ("stale", 401, Rejection.STALE),
    ("future", 401, Rejection.FUTURE),
    ("tampered body", 401, Rejection.BAD_SIGNATURE),
    ("not json", 400, Rejection.NOT_JSON),
    ("no envelope", 400, Rejection.BAD_ENVELOPE),
    ("oversize", 413, Rejection.TOO_LARGE),
    ("oversize chunked", 413, Rejection.TOO_LARGE),
])
async def test_what_is_not_a_genuine_callback_gets_its_4xx_and_changes_nothing(rig: Rig, case, status,
                                                                               reason) -> None:
    body = envelope()
    now_s = rig.clock.now_ms() // 1000
    kwargs: dict = {}
    if case == "other path":
        args = (body, rig.signed(body))
        kwargs = {"path": "/flora/callbacks/x"}
    elif case in ("GET", "PUT"):
        args = (body, rig.signed(body))
        kwargs = {"method": case}
    elif case == "unsigned":
        args = (body, {})
    elif case == "garbage header":
        args = (body, {"Flora-Signature": "garbage; t=now"})
    elif case == "forged":
        args = (body, {"Flora-Signature": f"t={now_s},v1={'ab' * 32}"})
    elif case == "wrong secret":
        args = (body, rig.signed(body, secret="whsec_attacker"))
    elif case == "stale":
        args = (body, rig.signed(body, t=now_s - 601))
    elif case == "future":
        args = (body, rig.signed(body, t=now_s + 601))
    elif case == "tampered body":
        args = (body.replace(b"completed", b"failed", 1), rig.signed(body))
    elif case == "not json":
        args = (b"\x00\xffgarbage", rig.signed(b"\x00\xffgarbage"))
    elif case == "no envelope":
        args = (b'{"hello":"world"}', rig.signed(b'{"hello":"world"}'))
    elif case == "oversize":
        big = b" " * (MAX_BODY + 1)
        args = (big, rig.signed(big))
    else:  # oversize chunked: no Content-Length, the cap is counted while reading

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(MAX_BODY // 65536 + 2):
                yield b" " * 65536

        async with aiohttp.ClientSession() as http, http.post(rig.url + PATH, data=chunks(),
                                                              headers=rig.signed(body)) as resp:
            got = resp.status
        assert got == status
        assert not rig.recorded and not rig.accepted
        assert rig.ingress.stats.rejected == {reason.value: 1}
        return
    got, answer = await send(rig, *args, **kwargs)
    assert (got, answer) == (status, {"error": reason.value})
    assert not rig.recorded and not rig.accepted  # nothing recorded, nothing handed on
    assert rig.outcomes == [("rejected", reason)]
    assert rig.ingress.stats.rejected == {reason.value: 1}


async def test_405_names_the_allowed_method(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http, http.get(rig.url + PATH) as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"


async def test_an_oversize_body_is_refused_from_its_length_without_being_read(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.ingress.port)
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY * 40}\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.read(200), 10)  # answered before any body byte was sent
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()


async def test_an_unsigned_request_is_refused_before_its_body_is_read(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.ingress.port)
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.read(200), 10)
    assert head.startswith(b"HTTP/1.1 401")
    writer.close()


async def test_a_store_that_cannot_record_gets_503_so_flora_retries(rig: Rig) -> None:
    rig.fail_store = True
    body = envelope()
    with capture_logs() as logs:
        status, _ = await send(rig, body, rig.signed(body))
    assert status == 503 and not rig.accepted
    assert [e["event"] for e in logs] == ["ingress.unrecorded"] and SECRET not in str(logs)
    rig.fail_store = False
    assert (await send(rig, body, rig.signed(body)))[0] == 200  # FLORA's retry is taken
    assert len(rig.accepted) == 1


async def test_refusals_are_logged_as_one_summary_line_a_minute(rig: Rig) -> None:
    with capture_logs() as logs:
        for _ in range(5):
            await send(rig, b"x", {})
        await send(rig, b"x", {"Flora-Signature": "nope"})
        rig.clock.advance(30)
        for _ in range(3):
            await send(rig, b"x", {}, method="GET")
        rig.clock.advance(31)
        await send(rig, b"x", {})
    lines = [e for e in logs if e["event"] == "ingress.rejected"]
    assert [line["by_reason"] for line in lines] == [
        {"unsigned": 1},  # the first refusal after a quiet minute at once
        {"malformed_signature": 1, "method": 3, "unsigned": 5},  # then one line for the minute
    ]
    assert all(line["log_level"] == "warning" for line in lines)


def test_the_summary_rule() -> None:
    s = RejectionSummary(every_s=60)
    assert not s.due(0)
    s.note(Rejection.STALE)
    assert s.due(0) and s.take(0) == {"stale": 1}
    s.note(Rejection.STALE)
    assert not s.due(59.9) and s.due(60)
