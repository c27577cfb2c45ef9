"""Follow one run until it ends, like `gh run watch`.

Polls the run every 2 s at first, backing off to every 10 s while nothing changes (any change of status or
progress brings it back to 2 s). On a terminal, a progress bar shows status and elapsed time; otherwise one
line per change goes to stderr. The run's summary is the last line on stdout (with --json, the run as JSON).
Transient API errors (network, 5xx, 429, malformed answers) are retried until --timeout.

Exit status: 0 completed; 1 failed (error code and message printed) or the API refused the request (4xx);
3 not found; 4 authentication error; 124 --timeout reached; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from watcher import exits
from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.commands import add_config_argument
from watcher.errors import ApiError, AuthError, BadResponseError, NotFoundError, RateLimitedError
from watcher.model import Run, RunStatus

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

EXIT_COMPLETED = exits.OK
EXIT_FAILED = exits.FAILURE
EXIT_NOT_FOUND = exits.NOT_FOUND
EXIT_AUTH = exits.AUTH
EXIT_TIMEOUT = exits.TIMEOUT
EXIT_INTERRUPTED = exits.INTERRUPTED

DEFAULT_INTERVAL = 2.0  # seconds: first poll delay, and again after every change
DEFAULT_MAX_INTERVAL = 10.0  # seconds: the back-off cap while nothing changes


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run to follow (run_...)")
    add_config_argument(parser)
    parser.add_argument("--timeout", metavar="S", type=_positive_seconds,
                        help="give up after S seconds, exit status 124 (default: wait until the run ends)")
    parser.add_argument("--technique", metavar="SLUG",
                        help="the run's technique (slug or tech_ id): polls /techniques/SLUG/runs/RUN_ID")
    parser.add_argument("--json", action="store_true", help="print the final run as JSON on stdout")
    parser.add_argument("--interval", metavar="S", type=_positive_seconds, default=DEFAULT_INTERVAL,
                        help=f"first poll delay, again after each change (default: {DEFAULT_INTERVAL:g})")
    parser.add_argument("--max-interval", metavar="S", type=_positive_seconds, default=DEFAULT_MAX_INTERVAL,
                        help=f"longest poll delay while nothing changes (default: {DEFAULT_MAX_INTERVAL:g})")


def main(args: argparse.Namespace) -> int:
    from watcher import config as config_mod
    from watcher.sinks.registry import REGISTRY

    cfg = config_mod.load(args.config, sink_types=REGISTRY)
    try:
        return asyncio.run(watch_run(
            args.run_id,
            base_url=cfg.api.base_url,
            api_key=cfg.api.api_key,
            api_timeout=cfg.api.timeout,
            max_rps=cfg.api.max_rps,
            give_up_after=args.timeout,
            technique_id=args.technique,
            as_json=args.json,
            interval=args.interval,
            max_interval=max(args.interval, args.max_interval),
        ))
    except KeyboardInterrupt:
        print("flora-watcher: watch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# ------------------------------------------------------------------------------------------- the core


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    run: Run | None  # the last Run seen (None when none was)
    message: str | None = None  # for stderr, when there is no run to summarise


def next_delay(attempt: int, rand: float, *, first: float, cap: float) -> float:
    """Seconds until the next poll: ``first`` after a change, backing off to ``cap`` while nothing changes."""
    from watcher.policy import poll_delay

    return poll_delay(attempt, rand, first=first, cap=cap)


async def follow(
    client,
    run_id: str,
    *,
    reporter: Reporter,
    give_up_after: float | None = None,
    technique_id: str | None = None,
    interval: float = DEFAULT_INTERVAL,
    max_interval: float = DEFAULT_MAX_INTERVAL,
    clock: Clock = SYSTEM_CLOCK,
    rand: random.Random | None = None,
) -> Outcome:
    """Poll ``client.get_run`` until the run is terminal, missing, refused, or ``give_up_after`` seconds pass."""
    rand = rand or random.Random()
    deadline = clock.monotonic() + give_up_after if give_up_after is not None else None
    last = None
    poll_url: str | None = None
    attempt = 0
    while True:
        remaining = deadline - clock.monotonic() if deadline is not None else None
        if remaining is not None and remaining <= 0:
            return Outcome(EXIT_TIMEOUT, last, f"timed out after {give_up_after:g}s")
        wait_floor = 0.0
        try:
            run = await clock.wait_for(client.get_run(run_id, poll_url=poll_url, technique_id=technique_id),
                                       remaining)
        except TimeoutError:
            return Outcome(EXIT_TIMEOUT, last, f"timed out after {give_up_after:g}s")
        except NotFoundError:
            return Outcome(EXIT_NOT_FOUND, last, f"run {run_id} not found (wrong id, or another workspace)")
        except AuthError as exc:
            return Outcome(EXIT_AUTH, last, f"the API refused the key: {exc.message}")
        except ApiError as exc:
            if not (exc.retryable or isinstance(exc, BadResponseError)):
                return Outcome(EXIT_FAILED, last, exc.message)
            reporter.api_error(exc)
            if isinstance(exc, RateLimitedError) and exc.retry_after:
                wait_floor = exc.retry_after
            attempt += 1
        else:
            run = run.merged_with(last) if last is not None else run
            poll_url = run.poll_url or poll_url
            technique_id = technique_id or run.technique_id
            if last is None or (run.status, run.progress) != (last.status, last.progress):
                attempt = 0
                reporter.update(run)
            else:
                attempt += 1
            last = run
            if run.terminal:
                return Outcome(EXIT_COMPLETED if run.status == RunStatus.COMPLETED else EXIT_FAILED, run)
        delay = max(wait_floor, next_delay(attempt, rand.random(), first=interval, cap=max_interval))
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - clock.monotonic()))
        await clock.sleep(delay)


async def watch_run(
    run_id: str,
    *,
    base_url: str,
    api_key,
    give_up_after: float | None = None,
    technique_id: str | None = None,
    as_json: bool = False,
    interval: float = DEFAULT_INTERVAL,
    max_interval: float = DEFAULT_MAX_INTERVAL,
    api_timeout: float = 30.0,
    max_rps: float = 5.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
    live: bool | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> int:
    """The whole command without argparse and config: follow the run, print the result, return the status.

    ``out``/``err`` default to the current stdout/stderr; ``live`` (default: ``err`` is a TTY) picks the
    progress bar over plain lines.
    """
    from watcher.api import FloraClient

    out = out or sys.stdout
    err = err or sys.stderr
    live = err.isatty() if live is None else live
    reporter: Reporter = LiveReporter(run_id, err, clock) if live else LineReporter(run_id, err, clock)
    async with FloraClient(base_url, api_key, timeout=api_timeout, max_rps=max_rps, clock=clock) as client:
        with reporter.active():
            outcome = await follow(client, run_id, reporter=reporter, give_up_after=give_up_after,
                                   technique_id=technique_id, interval=interval, max_interval=max_interval,
                                   clock=clock)
    if outcome.message:
        print(f"flora-watcher: watch: {outcome.message}", file=err)
    run = outcome.run
    if run is not None:
        if as_json:
            print(json.dumps(run.to_dict(), ensure_ascii=False), file=out)
        else:
            for line in output_lines(run):
                print(line, file=out)
            print(summary(run, clock.now_ms(), timed_out=outcome.code == EXIT_TIMEOUT), file=out)
    out.flush()
    return outcome.code


# ---------------------------------------------------------------------------------------- rendering


def summary(run, now_ms: int, *, timed_out: bool = False) -> str:
    """One line: id, status, technique, duration; error code and message for a failed run."""
    from watcher.liveview import clean, run_elapsed_ms
    from watcher.render import format_duration

    parts = [f"{clean(run.run_id, 60)} {clean(run.status, 20)}"]
    if run.technique_name or run.technique_id:
        parts.append(f"({clean(run.technique_name or run.technique_id, 40)})")
    elapsed = run_elapsed_ms(run, now_ms)
    if run.terminal:
        if elapsed is not None:
            parts.append(f"in {format_duration(elapsed)}")
    else:
        if run.progress is not None:
            parts.append(f"{run.progress:.0f}%")
        if timed_out:
            parts.append("- still not finished at --timeout")
    text = " ".join(parts)
    if run.status == RunStatus.FAILED:
        code = clean(run.error_code or "no error code", 60)
        text += f": {code}"
        if run.error_message:
            text += f": {clean(run.error_message, 300)}"
    return text


def output_lines(run) -> list[str]:
    """One line per output of a completed run: type and URL (or text, shortened)."""
    from watcher.liveview import clean

    return [f"  {clean(o.type or 'output', 20)} {clean(o.url or '', 500)}" for o in run.outputs if o.url]


class Reporter:
    """Progress on stderr while waiting."""

    def __init__(self, run_id: str, err: TextIO, clock: Clock) -> None:
        self.run_id = run_id
        self.err = err
        self.clock = clock
        self._last_error: str | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        yield

    def update(self, run) -> None:
        self._last_error = None

    def api_error(self, exc: ApiError) -> None:
        if exc.message != self._last_error:
            self._last_error = exc.message
            self.note(f"API error, retrying: {exc.message}")

    def note(self, text: str) -> None:
        print(f"{self.run_id}: {text}", file=self.err, flush=True)


class LineReporter(Reporter):
    """One line per status or progress change (for logs and pipes)."""

    def update(self, run) -> None:
        from watcher.liveview import clean, run_elapsed_ms
        from watcher.render import format_duration

        super().update(run)
        text = clean(run.status, 20)
        if run.progress is not None and not run.terminal:
            text += f" {run.progress:.0f}%"
        elapsed = run_elapsed_ms(run, self.clock.now_ms())
        if elapsed is not None:
            text += f" ({format_duration(elapsed)})"
        self.note(text)


class LiveReporter(Reporter):
    """A rich progress bar with status and elapsed time (terminals). It disappears when the run ends."""

    def __init__(self, run_id: str, err: TextIO, clock: Clock) -> None:
        super().__init__(run_id, err, clock)
        from rich.console import Console

        self.console = Console(file=err)
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        from rich.markup import escape
        from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn

        from watcher.liveview import clean

        elapsed = _elapsed_column(self.clock)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn(escape(clean(self.run_id, 40)), style="bold"),
            TextColumn("{task.fields[status]}"),
            BarColumn(),
            TaskProgressColumn(),
            elapsed,
            console=self.console,
            transient=True,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task("run", total=None, status="waiting", started_ms=None)
        with self._progress:
            yield

    def update(self, run) -> None:
        from rich.markup import escape

        from watcher.liveview import STATUS_STYLES, clean

        super().update(run)
        if self._progress is None or self._task is None:
            return
        style = STATUS_STYLES.get(run.status, "magenta")
        status = f"[{style}]{escape(clean(run.status, 20))}[/]"  # the column is markup: API text escaped
        pct = 100.0 if run.status == RunStatus.COMPLETED else run.progress
        self._progress.update(self._task, total=100 if pct is not None else None,
                              completed=min(100.0, max(0.0, pct or 0.0)), status=status,
                              started_ms=run.started_at or run.created_at)

    def note(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(f"{self.run_id}: {text}", style="yellow"))


def _elapsed_column(clock: Clock):
    """A progress column with the run's own elapsed time (from its started_at), not the watcher's.

    Built on first use so that importing this module (``--help``) does not import rich.progress.
    """
    from rich.progress import ProgressColumn
    from rich.text import Text

    from watcher.render import format_duration

    class ElapsedColumn(ProgressColumn):
        def render(self, task) -> Text:
            started = task.fields.get("started_ms")
            ms = clock.now_ms() - started if started is not None else None
            return Text(format_duration(ms), style="dim")

    return ElapsedColumn()
