"""Crash consistency, CI-sized (docs/reliability.md §1): the real watcher killed by SIGKILL at random moments and
at every named crash point, restarted, a few rounds; the long version is scripts/crash_loop.py."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.reliability.crashloop import MODES, crash_loop, unexplained_duplicates
from tests.reliability.harness import Canaries, Received, Receiver, Verdict, compare

pytestmark = pytest.mark.slow


async def test_sigkill_at_random_and_at_every_crash_point_loses_nothing(tmp_path: Path) -> None:
    # Probability 1: each armed point fires at its first chance, so every point is exercised every run. Before each
    # random kill: a reload and an admin command (issue 24: a reload then `events` detached the SQLite state, and
    # the kill after it lost everything since the reload).
    report = await crash_loop(tmp_path, rounds=8, seed=3, probability=1.0, operations=True)
    assert not report.problems, report.summary()
    assert report.reloads >= 2 and report.admin_commands >= 2, report.summary()
    for point in MODES:
        assert report.by_mode.get(point, 0) >= 1, f"{point} never fired: {dict(report.by_mode)}"
    assert report.verdict.expected == report.created > 0
    assert report.verdict.delivered == {"journal": report.created, "hook": report.created}
    assert report.verdict.duplicates["journal"] == 0


async def test_an_apprise_sink_beside_the_file_sink_loses_nothing_either(tmp_path: Path) -> None:
    """Issue 23: an apprise sink (Apprise's json:// to a loopback receiver, its thread per URL) in the same loop;
    every transition reaches it too, named in a message, through the kills at every crash point; its URL canary is
    nowhere in the logs or the state."""
    from tests.sinks.apprise_helpers import need_apprise

    need_apprise()
    report = await crash_loop(tmp_path, rounds=6, seed=5, probability=1.0, apprise=True)
    assert not report.problems, report.summary()
    assert report.apprise is not None and report.apprise.messages > 0
    assert report.apprise.lost == 0 and report.apprise.listed + report.apprise.unlisted >= report.verdict.expected
    assert report.verdict.delivered == {"journal": report.created, "hook": report.created}
    assert report.leaks == [], report.leaks



# The checker itself: a checker that cannot fail proves nothing.


def event(run_id: str, type_: str, event_id: str, **data) -> dict:
    return {"id": event_id, "type": type_, "data": {"run_id": run_id, **data}}


def test_the_checker_sees_losses_spurious_events_duplicates_and_id_conflicts() -> None:
    expected = {("run_a", "run.completed"), ("run_b", "run.failed")}
    verdict = Verdict()
    compare("journal", [event("run_a", "run.completed", "evt_1"), event("run_a", "run.completed", "evt_1"),
                        event("run_c", "run.failed", "evt_3"), event("run_a", "run.completed", "evt_9")],
            expected, verdict)
    assert verdict.lost["journal"] == [("run_b", "run.failed")]
    assert verdict.spurious["journal"] == [("run_c", "run.failed")]
    assert verdict.duplicates["journal"] == 1
    assert verdict.id_conflicts == [("run_a", "run.completed")]
    assert len(verdict.problems) == 4


def test_a_duplicate_is_explained_only_by_a_death_while_its_first_copy_was_in_flight() -> None:
    hook = Receiver()

    def got(at: float, event_id: str) -> Received:
        return Received(at, "/h", {"webhook-id": event_id}, b"{}", 204)

    # evt_1 arrived, the process died at 1.5 before recording it, the restarted one sent it again: explained.
    # evt_2 arrived at 2.0 and the next death was 11 s later (long recorded), yet it came again: a real duplicate.
    # evt_4 arrived just before the death at 20.5, but more requests than can be in flight came after it.
    hook.received = [got(1.0, "evt_1"), got(2.0, "evt_1"), got(2.0, "evt_2"), got(2.5, "evt_3"), got(14.0, "evt_2"),
                     got(20.0, "evt_4"), got(20.1, "evt_5"), got(20.2, "evt_6"), got(22.0, "evt_4")]
    assert unexplained_duplicates(hook, deaths=[1.5, 13.0, 20.5], in_flight=1) == ["evt_2", "evt_4"]
    assert unexplained_duplicates(hook, deaths=[1.5, 13.0, 20.5]) == ["evt_2"]  # 8 + 256 may be in flight


async def test_the_receiver_rejects_a_bad_signature_on_arrival() -> None:
    secret = Canaries.fresh().signing_secret
    async with Receiver(signing_secret=secret) as hook, aiohttp.ClientSession() as session:
        forged = {"webhook-id": "evt_1", "webhook-timestamp": "1764400000", "webhook-signature": "v1,Zm9yZ2Vk"}
        async with session.post(f"{hook.origin}/h", data=b'{"id": "evt_1"}', headers=forged) as resp:
            assert resp.status == 204
    assert [r.signature_ok for r in hook.received] == [False]
