"""The crash-consistency loop: the real watcher, killed (SIGKILL) at random moments and at each named crash point,
restarted, many rounds; then the receivers' records are checked against the simulator's ground truth.

With ``operations``, each random-kill round first does what an operator does to a running daemon (issue 24): a
SIGHUP reload — alternately the same config, the webhook's URL changed, an unparseable file (rejected, then put
back) — and one admin command (seeded pick of `status`, `events`, `deliveries`, `replay --failed`,
`check-config`, `test-sink`, `migrate-state` …), checking after each that the daemon is alive and holds none of
its state files deleted; then the kill comes at a random moment after them.

One round: the watcher runs; runs are created; it dies (a random SIGKILL, or a crash point armed at its start
fires — ``after_commit``, ``before_send``, ``after_send``); more runs are created and some finish while it is
down; it starts again with the next round's crash point armed. After the last round a clean watcher (no crash
points) delivers everything and stops on SIGTERM.

With ``apprise``, an apprise sink (issue 23) sends to a third receiver through Apprise's ``json://`` (its URL's path
holds the URL canary), beside the file sink and the webhook: every transition must reach it too (``apprise_check``),
in a message of its own or listed in a group's; a group's "… and N more" stands for runs it does not list, which
may cover that many missing ones and no more.

Checks (``CrashReport.problems``): every terminal transition of every run created after the first start
reached the file sink and the webhook receiver; nothing was reported that did not happen; the file holds each
event once; a transition always carries the same event id and body; every webhook duplicate is explained by a
death while it was in flight (its first copy arrived just before the process died); the state
store passes ``PRAGMA integrity_check`` and its outbox is empty.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability.harness import (
    Canaries,
    Receiver,
    SimServer,
    Verdict,
    WatcherProcess,
    check,
    expected_transitions,
    find_leaks,
    write_config,
)
from tests.reliability.ops import REJECTED, RELOADED, UNPARSEABLE, admin_round, harm, pick
from watcher.simulator.app import Simulator
from watcher.store import Store, store_path

MODES = ("random", "after_commit", "before_send", "after_send")


@dataclass
class CrashReport:
    rounds: int = 0
    created: int = 0
    starts: int = 0
    deaths: int = 0  # SIGKILLs, the harness's and the crash points' together
    by_mode: dict[str, int] = field(default_factory=Counter)  # deaths by cause: random / crash point name
    verdict: Verdict = field(default_factory=Verdict)
    unexplained_duplicates: list[str] = field(default_factory=list)
    late_events: int = 0
    integrity: str = ""
    pending_after: int = -1
    exit_code: int | None = None
    leaks: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    reloads: int = 0  # SIGHUPs answered (reloaded or rejected) before a kill
    admin_commands: int = 0
    ops_problems: list[str] = field(default_factory=list)  # what a reload or an admin command did to the daemon
    apprise: AppriseVerdict | None = None  # with an apprise sink: what reached its receiver

    @property
    def problems(self) -> list[str]:
        out = list(self.verdict.problems)
        unexpected = {cause: n for cause, n in self.by_mode.items() if cause.startswith("unexpected")}
        if unexpected:
            out.append(f"the watcher exited on its own: {unexpected}")
        if self.unexplained_duplicates:
            out.append(f"{len(self.unexplained_duplicates)} webhook duplicates not explained by a death mid-send")
        if self.integrity != "ok":
            out.append(f"integrity_check: {self.integrity!r}")
        if self.pending_after != 0:
            out.append(f"{self.pending_after} deliveries still pending after the final drain")
        if self.apprise is not None and self.apprise.lost:
            out.append(f"{self.apprise.lost} transitions never reached the apprise sink's receiver")
        if self.apprise is not None and self.apprise.spurious:
            out.append(f"the apprise sink reported {self.apprise.spurious} transitions that did not happen")
        if self.exit_code != 0:
            out.append(f"the final watcher exited {self.exit_code} on SIGTERM")
        if self.leaks:
            out.append(f"secrets leaked: {self.leaks[:5]}")
        out += self.ops_problems[:5]
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds, "runs_created": self.created, "starts": self.starts, "deaths": self.deaths,
            "deaths_by_cause": dict(self.by_mode), **self.verdict.summary(),
            "unexplained_duplicates": len(self.unexplained_duplicates), "late_events": self.late_events,
            "integrity": self.integrity, "pending_after": self.pending_after, "exit_code": self.exit_code,
            "leaks": len(self.leaks), "reloads": self.reloads, "admin_commands": self.admin_commands,
            "ops_problems": len(self.ops_problems), "seconds": round(self.seconds, 1),
            **({"apprise": self.apprise.summary()} if self.apprise is not None else {}),
        }


_RUN_ID = re.compile(r"run_[A-Za-z0-9]+")
_GROUP_TITLE = re.compile(r"\S+ (\d+) runs ")
_MORE = re.compile(r"… and (\d+) more")
_APPRISE_TYPES = {"failure": "run.failed", "success": "run.completed"}


@dataclass
class AppriseVerdict:
    """What an apprise sink's ``json://`` receiver got, against the expected transitions."""

    messages: int = 0
    listed: int = 0  # transitions named in a message
    unlisted: int = 0  # runs a group's "… and N more" stands for
    missing: int = 0  # expected transitions named in no message
    spurious: int = 0  # transitions named that did not happen

    @property
    def lost(self) -> int:
        """Missing transitions that no "… and N more" can account for."""
        return max(0, self.missing - self.unlisted)

    def summary(self) -> dict[str, int]:
        return {"messages": self.messages, "listed": self.listed, "unlisted": self.unlisted, "missing": self.missing,
                "lost": self.lost, "spurious": self.spurious}


