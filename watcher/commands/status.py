"""Tracked runs, outbox depth, last sweep and per-sink health, read from the state store.

Works while the daemon runs (the store is SQLite in WAL mode) and needs no API key.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from watcher.commands import add_config_argument

    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


# The store's meta keys that are part of `status --json`; the rest (per-filter high watermarks …) are internal.
PUBLIC_META_MS = ("first_start_ms", "last_sweep_ms", "last_sweep_ok_ms", "last_resync_ms")
DAY_MS = 24 * 3600 * 1000


def main(args: argparse.Namespace) -> int:
    from watcher.commands._common import (
        ago,
        iso,
        live_pause,
        load_for_store,
        now_ms,
        open_store,
        plural,
        probe_text,
        sink_timeouts,
    )
    from watcher.logs import redact
    from watcher.sinks.spec import DEFAULT_SINK_TIMEOUT, delivery_targets
    from watcher.stores import describe

    cfg = load_for_store(args.config)
    store = open_store(cfg)
    if store is None:
        if cfg.store.url is None:
            print(f"no state yet: {describe(cfg)} does not exist (the watcher has not run with this state_dir)")
        else:
            print(f"no state yet: {describe(cfg)} holds no flora-watcher tables (the watcher has not run with it)")
        return 0
    try:
        summary = store.summary()
        pauses = store.sink_pauses()  # the circuit breaker's paused sinks
        callbacks = store.callback_counts(since_ms=now_ms() - DAY_MS)
    finally:
        store.close()
    configured = {s.name: s.type for s in delivery_targets(cfg.sinks)}  # an apprise sink: one per URL
    ingress = ingress_status(cfg.ingress, callbacks)
    timeouts = sink_timeouts(cfg)
    if args.json:
        print(json.dumps({**public_summary(summary, configured), "ingress": ingress}, indent=2, sort_keys=True))
        return 0
    meta = summary["meta"]
    now = now_ms()
    tracked = summary["tracked"]
    deliveries = summary["deliveries"]
    lines = [
        f"state:        {_where(summary)} ({summary['file_bytes'] // 1024} KiB,"
        f" schema {summary['schema_version']})",
        f"first start:  {iso(int(meta['first_start_ms'])) if meta.get('first_start_ms') else 'never'}",
        f"last sweep:   {ago(_int(meta.get('last_sweep_ms')), now)}"
        f" (last successful: {ago(_int(meta.get('last_sweep_ok_ms')), now)})",
    ]
    if meta.get("last_sweep_error"):
        lines.append(f"last error:   {redact(meta['last_sweep_error'])}")
    progress = _catchup(meta)
    if progress is not None:
        remaining = progress["estimated_remaining"]
        lines.append(f"catch-up:     {plural(progress['runs_read'] or 0, 'run')} read"
                     + (f", about {remaining} to go" if remaining is not None else "")
                     + f"; {plural(deliveries['pending'], 'delivery', 'deliveries')} queued"
                     + " (each batch's events are queued as it commits)")
    lines.append(f"tracked runs: {tracked_line(tracked['by_status'])}")
    oldest = deliveries.get("oldest_pending_ms")
    lines.append(
        f"outbox:       {deliveries['pending']} pending"
        + (f" (oldest {ago(oldest, now)})" if oldest else "")
        + f", {plural(deliveries['dead'], 'dead letter')}, {deliveries['delivered']} delivered, "
        + plural(summary["events"], "event")
    )
    lines.append(f"ingress:      {ingress_line(ingress, now)}")
    lines.append("sinks:")
    names = sorted(set(configured) | set(summary["sinks"]))
    if not names:
        lines.append("  (none)")
    for name in names:
        entry = summary["sinks"].get(name, {})
        kind = configured.get(name, "not configured")
        if entry.get("disabled_reason"):
            health = f"DISABLED: {redact(entry['disabled_reason'])}"
        elif (pause := live_pause(pauses.get(name), last_success_ms=_int(entry.get("last_success_ms")),
                                  last_failure_ms=_int(entry.get("last_failure_ms")))) is not None:
            since, probe = pause
            when = probe_text(probe, now, timeout_s=timeouts.get(name, DEFAULT_SINK_TIMEOUT),
                              last_sweep_ms=_int(meta.get("last_sweep_ms")))
            health = f"PAUSED since {iso(since)} (receiver down), {when}: {redact(entry.get('last_error') or '')}"
        elif entry.get("consecutive_failures"):
            health = f"failing ({entry['consecutive_failures']} in a row): {redact(entry.get('last_error') or '')}"
        elif entry.get("last_success_ms"):
            health = f"ok (last delivery {ago(entry['last_success_ms'], now)})"
        else:
            health = "no deliveries yet"
        lines.append(
            f"  {name} [{kind}]: {entry.get('pending', 0)} pending, {entry.get('dead', 0)} dead, "
            f"{entry.get('delivered', 0)} delivered; {health}"
        )
    if "instances" in summary:
        lines.extend(instance_lines(summary["instances"], summary.get("sweepers", []), summary["now_ms"]))
    print("\n".join(lines))
    return 0


def ingress_status(ingress: Any, counts: dict[str, Any]) -> dict[str, Any]:
    """``[ingress]`` as configured (never its secret) and the callbacks recorded in the last 24 hours. Pure."""
    by_outcome = dict(counts.get("by_outcome") or {})
    return {"enabled": ingress.enabled, "listen": ingress.listen, "path": ingress.path,
            "last_24h": by_outcome, "waiting": by_outcome.get("pending", 0),
            "last_received_ms": _int(counts.get("last_received_ms"))}


def ingress_line(ingress: dict[str, Any], now: int) -> str:
    """'127.0.0.1:8788/flora/callbacks; 12 callbacks in 24 h (confirmed 10, known 2), last 3s ago'. Pure."""
    from watcher.commands._common import ago, plural

    where = f"{ingress['listen']}{ingress['path']}" if ingress["enabled"] else "off"
    counts = ingress["last_24h"]
    if not counts and ingress["last_received_ms"] is None:
        return where if not ingress["enabled"] else f"{where}; no callback received yet"
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    last = ago(ingress["last_received_ms"], now) if ingress["last_received_ms"] is not None else "never"
    return f"{where}; {plural(sum(counts.values()), 'callback')} in 24 h ({detail or 'none'}), last {last}"


def _where(summary: dict[str, Any]) -> str:
    """The SQLite file's resolved path, or the PostgreSQL URL (already without its password)."""
    if summary.get("backend") == "postgresql":
        return str(summary["path"])
    return str(Path(summary["path"]).resolve())


