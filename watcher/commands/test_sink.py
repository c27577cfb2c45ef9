"""Send one synthetic event through a sink's real delivery path and show what the receiver answered.

The event is clearly a test: its run id is ``run_test_<random>`` and its technique is "flora-watcher test".
Exit status: 0 when the sink confirmed delivery, 1 when it did not (the reason is printed, never a secret),
2 when no sink has that name.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time

from watcher.model import ALL_EVENT_TYPES, Event, EventType, event_id

TEST_TECHNIQUE = "flora-watcher test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from watcher.commands import add_config_argument

    parser.add_argument("name", metavar="NAME", help="the sink's name in the config")
    add_config_argument(parser)
    parser.add_argument("--type", dest="event_type", choices=ALL_EVENT_TYPES, default=EventType.FAILED,
                        help="the event type to send (default: run.failed)")


def synthetic_event(event_type: str, *, now_ms: int, token: str) -> Event:
    """A test event of ``event_type`` that no receiver can mistake for a real run. Pure."""
    run_id = f"run_test_{token}"
    failed = event_type == EventType.FAILED
    terminal = event_type in (EventType.COMPLETED, EventType.FAILED)
    status = {"run.completed": "completed", "run.failed": "failed"}.get(str(event_type), "running")
    data = {
        "run_id": run_id,
        "run_type": "technique",
        "workspace_id": "ws_test",
        "project_id": "prj_test",
        "technique": {"technique_id": "tech_test", "name": TEST_TECHNIQUE},
        "status": status,
        "previous_status": "running" if terminal else "pending",
        "error_code": "TEST_EVENT" if failed else None,
        "error_message": "This is a test event sent by flora-watcher test-sink; no run failed." if failed else None,
        "progress": 100 if terminal else 0,
        "charged_cost": 0.0 if terminal else None,
        "created_at": now_ms - 12_000,
        "started_at": now_ms - 11_000,
        "completed_at": now_ms if terminal else None,
        "outputs": [
            {"output_id": "output_test", "type": "text", "url": "flora-watcher test output (no real file)"}
        ] if event_type == EventType.COMPLETED else [],
        "poll_url": None,
        "late": False,
    }
    return Event(id=event_id(run_id, event_type), type=event_type, created_at=now_ms, data=data)


async def send_test_event(cfg, event: Event) -> tuple[bool, str]:
    """Build, start, send, close. Returns (delivered, one line to print)."""
    from watcher.errors import DeliveryError, WatcherError
    from watcher.sinks.registry import build_sink

    sink = build_sink(cfg)  # the sink type's own factory, as the daemon builds it
    try:
        try:
            await sink.start()
            result = await sink.send(event)
        except DeliveryError as exc:
            kind = "retryable" if exc.retryable else "permanent"
            if exc.disable:
                kind = "the destination is gone; the daemon would disable this sink"
            return False, f"not delivered ({exc.reason}, {kind}): {exc.message}"
        except WatcherError as exc:
            return False, f"not delivered: {exc}"
    finally:
        await sink.close()
    answer = []
    if result.status is not None:
        answer.append(f"exit status {result.status}" if cfg.type == "exec" else f"HTTP {result.status}")
    if result.detail:
        answer.append(result.detail)
    return True, "delivered" + (f" ({': '.join(answer)})" if answer else "")


def main(args: argparse.Namespace) -> int:
    from watcher.config import load
    from watcher.routing import matches
    from watcher.sinks.registry import REGISTRY
    from watcher.sinks.spec import delivery_targets

    config = load(args.config, sink_types=REGISTRY, require_api_key=False)
    by_name = {s.name: s for s in config.sinks}
    # A sink with several delivery targets (an apprise sink: one per URL) is tested target by target, as the
    # daemon delivers; a target may also be named alone (alerts:tgram).
    targets = {s.name: (s,) for s in delivery_targets(config.sinks)}
    chosen = (delivery_targets([by_name[args.name]]) if args.name in by_name else targets.get(args.name))
    if not chosen:
        known = ", ".join(by_name) or "(none)"
        print(f"flora-watcher: no sink named {args.name!r}; configured sinks: {known}", file=sys.stderr)
        return 2  # a usage error, as everywhere else a name is unknown
    event = synthetic_event(args.event_type, now_ms=time.time_ns() // 1_000_000, token=secrets.token_hex(6))
    every = True
    for cfg in chosen:
        if not matches(cfg, event):
            print(f"note: sink {cfg.name!r} would not receive {event.type} events from the daemon "
                  f"(events/match filters); sending anyway", file=sys.stderr)
        print(f"sending {event.type} {event.id} (run {event.data['run_id']}) to {cfg.type} sink {cfg.name!r}…")
        delivered, line = asyncio.run(send_test_event(cfg, event))
        print(f"{cfg.name}: {line}", file=sys.stdout if delivered else sys.stderr)
        every = every and delivered
    return 0 if every else 1