def apprise_check(receiver: Receiver, expected: set[tuple[str, str]]) -> AppriseVerdict:
    """Which expected (run_id, type) transitions the apprise sink's messages name: a single event's message names
    its run, a group's one line per run and "… and N more" for the rest (``type`` from Apprise's notify_type)."""
    verdict = AppriseVerdict()
    named: set[tuple[str, str]] = set()
    for request in receiver.accepted():
        try:
            message = json.loads(request.body)
        except ValueError:
            continue
        verdict.messages += 1
        event_type = _APPRISE_TYPES.get(message.get("type"), message.get("type"))
        runs = set(_RUN_ID.findall(str(message.get("message", ""))))
        named |= {(run, event_type) for run in runs}
        more = _MORE.search(str(message.get("message", "")))
        if more is not None and _GROUP_TITLE.match(str(message.get("title", ""))):
            verdict.unlisted += int(more.group(1))
    verdict.listed = len(named & expected)
    verdict.missing = len(expected - named)
    verdict.spurious = len({n for n in named if not n[0].startswith("run_test_")} - expected)
    return verdict


def unexplained_duplicates(hook: Receiver, deaths: Sequence[float], tolerance: float = 0.1,
                           window: float = 2.0, in_flight: int = 8 + 256) -> list[str]:
    """Event ids the receiver accepted twice where the first copy can NOT have been in flight at a death.

    The webhook worker has up to ``concurrency`` (8) sends in flight and up to ``MAX_UNCOMMITTED`` (256) sent
    deliveries whose outcome awaits the group commit; only those are re-sent after a SIGKILL. So a duplicate is
    explained when its first copy arrived shortly before a death (within ``window`` seconds: a commit takes
    milliseconds) and at most ``in_flight`` other requests were accepted between it and the death.
    ``tolerance``: a request written just before the SIGKILL may be read by the receiver a little after it (a
    restarted watcher needs far longer than that before it sends anything)."""
    accepted = sorted((r.at, r.headers.get("webhook-id", "")) for r in hook.accepted())
    counts = Counter(i for _, i in accepted)
    out = []
    for event_id, n in counts.items():
        if n < 2:
            continue
        first = next(at for at, i in accepted if i == event_id)
        death = next((d + tolerance for d in deaths if d + tolerance >= first), None)
        if death is None or death - first > window + tolerance:
            out.append(event_id)
            continue
        later = [at for at, _ in accepted if first < at <= death]
        if len(later) > in_flight:
            out.append(event_id)
    return out


async def operate(proc: WatcherProcess, workdir: Path, config_args: dict[str, Any], rng: random.Random,
                  report: CrashReport) -> None:
    """A reload and an admin command next to the running daemon (once it swept since its start); problems go to
    ``report.ops_problems``."""
    await proc.wait_for_log('"sweep.finished"', timeout=30, after=proc.started_at_offset)
    variant = report.reloads % 3
    hook = str(config_args["webhook_url"])
    if variant == 2:  # an unparseable file: rejected, the running config kept; then the good file back
        proc.config.write_text(UNPARSEABLE)
        await proc.reload(REJECTED)
        write_config(workdir, **config_args)
    else:  # the same config, or the webhook's URL changed (its sink restarts)
        if variant == 1:
            config_args["webhook_url"] = hook[:-2] if hook.endswith("/b") else f"{hook}/b"
        write_config(workdir, **config_args)
        await proc.reload(RELOADED)
    report.reloads += 1
    commands = pick(rng, 1)
    report.admin_commands += len(commands)
    report.ops_problems += harm(proc, "a reload")
    report.ops_problems += await admin_round(proc.config, [proc], commands, logs=proc.logs)


