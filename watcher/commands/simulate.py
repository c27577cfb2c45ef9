"""Serve the FLORA API simulator on loopback, for development and tests (CONTRACT §7).

Prints the API base URL and the key, then serves until SIGINT or SIGTERM. Runs progress on their own clocks;
--rate keeps a steady stream of new ones. The admin API lives under /_sim (stats, runs, transitions, faults,
generator, callbacks) and needs no key.

Runs started with a ``callback_url`` (``POST /techniques/{slug}/runs``, ``POST /generate``) get FLORA's signed
run callback when they end, signed with --signing-secret and retried after 10 s, 1 min and 5 min. Unlike FLORA,
the simulator also calls loopback URLs (``http://127.0.0.1:PORT/...``), so a local watcher's ingress can take
them without TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys
from typing import Any

from watcher import exits
from watcher.errors import UsageError

DEFAULT_PORT = 8787
DEFAULT_KEY = "sk_test_simulator"
DEFAULT_SIGNING_SECRET = "whsec_test_simulator"  # = watcher.simulator.callbacks.DEFAULT_SIGNING_SECRET


def _range_seconds(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(":")
    try:
        pair = (float(lo), float(hi if sep else lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX seconds, got {text!r}") from None
    if min(pair) < 0:
        raise argparse.ArgumentTypeError("durations must not be negative")
    return (min(pair), max(pair))


def _burst(text: str) -> tuple[int, int]:
    every, sep, count = text.partition(":")
    try:
        pair = (int(every), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N:K (K failures in every N), got {text!r}") from None
    if not sep or pair[0] < 1 or not 0 <= pair[1] <= pair[0]:
        raise argparse.ArgumentTypeError("expected N:K with N >= 1 and 0 <= K <= N")
    return pair


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def _retry_after(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("Retry-After must not be negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; loopback only)")
    add("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0 = any free port)")
    add("--allow-remote", action="store_true", help="allow a --host that is not a loopback address")
    add("--api-key", default=DEFAULT_KEY, help=f"the key clients must send (default: {DEFAULT_KEY})")
    add("--public-base-url", metavar="URL", help="API base used in poll_url (default: from the Host header)")
    add("--seed", type=int, default=1, help="seed for run data and faults (default: 1)")
    add("--runs", type=int, default=20, metavar="N",
        help="runs to create at start, spread over the recent past (default: 20)")
    add("--rate", type=float, default=0.0, metavar="R", help="create R new runs per second (default: off)")
    add("--duration", type=_range_seconds, default=(20.0, 120.0), metavar="MIN:MAX",
        help="run duration range in seconds, created to terminal (default: 20:120)")
    add("--warm", action="store_true",
        help="start --rate as if it had been running for the longest --duration (steady state at once)")
    add("--fail-ratio", type=_share, default=0.2, metavar="F", help="share of runs that fail (default: 0.2)")
    add("--latency-ms", type=float, default=0.0, metavar="MS", help="latency added to each API response")
    add("--latency-jitter-ms", type=float, default=0.0, metavar="MS", help="plus uniform jitter up to MS")
    add("--rate-limit-share", type=_share, default=0.0, metavar="F", help="share of requests answered 429")
    add("--retry-after", type=_retry_after, default=1.0, metavar="S|none",
        help="Retry-After seconds on 429s; 'none' sends no header (default: 1)")
    add("--retry-after-mode", choices=("seconds", "http-date", "ms"), default="seconds",
        help="send Retry-After as seconds or an HTTP-date, or send retry-after-ms (default: seconds)")
    add("--error-burst", type=_burst, metavar="N:K", help="the last K of every N API requests fail with 5xx")
    add("--malformed-share", type=_share, default=0.0, metavar="F", help="share of 200s with a broken body")
    add("--stall-share", type=_share, default=0.0, metavar="F", help="share of responses held --stall-ms")
    add("--stall-ms", type=float, default=5000.0, metavar="MS", help="how long a stalled response waits")
    add("--reset-share", type=_share, default=0.0, metavar="F", help="share of connections dropped")
    add("--camel-case", action="store_true", help="run objects in camelCase (runId, createdAt, pollUrl, ...)")
    add("--seconds-timestamps", action="store_true", help="timestamps in Unix seconds, not ms")
    add("--nulls", action="store_true", help="send fields that do not apply as null instead of omitting them")
    add("--charged-cost-delay-ms", type=int, default=0, metavar="MS",
        help="charged_cost stays absent this long after a run ends (default: 0)")
    add("--signing-secret", action="append", metavar="WHSEC",
        help=f"secret that signs run callbacks; give it twice to sign with both, as during a rotation "
             f"(default: {DEFAULT_SIGNING_SECRET})")
    add("--callback-delay-ms", type=float, default=0.0, metavar="MS",
        help="send each run callback this long after the run ends (default: 0)")
    add("--callback-early-ms", type=float, default=0.0, metavar="MS",
        help="send each run callback this long before the API shows the run ended (default: 0)")
    add("--callback-drop-share", type=_share, default=0.0, metavar="F", help="share of run callbacks never sent")
    add("--callback-duplicate-share", type=_share, default=0.0, metavar="F",
        help="share of callback attempts sent twice")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _faults(args: argparse.Namespace) -> Any:
    from watcher.simulator import Faults

    return Faults(
        latency_ms=args.latency_ms, latency_jitter_ms=args.latency_jitter_ms,
        rate_limit_share=args.rate_limit_share, retry_after=args.retry_after,
        retry_after_mode=args.retry_after_mode, error_burst=args.error_burst,
        malformed_share=args.malformed_share, camel_case=args.camel_case,
        seconds_timestamps=args.seconds_timestamps, nulls=args.nulls, stall_share=args.stall_share,
        stall_ms=args.stall_ms, reset_share=args.reset_share,
        charged_cost_delay_ms=args.charged_cost_delay_ms,
        callback_delay_ms=args.callback_delay_ms, callback_early_ms=args.callback_early_ms,
        callback_drop_share=args.callback_drop_share, callback_duplicate_share=args.callback_duplicate_share,
    )


def main(args: argparse.Namespace) -> int:
    if not args.allow_remote and not _is_loopback(args.host):
        raise UsageError(f"refusing to listen on non-loopback host {args.host!r} "
                         "(pass --allow-remote to do it anyway)")
    if args.runs < 0 or args.rate < 0 or not 0 <= args.port <= 65535:
        raise UsageError("--runs, --rate and --port must not be negative")
    if any(not secret.strip() for secret in args.signing_secret or ()):
        raise UsageError("--signing-secret must not be empty")
    try:
        faults = _faults(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        asyncio.run(_serve(args, faults))
    except OSError as exc:
        print(f"flora-watcher simulate: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return exits.FAILURE
    return exits.OK


async def _serve(args: argparse.Namespace, faults: Any) -> None:
    from watcher.simulator import run_simulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    lo_ms, hi_ms = (int(s * 1000) for s in args.duration)
    secrets = args.signing_secret or [DEFAULT_SIGNING_SECRET]
    try:
        async with run_simulator(
            api_key=args.api_key, seed=args.seed, host=args.host, port=args.port, faults=faults,
            public_base_url=args.public_base_url, fail_ratio=args.fail_ratio,
            pending_ms=(0, min(2_000, lo_ms)), running_ms=(max(0, lo_ms - 2_000), hi_ms),
            signing_secret=secrets,
        ) as running:
            sim = running.sim
            if args.runs:
                now = sim.now_ms()
                sim.create_runs(args.runs, created_at=(now - 2 * hi_ms, now))
            if args.rate:
                sim.start_generator(args.rate, duration_ms=(lo_ms, hi_ms), pending_ms=(0, min(2_000, lo_ms)),
                                    fail_ratio=args.fail_ratio, warm=args.warm)
            print(f"FLORA simulator listening: {running.base_url}", flush=True)
            print(f"API key: {args.api_key}", flush=True)
            print(f"callback signing secret: {', '.join(secrets)}", flush=True)
            print(f"admin: {running.admin_url}/stats  (Ctrl-C to stop)", flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print("FLORA simulator stopped", flush=True)
