"""Validate the configuration and resolve every secret (API key, sink URLs, signing secrets, the ingress's signing
secret), printing none.

Also runs every check `run` makes at start (the state directory, each sink's file path or program), so a
config that passes here starts. Exit status: 0 when the config is valid, 2 when it is not (one line per
problem, each naming the key and what is wrong).
"""

from __future__ import annotations

import argparse

from watcher.commands import add_config_argument

KEY_SOURCES = {
    "api_key": "api.api_key",
    "api_key_file": "api.api_key_file",
    "credential": "systemd credential flora_api_key",
    "FLORA_API_KEY": "environment variable FLORA_API_KEY",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def _num(value: float) -> str:
    return f"{value:g}"


def summary(config, store_state: str | None = None) -> list[str]:
    """The lines printed after ``config OK``. Names where secrets came from, never their values. ``store_state``:
    what the PostgreSQL store answered (server version, schema), on the store's line."""
    from watcher.logs import redact

    api, watch = config.api, config.watch
    key_source = KEY_SOURCES.get(api.api_key_source or "", "none")
    lines = [
        f"  api:        {redact(api.base_url)} (key from {key_source})",
        f"  polling:    interval {_num(watch.interval)}s, concurrency {watch.concurrency}, "
        f"max_rps {_num(api.max_rps)}, timeout {_num(api.timeout)}s",
        f"  events:     {', '.join(watch.events)}",
    ]
    filters = [
        f"{name}={','.join(values)}"
        for name, values in (
            ("workspace_id", watch.workspace_id),
            ("project_id", watch.project_id),
            ("technique_id", watch.technique_id),
        )
        if values
    ]
    if filters:
        lines.append(f"  filters:    {' '.join(filters)}")
    if config.store.url is None:
        lines.append(f"  state_dir:  {watch.state_dir}")
    else:
        from watcher.stores import describe

        lines.append(f"  store:      {describe(config)} (lease {_num(config.store.lease)}s)"
                     + (f": {store_state}" if store_state else ""))
    if config.server.listen:
        lines.append(f"  server:     {config.server.listen}")
    lines.append(f"  ingress:    {_ingress(config.ingress)}")
    lines.append(f"  sinks ({len(config.sinks)}):")
    width = max(len(s.name) for s in config.sinks)
    for sink in config.sinks:
        lines.append(f"    {sink.name:<{width}}  {sink.type:<11}  {', '.join(sink.events)}{_sink_detail(sink)}")
    return lines


SECRET_SOURCES = {
    "signing_secret": "ingress.signing_secret",
    "signing_secret_file": "ingress.signing_secret_file",
    "credential": "systemd credential flora_signing_secret",
}


def _ingress(ingress) -> str:
    """``[ingress]`` in one line: where it listens, the path, where the secret came from (never the secret)."""
    if not ingress.enabled:
        return "off (FLORA callbacks not received; set ingress.listen to turn them on)"
    n = len(ingress.signing_secrets)
    source = SECRET_SOURCES.get(ingress.secret_source or "", "none")
    secrets = f"{n} signing secrets from {source}" if n > 1 else f"signing secret from {source}"
    tolerance = "unchecked" if ingress.tolerance == 0 else f"{_num(ingress.tolerance)}s"
    return f"{ingress.listen}{ingress.path} ({secrets}, timestamp tolerance {tolerance})"


def _sink_detail(sink) -> str:
    """The sink type's own details (``SinkType.describe``: signing, path, format), then its match filters."""
    from watcher.sinks.registry import REGISTRY

    spec = REGISTRY.get(sink.type)
    details = list(spec.describe(sink)) if spec is not None else []
    if sink.match:
        details.append("match " + " ".join(f"{k}={','.join(v)}" for k, v in sink.match.items()))
    return f"  [{'; '.join(details)}]" if details else ""


def main(args: argparse.Namespace) -> int:
    from watcher.config import load
    from watcher.sinks.registry import REGISTRY
    from watcher.validate import check_start

    # ConfigError propagates: cli.py prints each problem on its own line and exits 2. The same start-time
    # checks as `run` (state_dir, each sink's construction, paths and programs): what passes here starts.
    config = load(args.config, sink_types=REGISTRY)
    check_start(config)
    store_state = None
    if config.store.url is not None:  # several instances share it: check it answers, and its schema
        import asyncio

        from watcher.errors import StoreError
        from watcher.store_pg import probe

        try:
            store_state = asyncio.run(probe(config.store.url.reveal()))
        except StoreError as exc:  # unreachable, refused, not ours: what `run` would stop on (exit 1 there)
            import sys

            print(f"flora-watcher: store.url: {exc}", file=sys.stderr)
            return 2
    print(f"config OK: {config.source if config.source is not None else 'defaults (no file found)'}")
    for line in summary(config, store_state):
        print(line)
    return 0
