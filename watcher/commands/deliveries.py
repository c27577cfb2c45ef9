"""List the outbox: pending deliveries, or dead letters with --failed.

Dead letters are deliveries that failed permanently or exhausted their retries; `flora-watcher replay`
re-queues them. Exit status: 0; 2 on a usage error, such as a --sink that names no sink.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from watcher.commands import add_config_argument

    add_config_argument(parser)
    parser.add_argument("--failed", action="store_true", help="list dead letters instead of pending deliveries")
    parser.add_argument("--sink", metavar="NAME", help="only this sink")
    parser.add_argument("--limit", type=int, default=100, help="at most this many rows (default: 100)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def main(args: argparse.Namespace) -> int:
    from watcher.commands._common import (
        ago,
        iso,
        known_sinks,
        live_pause,
        load_for_store,
        now_ms,
        open_store,
        plural,
        sink_timeouts,
        unknown_sink_message,
    )
    from watcher.logs import redact
    from watcher.sinks.spec import DEFAULT_SINK_TIMEOUT
    from watcher.store_api import SinkState

    cfg = load_for_store(args.config)
    store = open_store(cfg)
    try:
        if args.sink is not None and args.sink not in (known := known_sinks(cfg, store)):
            print(unknown_sink_message(args.sink, known), file=sys.stderr)
            return 2
        if store is None:
            print("no state yet: the watcher has not run with this state_dir")
            return 0
        rows = store.list_deliveries(failed=args.failed, limit=max(1, args.limit), sink=args.sink)
        # the circuit breaker's pauses (name → (since_ms, next_probe_ms)) that still hold
        health = store.sink_states()
        pauses = {}
        for name, stored in store.sink_pauses().items():
            state = health.get(name) or SinkState(name)
            pause = live_pause(stored, last_success_ms=state.last_success_ms, last_failure_ms=state.last_failure_ms)
            if pause is not None:
                pauses[name] = pause
        last_sweep = store.get_meta("last_sweep_ms")
    finally:
        if store is not None:
            store.close()
    if args.json:
        for r in rows:
            print(json.dumps({
                "id": r.id, "event_id": r.event_id, "type": r.event_type, "run_id": r.run_id, "sink": r.sink,
                "state": r.state, "attempts": r.attempts, "created_ms": r.created_ms,
                "next_attempt_ms": real_next_attempt_ms(r.next_attempt_ms, pauses.get(r.sink))
                if r.state == "pending" else r.next_attempt_ms,
                "sink_paused_since_ms": pauses[r.sink][0] if r.sink in pauses else None,
                "last_status": r.last_status,
                "last_error": redact(r.last_error) if r.last_error else None, "dead_ms": r.dead_ms,
            }))
        return 0
    if not rows:
        print("no dead letters" if args.failed else "no pending deliveries")
        return 0
    now = now_ms()
    timeouts = sink_timeouts(cfg)
    for r in rows:
        when = f"dead since {iso(r.dead_ms)}" if args.failed else next_attempt_text(
            r.next_attempt_ms, now, pauses.get(r.sink), timeout_s=timeouts.get(r.sink, DEFAULT_SINK_TIMEOUT),
            last_sweep_ms=int(last_sweep) if last_sweep and last_sweep.isdigit() else None)
        error = f" — {redact(r.last_error)}" if r.last_error else ""
        print(f"{r.event_id} {r.event_type:<13} {r.run_id} → {r.sink}: {plural(r.attempts, 'attempt')}, "
              f"queued {ago(r.created_ms, now)}, {when}{error}")
    return 0


def real_next_attempt_ms(next_attempt_ms: int | None, pause: tuple[int, int | None] | None) -> int | None:
    """When the delivery can be tried next. While its sink is paused, nothing is sent before the breaker's next
    probe, whatever the row's own schedule says. Pure."""
    if pause is None or pause[1] is None or next_attempt_ms is None:
        return next_attempt_ms
    return max(next_attempt_ms, pause[1])


def next_attempt_text(next_attempt_ms: int | None, now_ms: int, pause: tuple[int, int | None] | None, *,
                      timeout_s: float = 10.0, last_sweep_ms: int | None = None) -> str:
    """'next attempt 2026-…', 'due now', or, while the sink is paused (``live_pause``), when it is probed again.
    Pure."""
    from watcher.commands._common import iso, probe_text

    if pause is not None:
        since, probe = pause
        when = probe_text(probe, now_ms, timeout_s=timeout_s, last_sweep_ms=last_sweep_ms)
        return f"waiting: sink paused since {iso(since)} (receiver down), {when}; sent when it answers again"
    if next_attempt_ms is None or next_attempt_ms <= now_ms:
        return "due now"
    return f"next attempt {iso(next_attempt_ms)}"
