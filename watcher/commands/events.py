"""The transition history in the state store, newest last: one readable line per event (the stdout sink's text
line, after the time the transition was seen) or, with --json, the event JSON as JSON Lines. --follow keeps
printing new events as the watcher stores them, like `tail -f`, until Ctrl-C.

Reads the state store only (no API key needed), also while the daemon runs.
"""

from __future__ import annotations

import argparse
import re
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from watcher.model import ALL_EVENT_TYPES, Event

FOLLOW_EVERY_S = 1.0  # how often --follow looks for new events
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_since(text: str, now_ms: int) -> int:
    """``2h``, ``30m``, ``1d12h``, ``90s`` (that long ago) or an ISO-8601 date/time (UTC unless it says) → ms."""
    value = text.strip()
    parts = _DURATION.findall(value)
    if parts and _DURATION.sub("", value).strip() == "":
        return now_ms - int(sum(float(n) * _UNIT_MS[unit.lower()] for n, unit in parts))
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 2h, 30m, 1d or an ISO date/time, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def matches(event: Event, *, error_codes: Sequence[str] = (), projects: Sequence[str] = ()) -> bool:
    """The filters that look inside ``data``: ``--error-code`` and ``--project`` globs (any of each)."""
    data = event.data if isinstance(event.data, dict) else {}
    if error_codes:
        code = data.get("error_code")
        if not isinstance(code, str) or not any(fnmatchcase(code, g) for g in error_codes):
            return False
    if projects:
        project = data.get("project_id")
        if not isinstance(project, str) or not any(fnmatchcase(project, g) for g in projects):
            return False
    return True


def format_event(event: Event, *, as_json: bool) -> str:
    from watcher.render import event_body, iso_utc, text_line

    if as_json:
        return event_body(event).decode("utf-8")
    return f"{iso_utc(event.created_at) or '-'} {text_line(event)}"


def _csv(values: Sequence[str] | None) -> list[str]:
    return [v.strip() for item in values or () for v in item.split(",") if v.strip()]


def _event_types(text: str) -> str:
    names = _csv([text])
    if not names:  # `--type ''` would silently mean "every type"
        raise argparse.ArgumentTypeError(f"expected an event type ({', '.join(ALL_EVENT_TYPES)}), got {text!r}")
    for name in names:
        if name not in ALL_EVENT_TYPES:
            raise argparse.ArgumentTypeError(f"unknown event type {name!r}; known: {', '.join(ALL_EVENT_TYPES)}")
    return text


def _glob(text: str) -> str:
    if not _csv([text]):  # an empty filter would silently match everything
        raise argparse.ArgumentTypeError(f"expected a glob (e.g. 'GPU_*'), got {text!r}")
    return text


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of events, 0 or more, got {text!r}")
    return value


def _since(text: str) -> int:
    from watcher.commands._common import now_ms

    return parse_since(text, now_ms())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from watcher.commands import add_config_argument

    add_config_argument(parser)
    parser.add_argument("--since", metavar="WHEN", type=_since,
                        help="only events from this long ago (2h, 30m, 1d) or since this ISO date/time")
    parser.add_argument("--type", action="append", metavar="TYPE", type=_event_types,
                        help=f"only this event type ({', '.join(ALL_EVENT_TYPES)}); repeat or comma-separate")
    parser.add_argument("--error-code", action="append", metavar="GLOB", type=_glob,
                        help="only failures whose error_code matches (e.g. 'GPU_*'); repeat for several")
    parser.add_argument("--project", action="append", metavar="ID", type=_glob,
                        help="only runs of this project_id (a glob); repeat for several")
    parser.add_argument("-n", "--limit", type=_count, metavar="N", help="only the newest N matching events")
    parser.add_argument("--json", action="store_true", help="JSON Lines: each event's JSON, as sinks get it")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C")
    parser.add_argument("--follow-interval", type=float, default=FOLLOW_EVERY_S, help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    from watcher.commands._common import load_for_store, open_store
    from watcher.store import store_path

    types = _csv(args.type)
    since = args.since
    filters: dict[str, Any] = {"error_codes": _csv(args.error_code), "projects": _csv(args.project)}
    cfg = load_for_store(args.config)
    if args.follow:
        signal.signal(signal.SIGTERM, _interrupt)  # `timeout`, systemd and friends stop it cleanly (exit 0)
    store = open_store(cfg)
    while store is None:
        if not args.follow:
            print(f"no state yet: {store_path(cfg.watch.state_dir)} does not exist "
                  "(the watcher has not run with this state_dir)")
            return 0
        time.sleep(args.follow_interval)
        store = open_store(cfg)
    try:
        rows = store.list_events(since_ms=since, types=types)
        shown = [(seq, e) for seq, e in rows if matches(e, **filters)]
        if args.limit is not None:
            shown = shown[-args.limit:] if args.limit > 0 else []
        last_seq = rows[-1][0] if rows else 0
        for _, event in shown:
            print(format_event(event, as_json=args.json), flush=args.follow)
        while args.follow:
            time.sleep(args.follow_interval)
            for seq, event in store.list_events(after_seq=last_seq, since_ms=since, types=types):
                last_seq = seq
                if matches(event, **filters):
                    print(format_event(event, as_json=args.json), flush=True)
    finally:
        store.close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
