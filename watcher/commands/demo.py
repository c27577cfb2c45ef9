"""Watch a built-in FLORA simulator: no key, no config.

Starts the FLORA API simulator on loopback, starts a handful of technique runs and a generation on it (some
of which fail, one of which gets stuck for a while), and runs the real watcher against it with a stdout sink,
so you can see runs progress and each completion, failure or stall reported the moment it happens. Some runs
are started with a ``callback_url`` pointing at the watcher's ingress (``[ingress]``, on loopback): the
simulator sends FLORA's signed callback when they end, and the demo marks each one that came that way (⚡);
the others are found by polling. Ends by itself once every scripted run has been reported (well under a
minute), or on Ctrl-C. Nothing is written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEMO_KEY = "sk_test_demo_simulator_key"
DEMO_SIGNING_SECRET = "whsec_demo_simulator_signing_secret"
DEADLINE_S = 55.0
STALLED_AFTER_S = 3.0  # the demo's [watch] stalled_after: short, so a stuck run shows within seconds
EVENTS = ("run.completed", "run.failed", "run.started", "run.stalled")


@dataclass(frozen=True, slots=True)
class ScriptedRun:
    at_s: float  # when the demo starts it, seconds after the watcher started
    technique: str
    pending_ms: int
    running_ms: int
    outcome: str
    error_code: str | None = None
    model: str | None = None  # a generation of this model instead of a technique run
    stall_ms: int = 0  # progress stands still this long halfway through: reported as run.stalled
    callback: bool = False  # started with a callback_url: FLORA's signed callback tells the watcher it ended


SCRIPT: tuple[ScriptedRun, ...] = (
    ScriptedRun(0.0, "cctv-cam", 800, 4_000, "completed", callback=True),
    ScriptedRun(0.5, "product-shot", 1_200, 6_000, "completed"),
    ScriptedRun(1.0, "storyboard-animate", 1_000, 9_000, "failed", "GPU_PROVIDER_ERROR", callback=True),
    ScriptedRun(1.5, "", 700, 5_000, "completed", model="flux-1.1-pro", callback=True),  # a generation
    ScriptedRun(2.0, "voiceover", 500, 3_000, "completed"),
    # Stuck halfway for 7 s (longer than the demo's stalled_after of 3 s): run.stalled, then its completion.
    ScriptedRun(2.5, "storyboard-animate", 500, 4_000, "completed", stall_ms=7_000),
    ScriptedRun(3.0, "cctv-cam", 700, 7_000, "failed", "safety_blocked"),
    ScriptedRun(4.0, "product-shot", 600, 5_000, "completed"),
    # Starts and finishes between two sweeps: the watcher still reports it.
    ScriptedRun(6.2, "voiceover", 100, 300, "completed"),
    ScriptedRun(7.0, "caption-writer", 900, 8_000, "failed", "GENERATION_PROVIDER_TIMEOUT", callback=True),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between sweeps (default: 1)")
    parser.add_argument("--json", action="store_true", help="print events as JSON Lines instead of text")


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_demo(interval=args.interval, as_json=args.json))
    except KeyboardInterrupt:
        return 0


async def _demo(*, interval: float, as_json: bool) -> int:
    import structlog

    from watcher.commands.run import live_view_wanted
    from watcher.config import ApiConfig, Config, DeliveryConfig, IngressConfig, WatchConfig
    from watcher.daemon import Daemon, Options
    from watcher.model import TERMINAL_EVENT_FOR_STATUS, event_id
    from watcher.secret import Secret
    from watcher.simulator import run_simulator
    from watcher.sinks import stdout

    log = structlog.get_logger("watcher.demo")
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="flora-watcher-demo-") as tmp:
        async with run_simulator(api_key=DEMO_KEY, seed=7, signing_secret=DEMO_SIGNING_SECRET) as sim:
            cfg = Config(
                api=ApiConfig(base_url=sim.base_url, api_key=Secret(DEMO_KEY), timeout=5.0, max_rps=20.0),
                watch=WatchConfig(interval=interval, events=EVENTS, state_dir=Path(tmp), poll_max_interval=5.0,
                                  stalled_after=STALLED_AFTER_S),
                delivery=DeliveryConfig(shutdown_grace=2.0),
                sinks=(stdout.SINK.configure("console", format="json" if as_json else "text", events=EVENTS),),
                ingress=IngressConfig(listen="127.0.0.1:0", signing_secrets=(Secret(DEMO_SIGNING_SECRET),)),
            )
            generations = sum(1 for item in SCRIPT if item.model)
            print(f"flora-watcher demo: a FLORA simulator is serving {sim.base_url}; starting "
                  f"{len(SCRIPT) - generations} technique runs and {generations} generation and watching them "
                  f"(sweep every {interval:g} s; a run stuck for {STALLED_AFTER_S:g} s is reported as stalled). "
                  f"{sum(1 for item in SCRIPT if item.callback)} of them are started with a callback_url: FLORA's "
                  "signed callback tells the watcher the moment they end (⚡).",
                  file=out, flush=True)
            arrivals = _callback_lines(out, as_json=as_json)
            daemon = Daemon(cfg, Options(install_signal_handlers=False, live_view=live_view_wanted()),
                            observers=[arrivals])
            loop = asyncio.get_running_loop()
            import signal

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, daemon.request_stop)
            expected: set[str] = set()
            all_reported = asyncio.Event()

            async def script() -> None:
                while daemon.push is None or daemon.push.ingress.port is None:  # the ingress listens first
                    if daemon.stop_event.is_set():
                        return
                    await asyncio.sleep(0.05)
                t0 = loop.time()
                try:
                    for item in SCRIPT:
                        await asyncio.sleep(max(0.0, t0 + item.at_s - loop.time()))
                        push = daemon.push
                        callback_url = (f"http://127.0.0.1:{push.ingress.port}{push.ingress.path}"
                                        if item.callback and push is not None else None)
                        run_id = sim.sim.create_run(
                            technique=item.technique or "cctv-cam", pending_ms=item.pending_ms,
                            running_ms=item.running_ms, outcome=item.outcome, error_code=item.error_code,
                            kind="generation" if item.model else "technique", model=item.model,
                            stall_ms=item.stall_ms, callback_url=callback_url,
                        )
                        expected.add(event_id(run_id, TERMINAL_EVENT_FOR_STATUS[item.outcome]))
                        if item.stall_ms:
                            expected.add(event_id(run_id, "run.stalled"))
                except Exception:
                    log.exception("demo.script_failed")
                    daemon.request_stop()

            stalls = sum(1 for item in SCRIPT if item.stall_ms)

            async def finish_when_reported() -> None:
                deadline = loop.time() + DEADLINE_S
                while loop.time() < deadline:
                    await asyncio.sleep(0.25)
                    if len(expected) < len(SCRIPT) + stalls or daemon.store is None:
                        continue
                    have = await daemon.store.events_exist(sorted(expected))
                    pending = await daemon.store.pending_counts()
                    if have == expected and not any(pending.values()):
                        all_reported.set()
                        break
                else:
                    log.warning("demo.deadline", note="stopping before every run was reported")
                daemon.request_stop()

            tasks = [asyncio.create_task(script()), asyncio.create_task(finish_when_reported())]
            try:
                code = await daemon.run()
            finally:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks, return_exceptions=True)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            failed = sum(1 for item in SCRIPT if item.outcome == "failed")
            if all_reported.is_set():
                summary = (f"done. {len(SCRIPT)} runs watched, {len(SCRIPT) - failed} completed, {failed} failed, "
                           f"{stalls} stalled for a while; each reported once; {arrivals.confirmed} told by FLORA's "
                           "callback (⚡), the rest by polling.")
            else:
                summary = "stopped before every scripted run was reported."
            print(f"flora-watcher demo: {summary} Run `flora-watcher run` with your own key to watch FLORA.",
                  file=out, flush=True)
            return 0 if code == 0 else code



def _callback_lines(out, *, as_json: bool):  # -> an Observer; built here so the CLI does not import the daemon
    from watcher.observer import Observer

    class CallbackLines(Observer):
        """One line per FLORA callback the watcher confirmed (JSON Lines output stays events only)."""

        confirmed = 0

        def on_callback(self, run_id: str, outcome: str, seconds: float) -> None:
            if outcome != "confirmed":  # "known": polling had found it first
                return
            self.confirmed += 1
            if not as_json:
                print(f"⚡ FLORA's signed callback for {run_id}: confirmed with the API {seconds * 1000:.0f} ms "
                      "after it came", file=out, flush=True)

    return CallbackLines()