async def crash_loop(
    workdir: Path,
    *,
    rounds: int,
    seed: int = 1,
    modes: Sequence[str] = MODES,
    probability: float = 0.3,
    runs_per_round: tuple[int, int] = (3, 10),
    settle_timeout: float = 60.0,
    progress: Callable[[int, CrashReport], None] | None = None,
    operations: bool = False,
    apprise: bool = False,
) -> CrashReport:
    """Run ``rounds`` crash rounds in ``workdir`` and check the outcome (see the module docstring)."""
    started = time.monotonic()
    rng = random.Random(seed)
    canaries = Canaries.fresh()
    report = CrashReport()
    deaths: list[float] = []
    sim = Simulator(api_key=canaries.api_key, seed=seed, pending_ms=(10, 200), running_ms=(50, 800))
    events_file = workdir / "events.jsonl"
    async with SimServer(sim) as api, Receiver(delay=lambda: rng.uniform(0.0, 0.03),
                                                signing_secret=canaries.signing_secret) as hook, \
            Receiver(delay=lambda: rng.uniform(0.0, 0.03)) as notes:
        config_args: dict[str, Any] = dict(
            base_url=api.base_url, api_key=canaries.api_key, events_file=events_file,
            webhook_url=f"{hook.origin}/hooks/{canaries.url_token}", signing_secret=canaries.signing_secret,
        )
        if apprise:  # Apprise's json:// to the notes receiver; the URL canary in its path
            json_url = notes.origin.replace("http://", "json://", 1) + f"/notes/{canaries.url_token}"
            config_args["extra_sinks"] = (f'\n[[sinks]]\nname = "notes"\ntype = "apprise"\nurls = ["{json_url}"]\n'
                                          "timeout = 2\n")
        cfg = write_config(workdir, **config_args)
        proc = WatcherProcess(cfg, workdir / "logs")
        await proc.start()
        await proc.wait_for_log('"sweep.finished"')  # first start recorded: every run from now on is new
        created: list[str] = []

        async def died(cause: str) -> None:
            deaths.append(time.monotonic())
            report.by_mode[cause] += 1

        mode = "random"
        for number in range(rounds):
            if mode == "random" and operations and proc.alive():
                # First the operations, then this round's runs: their transitions are committed (and sent) after
                # the reload and the admin command, which is when a detached state loses them at the kill.
                await operate(proc, workdir, config_args, rng, report)
            created += sim.create_runs(rng.randint(*runs_per_round), pending_ms=(10, 200), running_ms=(50, 800))
            if mode == "random":
                await asyncio.sleep(rng.uniform(0.1, 1.5))
                if proc.alive():
                    await proc.kill()
                    await died("random")
                else:  # it should not die on its own without a crash point
                    await died(f"unexpected exit {proc.proc.returncode}")
            else:
                # With probability 1 the armed point fires at its first chance (there is always work for it): wait
                # for it however slow the machine is. Below 1 it may never fire: a random kill after a while.
                code = await proc.wait(4.0 if probability < 1 else settle_timeout)
                if code is None:  # the armed point did not fire: a random kill instead
                    await proc.kill()
                    await died("random")
                else:
                    await died(mode if code == -9 else f"unexpected exit {code}")
            created += sim.create_runs(rng.randint(0, 4), pending_ms=(10, 100), running_ms=(20, 300))
            await asyncio.sleep(rng.uniform(0.0, 0.4))  # some finish while the watcher is down: late events
            mode = modes[(number + 1) % len(modes)]
            points = () if mode == "random" else (mode,)
            await proc.start(crash_points=points, crash_probability=probability)
            report.rounds = number + 1
            if progress is not None:
                progress(number + 1, report)
        # The last start may have a crash point armed: replace it with a clean watcher that drains everything.
        if proc.alive():
            await proc.kill()
            await died("random")
        await proc.start()
        report.created = len(created)
        deadline = time.monotonic() + settle_timeout
        while time.monotonic() < deadline:
            truth = sim.transitions()
            verdict = check(truth=truth, created=created, events_file=events_file, webhook=hook)
            finished = {t["run_id"] for t in truth} >= set(created)
            notes_lost = apprise_check(notes, expected_transitions(truth, created)).lost if apprise else 0
            if finished and not verdict.lost["journal"] and not verdict.lost["hook"] and not notes_lost:
                break
            if not proc.alive():
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.5)  # the last deliveries are recorded after the receiver's answer
        report.exit_code = await proc.terminate()
        report.verdict = check(truth=sim.transitions(), created=created, events_file=events_file, webhook=hook)
        report.unexplained_duplicates = unexplained_duplicates(hook, deaths)
        report.late_events = sum(1 for r in hook.accepted() if (r.event or {}).get("data", {}).get("late"))
        if apprise:
            report.apprise = apprise_check(notes, expected_transitions(sim.transitions(), created))
    report.starts = proc.starts
    report.deaths = len(deaths)
    with Store.open(store_path(workdir / "state"), create=False) as store:
        report.integrity = store.integrity_check()
        report.pending_after = sum(store.pending_counts().values())
    report.leaks = find_leaks([workdir / "logs", events_file, workdir / "state"], canaries.needles())
    report.seconds = time.monotonic() - started
    return report

