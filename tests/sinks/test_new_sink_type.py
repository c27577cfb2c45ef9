"""Adding a sink type is one module plus one registry line (issue 9 §2), proven with a tiny sink defined here.

1. Registered, it is configured from TOML like a built-in type: its own key parsed by its own parser, the
   common keys (events, match, timeout) by config.py, its key errors named ``sinks[N].<key>``.
2. Its events go through the real outbox (a SQLite store) and the real dispatcher to something observable.
3. ``check-config``'s start-time checks ask it (its ``check``) and its summary line (its ``describe``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes import FakeClock
from tests.sinks.helpers import make_event
from watcher.config import parse
from watcher.dispatcher import Dispatcher
from watcher.errors import ConfigError
from watcher.model import Event
from watcher.routing import route
from watcher.sinks.registry import REGISTRY, build_sink, register, unregister
from watcher.sinks.spec import SendResult, SinkConfig, SinkType, Table  # the contract a sink module imports
from watcher.store import AsyncStore, Store
from watcher.validate import check_start

# ----------------------------------------------------------------------- the whole new sink module

RECEIVED: list[tuple[str, str, bytes | None]] = []  # what the "receiver" got: (room, event id, body)


@dataclass(frozen=True, slots=True)
class MemoryOptions:
    room: str = ""


def parse_memory(t: Table) -> MemoryOptions:
    return MemoryOptions(room=t.required_string("room", "where to put events"))


def check_memory(cfg: SinkConfig[MemoryOptions]) -> Iterator[ConfigError]:
    if cfg.options.room == "closed":
        yield ConfigError(cfg.key("room"), "that room is closed")


class MemorySink:
    def __init__(self, cfg: SinkConfig[MemoryOptions]) -> None:
        self.name = cfg.name
        self.config = cfg

    async def start(self) -> None:
        return None

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        RECEIVED.append((self.config.options.room, event.id, body))
        return SendResult(detail=f"kept in {self.config.options.room}")

    async def close(self) -> None:
        return None


MEMORY = SinkType(name="memory", keys=("room",), options=MemoryOptions, parse=parse_memory,
                  build=lambda cfg, ctx: MemorySink(cfg), check=check_memory,
                  describe=lambda cfg: [f"room {cfg.options.room}"])

# ------------------------------------------------------------------------------------------ tests


@pytest.fixture
def memory_type() -> Iterator[None]:
    register(MEMORY)  # the one registry line (built-in types are listed in watcher/sinks/registry.py)
    RECEIVED.clear()
    try:
        yield
    finally:
        unregister("memory")


def load(text: str, tmp_path: Path):
    return parse(textwrap.dedent(text), env={"FLORA_API_KEY": "sk_test", "HOME": str(tmp_path)},
                 read_file=lambda path: "", sink_types=REGISTRY, source=tmp_path / "flora-watcher.toml")


CONFIG = """
    [watch]
    state_dir = "state"
    [[sinks]]
    name = "console"
    type = "stdout"
    [[sinks]]
    name = "pager"
    type = "memory"
    room = "ops"
    events = ["run.failed"]
    match = { error_code = ["GPU_*"] }
    timeout = 3
"""


def test_a_registered_type_is_configured_from_toml(memory_type, tmp_path: Path) -> None:
    cfg = load(CONFIG, tmp_path)
    pager = cfg.sinks[1]
    assert (pager.name, pager.type, pager.events, pager.match, pager.timeout) == (
        "pager", "memory", ("run.failed",), {"error_code": ("GPU_*",)}, 3.0)
    assert pager.options == MemoryOptions(room="ops")
    assert pager.key("room") == "sinks[1].room"


@pytest.mark.parametrize(("body", "message"), [
    ('type = "memory"', "sinks[0].room: required (where to put events)"),
    ('type = "memory"\nroom = "a"\nrom = "b"', "sinks[0].rom: unknown key (did you mean 'room'?)"),
    ('type = "stdout"\nroom = "a"', "sinks[0].room: does not apply to a stdout sink"),
    ('type = "memroy"', "sinks[0].type: unknown sink type 'memroy'; choose from webhook, slack, discord, teams, "
                        "google_chat, file, stdout, exec, apprise, memory (did you mean 'memory'?)"),
])
def test_its_key_errors_name_the_key(memory_type, tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(f'[[sinks]]\nname = "s"\n{body}\n', tmp_path)
    assert str(err.value) == message


def test_unregistered_it_is_an_unknown_type(tmp_path: Path) -> None:
    assert "memory" not in REGISTRY
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.type: unknown sink type 'memory'"):
        load('[[sinks]]\nname = "s"\ntype = "memory"\nroom = "a"\n', tmp_path)


async def test_events_reach_it_through_the_outbox_and_the_real_dispatcher(memory_type, tmp_path: Path) -> None:
    cfg = load(CONFIG, tmp_path)
    clock = FakeClock()
    store = AsyncStore(Store.open(tmp_path / "state.sqlite3"))
    sinks = {sc.name: build_sink(sc, clock=clock) for sc in cfg.sinks if sc.type == "memory"}
    failed, other, completed = make_event(), make_event(run_id="run_x", error_code="OOM"), make_event("run.completed")
    try:
        assert isinstance(sinks["pager"], MemorySink)
        for sink in sinks.values():
            await sink.start()
        routed = [(e, [n for n in route(cfg.sinks, e) if n in sinks]) for e in (failed, other, completed)]
        assert [names for _, names in routed] == [["pager"], [], []]  # its events and match filters apply
        await store.commit_sweep(upserts=[], deletes=[], events=routed, meta={}, now_ms=clock.now_ms())
        dispatcher = Dispatcher(sinks, store, cfg=cfg.delivery, clock=clock)
        await dispatcher.drain_due()
        assert RECEIVED == [("ops", failed.id, failed.body())]
        assert sum((await store.pending_counts()).values()) == 0
    finally:
        for sink in sinks.values():
            await sink.close()
        await store.aclose()


def test_start_time_checks_and_check_config_ask_it(memory_type, tmp_path: Path) -> None:
    from watcher.commands.check_config import summary

    cfg = load(CONFIG.replace('room = "ops"', 'room = "closed"'), tmp_path)
    with pytest.raises(ConfigError) as err:
        check_start(cfg)
    assert str(err.value) == "sinks[1].room: that room is closed"
    cfg = load(CONFIG, tmp_path)
    check_start(cfg)
    assert any(line.split() == ["pager", "memory", "run.failed", "[room", "ops;", "match", "error_code=GPU_*]"]
               for line in summary(cfg))
