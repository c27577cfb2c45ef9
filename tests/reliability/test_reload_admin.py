"""A SIGHUP reload followed by admin commands leaves the daemon's SQLite state attached (issue 24, item 1).

The reload's start-time checks once opened and closed ``state.sqlite3`` inside the daemon; closing any descriptor
of a file drops every POSIX lock the process holds on it (SQLite "How To Corrupt" §2.2). The next admin command
then found the file unlocked, took it for its last user, checkpointed and deleted the WAL and shared memory on
close, and the daemon went on writing into deleted files: `status` went stale, and a kill -9 lost everything
since the reload (detected again as late on restart). This runs the real daemon and the real commands.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from tests.procfs import HAVE_PROC, deleted_files, posix_locks
from tests.reliability.harness import read_jsonl
from tests.reliability.rig import Rig, rig

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_PROC, reason="needs Linux's /proc")]


async def settled(r: Rig, timeout: float = 30) -> None:
    verdict = await r.settle(timeout)
    assert not verdict.problems, verdict.summary()


async def test_reload_then_admin_commands_keep_the_daemon_on_its_state(tmp_path: Path) -> None:
    async with rig(tmp_path, seed=24) as r:
        assert r.proc.pid is not None
        state = tmp_path / "state" / "state.sqlite3"
        r.create(6)
        await settled(r)
        assert posix_locks(state, r.proc.pid) >= 1  # WAL mode: every connection holds a shared lock on the file

        # 1. Reload (as the documented fix for a receiver's 410 does), then every admin command.
        mark = r.proc.log_size()
        r.proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await r.proc.wait_for_log('"config.reloaded"', after=mark)
        assert posix_locks(state, r.proc.pid) >= 1, "the reload dropped the daemon's locks on its state file"
        for command in (["status"], ["events"], ["deliveries"], ["deliveries", "--failed"], ["replay", "--failed"],
                        ["status", "--json"]):
            out = await r.cli(*command)
            assert "Traceback" not in out, out
        assert deleted_files(r.proc.pid) == []
        assert (tmp_path / "state" / "state.sqlite3-wal").exists()

        # 2. The daemon goes on writing where the commands read: what it delivers now, they see.
        r.create(6)
        await settled(r)
        status = await swept_since(r, now_ms())
        assert status is not None, "status never shows a sweep after the commands (the daemon writes elsewhere)"
        delivered = {e["id"] for e in read_jsonl(r.events_file)[0]}
        assert status["events"] >= len(delivered)
        assert status["deliveries"]["pending"] == 0
        listed = {json.loads(line)["id"] for line in (await r.cli("events", "--json")).splitlines()}
        assert delivered <= listed, f"events misses {len(delivered - listed)} of the delivered events"
        assert deleted_files(r.proc.pid) == []

        # 3. A kill -9 now loses nothing: the restarted daemon detects nothing again (no late event, no duplicate).
        before = len(r.hook.accepted())
        await r.proc.kill()
        mark = r.proc.log_size()
        await r.proc.start()
        await r.proc.wait_for_log('"sweep.finished"', after=mark)  # the first sweep of a start always logs it
        assert await swept_since(r, now_ms(), empty_outbox=True) is not None, "no sweep, or deliveries left pending"
        again = [x.event for x in r.hook.accepted()[before:]]
        assert again == [], f"{len(again)} events delivered again after kill -9, e.g. {again[:2]}"
        assert [e["id"] for e in read_jsonl(r.events_file)[0] if e["data"].get("late")] == []
        verdict = r.verdict()
        assert not verdict.problems, verdict.summary()
        assert sum(verdict.duplicates.values()) == 0, verdict.summary()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def swept_since(r: Rig, since_ms: int, *, empty_outbox: bool = False, timeout: float = 30) -> dict | None:
    """``status --json`` once it shows a sweep that started at ``since_ms`` or later (and, with ``empty_outbox``,
    nothing pending); None when it does not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(await r.cli("status", "--json"))
        pending = status["deliveries"]["pending"]
        if (status["meta"]["last_sweep_ms"] or 0) >= since_ms and not (empty_outbox and pending):
            return status
        await asyncio.sleep(0.2)
    return None
