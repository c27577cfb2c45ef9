"""Tracked runs, outbox depth, last sweep and per-sink health, read from the state store.

Works while the daemon runs (the store is SQLite in WAL mode) and needs no API key.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from watcher.cli import add_config_argument

    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def main(args: argparse.Namespace) -> int:
    from watcher.commands._common import ago, iso, load_for_store, now_ms, open_store
    from watcher.logs import redact
    from watcher.store import store_path

    cfg = load_for_store(args.config)
    store = open_store(cfg)
    if store is None:
        print(f"no state yet: {store_path(cfg.watch.state_dir)} does not exist "
              "(the watcher has not run with this state_dir)")
        return 0
    try:
        summary = store.summary()
    finally:
        store.close()
    configured = {s.name: s.type for s in cfg.sinks}
    if args.json:
        for entry in summary["sinks"].values():
            if entry.get("last_error"):
                entry["last_error"] = redact(entry["last_error"])
        summary["meta"]["last_sweep_error"] = redact(summary["meta"].get("last_sweep_error") or "")
        summary["configured_sinks"] = configured
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    meta = summary["meta"]
    now = now_ms()
    tracked = summary["tracked"]
    deliveries = summary["deliveries"]
    lines = [
        f"state:        {summary['path']} ({summary['file_bytes'] // 1024} KiB, schema {summary['schema_version']})",
        f"first start:  {iso(int(meta['first_start_ms'])) if meta.get('first_start_ms') else 'never'}",
        f"last sweep:   {ago(_int(meta.get('last_sweep_ms')), now)}"
        f" (last successful: {ago(_int(meta.get('last_sweep_ok_ms')), now)})",
    ]
    if meta.get("last_sweep_error"):
        lines.append(f"last error:   {redact(meta['last_sweep_error'])}")
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(tracked["by_status"].items())) or "none"
    lines.append(f"tracked runs: {tracked['active']} active, {tracked['terminal']} recently finished ({by_status})")
    oldest = deliveries.get("oldest_pending_ms")
    lines.append(
        f"outbox:       {deliveries['pending']} pending"
        + (f" (oldest {ago(oldest, now)})" if oldest else "")
        + f", {deliveries['dead']} dead letters, {deliveries['delivered']} delivered, {summary['events']} events"
    )
    lines.append("sinks:")
    names = sorted(set(configured) | set(summary["sinks"]))
    if not names:
        lines.append("  (none)")
    for name in names:
        entry = summary["sinks"].get(name, {})
        kind = configured.get(name, "not configured")
        if entry.get("disabled_reason"):
            health = f"DISABLED: {redact(entry['disabled_reason'])}"
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
    print("\n".join(lines))
    return 0


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None
