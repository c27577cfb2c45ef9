"""File sink: JSON Lines, 0600, fsync'd, each event at most once per file (across restarts, torn lines)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.sinks.helpers import make_event
from watcher.errors import ConfigError
from watcher.render import event_body
from watcher.sinks.file import FileSink
from watcher.sinks.registry import sink_config


def file_sink(path: Path) -> FileSink:
    return FileSink(sink_config(name="journal", type="file", path=path))


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


async def test_appends_one_json_line_per_event_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deep" / "events.jsonl"
    sink = file_sink(path)
    await sink.start()
    first, second = make_event(), make_event("run.completed")
    await sink.send(first)
    await sink.send(second)
    await sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert lines(path) == [event_body(first), event_body(second), b""]
    assert json.loads(lines(path)[0])["id"] == first.id


async def test_every_line_is_fsynced_before_send_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)  # the size on disk when fsync ran
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    sink = file_sink(path)
    await sink.start()
    await sink.send(make_event())
    assert synced and synced[-1] == path.stat().st_size  # synced after the whole line was written
    await sink.close()


async def test_an_event_already_in_the_file_is_not_written_again_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    event = make_event()
    sink = file_sink(path)
    await sink.send(event)
    result = await sink.send(event)  # a retry after a lost acknowledgement
    await sink.close()
    assert "already" in result.detail
    restarted = file_sink(path)
    await restarted.start()
    await restarted.send(event)
    await restarted.send(make_event("run.completed"))
    await restarted.close()
    ids = [json.loads(line)["id"] for line in lines(path) if line]
    assert ids == [event.id, make_event("run.completed").id]


async def test_a_torn_last_line_is_ignored_and_the_next_append_starts_a_fresh_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    done, torn = make_event(run_id="run_done"), make_event(run_id="run_torn")
    path.write_bytes(event_body(done) + b"\n" + event_body(torn)[:37])  # crash mid-write
    os.chmod(path, 0o600)
    sink = file_sink(path)
    await sink.start()
    assert (await sink.send(done)).detail.startswith("already")
    await sink.send(torn)  # its torn copy does not count: written again, whole
    await sink.close()
    assert lines(path) == [event_body(done), event_body(torn)[:37], event_body(torn), b""]


async def test_an_unusable_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    sink = file_sink(blocker / "events.jsonl")
    with pytest.raises(ConfigError) as err:
        await sink.start()
    assert err.value.key == "sinks['journal'].path"  # built in code: no index; from TOML it is sinks[N].path
    await sink.close()


async def test_pre_serialised_body_is_written_as_is(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    event = make_event()
    stored = b'{"id":"%s","stored":true}' % event.id.encode()
    sink = file_sink(path)
    await sink.send(event, body=stored)
    await sink.close()
    assert lines(path) == [stored, b""]