def instance_lines(instances: list[dict[str, Any]], sweepers: list[dict[str, Any]], now: int) -> list[str]:
    """Several instances on one PostgreSQL store: each one (id, host, pid, role, last heartbeat), and the
    current sweeper of each watch scope. Pure."""
    from watcher.commands._common import ago, span

    alive = sum(1 for i in instances if i["alive"])
    dead = len(instances) - alive
    lines = [f"instances:    {alive} alive" + (f", {dead} dead" if dead else "")]
    for i in instances:
        if i["alive"]:
            lines.append(f"  {i['id']}: host {i['host']}, pid {i['pid']}, {i['role']},"
                         f" heartbeat {ago(i['heartbeat_ms'], now)}")
            continue
        # Its role is what it was, not what it is: the lease of a dead sweeper expires, another instance sweeps.
        forget = i.get("forget_ms")
        gone = f"; forgotten in {span(forget - now)}" if forget and forget > now else ""
        lines.append(f"  {i['id']}: host {i['host']}, pid {i['pid']}, DEAD: no heartbeat for"
                     f" {span(now - i['heartbeat_ms'])} (crashed or killed; it was the {i['role']}){gone}")
    if not sweepers:
        lines.append("sweeper:      none yet")
    for lease in sweepers:
        valid = "lease valid" if lease["valid"] else "lease EXPIRED: the next instance to renew takes over"
        lines.append(f"sweeper:      {lease['holder']} (token {lease['token']}, {valid}) for {lease['scope']}")
    return lines


def tracked_line(by_status: dict[str, int]) -> str:
    """'2 active (running 2), 9 recently finished (completed 7, failed 2)'. Pure. Only completed and failed
    runs count as finished; every other status (an unknown one too) is still active."""
    from watcher.model import is_terminal

    active = {k: v for k, v in sorted(by_status.items()) if not is_terminal(k)}
    finished = {k: v for k, v in sorted(by_status.items()) if is_terminal(k)}

    def detail(counts: dict[str, int]) -> str:
        return f" ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else ""

    return (f"{sum(active.values())} active{detail(active)}, "
            f"{sum(finished.values())} recently finished{detail(finished)}")


def public_summary(summary: dict[str, Any], configured: dict[str, str]) -> dict[str, Any]:
    """What `status --json` prints: the store's summary without internal keys, secrets masked, and every
    timestamp an integer of Unix milliseconds (or null). Pure."""
    from watcher.logs import redact

    meta = summary["meta"]
    sinks = {}
    for name, entry in summary["sinks"].items():
        entry = dict(entry)
        for key in ("last_error", "disabled_reason"):
            if entry.get(key):
                entry[key] = redact(entry[key])
        for key in [k for k in entry if k.endswith("_ms")]:
            entry[key] = _int(entry[key])
        sinks[name] = entry
    return {
        "path": _where(summary),
        "schema_version": summary["schema_version"],
        "file_bytes": summary["file_bytes"],
        "tracked": summary["tracked"],
        "events": summary["events"],
        "deliveries": {**summary["deliveries"],
                       "oldest_pending_ms": _int(summary["deliveries"].get("oldest_pending_ms"))},
        "sinks": sinks,
        "configured_sinks": configured,
        **({"backend": "postgresql", "instances": summary["instances"], "sweepers": summary["sweepers"]}
           if "instances" in summary else {}),
        "meta": {
            **{key: _int(meta.get(key)) for key in PUBLIC_META_MS},
            "last_sweep_error": redact(meta.get("last_sweep_error") or "") or None,
        },
        "catchup": _catchup(meta),
    }


def _catchup(meta: dict[str, Any]) -> dict[str, int | None] | None:
    from watcher.plan import catchup_progress

    return catchup_progress(meta)


def _int(value: object) -> int | None:
    """A stored timestamp (text or number) as integer milliseconds; None when absent or unreadable."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
