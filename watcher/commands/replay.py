"""Re-queue events for delivery: named EVENT_IDs (dead letters or already delivered), or every dead letter
with --failed. A running daemon picks them up within seconds; otherwise on its next start.
Replaying also re-enables a sink that was disabled because its receiver answered 410.

Exit status: 0 when every named event was found (or with --failed); 1 when an EVENT_ID matches no event
(the others are still re-queued); 2 on a usage error, such as a --sink that names no sink.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from watcher.commands import add_config_argument

    add_config_argument(parser)
    parser.add_argument("event_ids", nargs="*", metavar="EVENT_ID", help="events to send again")
    parser.add_argument("--failed", action="store_true", help="re-queue every dead letter")
    parser.add_argument("--sink", metavar="NAME", help="only deliveries to this sink")


def main(args: argparse.Namespace) -> int:
    from watcher.commands._common import (
        known_sinks,
        load_for_store,
        now_ms,
        open_store,
        plural,
        unknown_sink_message,
    )
    from watcher.errors import UsageError

    if bool(args.event_ids) == bool(args.failed):
        raise UsageError("give EVENT_ID… or --failed (not both)")
    cfg = load_for_store(args.config)
    store = open_store(cfg)
    try:
        if args.sink is not None and args.sink not in (known := known_sinks(cfg, store)):
            print(unknown_sink_message(args.sink, known), file=sys.stderr)
            return 2
        if store is None:
            print("no state yet: the watcher has not run with this state_dir", file=sys.stderr)
            return 1 if args.event_ids else 0
        missing: set[str] = set()
        if args.failed:
            n = store.replay_failed(now_ms=now_ms(), sink=args.sink)
        else:
            n = store.replay(args.event_ids, now_ms=now_ms(), sink=args.sink)
            missing = set(args.event_ids) - store.events_exist(args.event_ids)
    finally:
        if store is not None:
            store.close()
    for event_id in sorted(missing):
        print(f"unknown event: {event_id}", file=sys.stderr)
    print(f"re-queued {plural(n, 'delivery', 'deliveries')}")
    return 1 if missing else 0
