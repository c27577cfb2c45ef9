"""Several real `flora-watcher run` processes on one PostgreSQL database, the simulator and a webhook receiver:
the failover test and scripts/crash_loop_pg.py share this.

Each instance posts to its own receiver path (``/hooks/<name>``), so the receiver knows which instance sent
what: a duplicate is explained only when the instance that sent the first copy was killed right after (the
send was cut before its outcome was recorded).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from tests.reliability.harness import (
    CliResult,
    Receiver,
    SimServer,
    WatcherProcess,
    compare,
    expected_transitions,
    http_get,
    run_cli,
)
from tests.reliability.harness import Verdict as _Verdict
from watcher.simulator.app import Simulator

API_KEY = "sk_test_multi_0123456789"
SECRET = "whsec_" + "bXVsdGktaW5zdGFuY2UtdGVzdC1zZWNyZXQ="  # base64 of a fixed test key
LIST_ROUTE = "/api/v1/technique-runs"


def write_config(directory: Path, name: str, *, base_url: str, hook_url: str, store_url: str, lease: float,
                 interval: float, hook_dir: str = "/hooks", listen: str | None = None, extra_sinks: str = "") -> Path:
    """Instance ``name``'s config: its webhook posts to ``{hook_url}{hook_dir}/{name}`` (the last path segment
    names the sender); ``listen``: ``[server] listen`` (port 0: any free port); ``extra_sinks``: more
    ``[[sinks]]`` tables. Written again in place, it is what a SIGHUP reloads."""
    directory.mkdir(parents=True, exist_ok=True)
    text = f"""
[api]
base_url = "{base_url}"
api_key = "{API_KEY}"
max_rps = 200
timeout = 5

[watch]
interval = {interval}
state_dir = "{directory / 'state'}"
poll_max_interval = 1

[store]
url = "{store_url}"
lease = {lease}

[delivery]
backoff_initial = 0.2
backoff_max = 1
shutdown_grace = 2

[[sinks]]
name = "hook"
type = "webhook"
url = "{hook_url}{hook_dir}/{name}"
secret = "{SECRET}"
timeout = 2
"""
    if listen:
        text += f'\n[server]\nlisten = "{listen}"\n'
    text += extra_sinks
    path = directory / "flora-watcher.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


@dataclass
class Instance:
    name: str
    proc: WatcherProcess
    deaths: list[float] = field(default_factory=list)  # time.monotonic() of each SIGKILL
    starts: list[float] = field(default_factory=list)  # time.monotonic() before each process start
    config_args: dict[str, Any] = field(default_factory=dict)  # what write_config was given

    def rewrite_config(self, **changes: Any) -> Path:
        """Write this instance's config again with ``changes`` to write_config's arguments (then SIGHUP)."""
        args = {**self.config_args, **changes}
        return write_config(args.pop("directory"), self.name, **args)

    async def readyz(self) -> tuple[int, str]:
        """(status, body) of this instance's ``/readyz`` (needs ``listen``)."""
        return await http_get(f"{await self.proc.server_url()}/readyz")

    def assert_alive(self) -> None:
        """AssertionError with the exit status and the last log lines when this instance's process ended."""
        proc = self.proc.proc
        if proc is not None and proc.returncode is not None:
            tail = self.proc.stderr_path.read_text(errors="replace").splitlines()[-3:]
            raise AssertionError(f"instance {self.name} exited {proc.returncode}: {tail}")

    async def kill(self) -> None:
        self.deaths.append(time.monotonic())
        await self.proc.kill()

    async def start(self) -> None:
        """Start the process and wait until it runs (its lease role ticks), so a takeover can count on it."""
        offset = self.proc.log_size()
        self.starts.append(time.monotonic())
        await self.proc.start()
        await self.proc.wait_for_log('"daemon.started"', timeout=60, after=offset)

    async def metric(self, name: str) -> dict[str, float]:
        """This process's own ``/metrics`` (needs ``[server] listen``): the samples of counter ``name`` by their
        labels (``'outcome="ok",route="list"'``)."""
        url = await self.proc.server_url()
        async with aiohttp.ClientSession() as session, session.get(f"{url.rstrip('/')}/metrics") as resp:
            text = await resp.text()
        prefix = f"flora_watcher_{name}_total{{"
        return {line[len(prefix):].rsplit("} ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith(prefix)}

    async def api_requests(self) -> dict[str, int]:
        """FLORA API requests this process made since it started, by route (``list``, ``get_run`` …)."""
        counts: Counter[str] = Counter()
        for labels, value in (await self.metric("api_requests")).items():
            counts[labels.split('route="', 1)[1].split('"', 1)[0]] += int(value)
        return {route: n for route, n in counts.items() if n}

    async def wait_for_sweeps(self, count: int, timeout: float = 60) -> None:
        """Wait until the process finished ``count`` more sweeps (its own counter): a liveness bound only."""
        async def done() -> int:
            return int(sum((await self.metric("sweeps")).values()))

        target = await done() + count
        deadline = time.monotonic() + timeout
        while (n := await done()) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {n - target + count} of {count} sweeps within {timeout}s")
            await asyncio.sleep(0.05)


@dataclass
class Fleet:
    workdir: Path
    store_url: str
    sim: Simulator
    api: SimServer
    hook: Receiver
    instances: dict[str, Instance]
    lease: float
    interval: float
    created: list[str] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)  # (down, back) of the database, monotonic

    def create(self, count: int, rng: random.Random) -> None:
        self.created += self.sim.create_runs(count, pending_ms=(10, 100), running_ms=(100, 800))

    def sweeper(self) -> tuple[str | None, int | None, bool]:
        """(instance name, token, lease valid) of the current sweeper, from the database."""
        with psycopg.connect(self.store_url, autocommit=True) as conn:
            try:
                row = conn.execute(
                    "SELECT holder, token, expires_ms >= (extract(epoch from clock_timestamp()) * 1000)::bigint"
                    " FROM leases").fetchone()
            except psycopg.errors.UndefinedTable:  # no instance has migrated the schema yet
                return None, None, False
        if row is None:
            return None, None, False
        pid = int(row[0].split(":")[1])
        for inst in self.instances.values():
            if inst.proc.pid == pid:
                return inst.name, row[1], row[2]
        return f"pid {pid}", row[1], row[2]

    async def wait_sweeper(self, *, other_than: str | None = None, timeout: float = 60) -> tuple[str, float]:
        """Wait until a live instance (not ``other_than``) holds a valid lease; (its name, seconds waited)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            name, _, valid = self.sweeper()
            if valid and name in self.instances and name != other_than and self.instances[name].proc.alive():
                return name, time.monotonic() - started
            await asyncio.sleep(0.02)
        raise AssertionError(f"no sweeper other than {other_than} within {timeout}s")

    async def admin(self, *args: str, via: str | None = None) -> CliResult:
        """An admin command with instance ``via``'s config (default: the first instance's)."""
        inst = self.instances[via] if via else next(iter(self.instances.values()))
        return await run_cli(inst.proc.config, *args, logs=inst.proc.logs)

    def ended(self) -> set[tuple[str, str]]:
        """(run_id, type) of every terminal transition of the created runs that happened by now (ground truth)."""
        return expected_transitions(self.sim.transitions(), self.created)

    def delivered(self) -> set[tuple[str, str]]:
        return {(r.event["data"]["run_id"], r.event["type"]) for r in self.hook.accepted()
                if r.event is not None and isinstance(r.event.get("data"), dict)}

    async def delivered_within(self, wanted: set[tuple[str, str]], timeout: float) -> float:
        """Seconds until every transition in ``wanted`` reached the receiver; AssertionError after ``timeout``."""
        started = time.monotonic()
        while not wanted <= self.delivered():
            if time.monotonic() - started > timeout:
                missing = sorted(wanted - self.delivered())
                raise AssertionError(f"{len(missing)} of {len(wanted)} transitions not delivered within {timeout}s, "
                                     f"e.g. {missing[:3]}")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def ready(self, inst: Instance, timeout: float = 60.0) -> str:
        """Wait until ``inst``'s /readyz answers 200; its body. AssertionError naming the last answer otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            inst.assert_alive()
            status, body = await inst.readyz()
            if status == 200:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"instance {inst.name} not ready within {timeout}s: /readyz {status} "
                                     f"{body.strip()!r}")
            await asyncio.sleep(0.1)

    async def roles_ready(self, timeout: float = 60.0) -> None:
        """Wait until every running instance is ready and its /readyz names the role the database gives it: the
        sweeper's and the standby's (issue 24 item 5: a standby that heartbeats and delivers is ready). The two
        views may differ for a moment around a takeover, so both are read again until they agree."""
        deadline = time.monotonic() + timeout
        while True:
            sweeper, _, valid = self.sweeper()
            answers = {}
            for inst in self.instances.values():
                if inst.proc.alive():
                    answers[inst.name] = await inst.readyz()
                else:
                    inst.assert_alive()  # a crash is a failure; a process not started yet is waited for below
            wrong = {}
            for name, (status, body) in answers.items():
                role, other = ("sweeper", "standby") if name == sweeper else ("standby", "sweeper")
                if status != 200 or role not in body or other in body or not valid:
                    wrong[name] = f"the {role}: /readyz {status} {body.strip()!r}"
            if not wrong:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready in its role within {timeout}s: {wrong}")
            await asyncio.sleep(0.1)

    async def not_ready(self, inst: Instance, says: Callable[[str], bool] = lambda body: True,
                        timeout: float = 60.0) -> str:
        """Wait until ``inst``'s /readyz answers 503 with a reason that ``says`` accepts; that reason. (The first
        503 of an outage may name a symptom — a lease heartbeat gone stale while the database connection still
        times out — before the cause.)"""
        deadline = time.monotonic() + timeout
        while True:
            inst.assert_alive()
            status, body = await inst.readyz()
            if status == 503 and says(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"instance {inst.name} answers /readyz {status} {body.strip()!r} "
                                     f"{timeout}s into the outage")
            await asyncio.sleep(0.1)

    def list_requests(self) -> int:
        return sum(1 for r in self.api.requests if r.path == LIST_ROUTE)

    def transitions_done(self) -> bool:
        expected = expected_transitions(self.sim.transitions(), self.created)
        got = {(r.event["data"]["run_id"], r.event["type"]) for r in self.hook.accepted() if r.event}
        return len(self.sim.transitions()) >= len(self.created) and expected <= got

    async def settle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.transitions_done():
                return
            await asyncio.sleep(0.1)

    def verdict(self) -> Verdict:
        expected = expected_transitions(self.sim.transitions(), self.created)
        v = Verdict(expected=len(expected))
        accepted = self.hook.accepted()
        compare("hook", [r.event for r in accepted if r.event is not None], expected, v)
        v.id_conflicts += [("webhook-id", r.headers.get("webhook-id", "")) for r in accepted
                           if r.event is not None and r.headers.get("webhook-id") != r.event["id"]]
        v.bad_signatures = sum(r.signature_ok is False for r in self.hook.received)
        v.unexplained = unexplained_duplicates(self.hook, {n: i.deaths for n, i in self.instances.items()},
                                               starts={n: i.starts for n, i in self.instances.items()},
                                               retried=self.retried, outages=self.outages)
        v.unexplained = [f"{what} [{self.log_lines(what.split()[0])}]" for what in v.unexplained]
        return v

    def retried(self, name: str, event_id: str) -> bool:
        """Whether instance ``name`` logged a retry of ``event_id`` (its attempt failed as the sender saw it)."""
        inst = self.instances.get(name)
        if inst is None or not inst.proc.stderr_path.exists():
            return False
        return any(event_id in line and '"delivery.retry_scheduled"' in line
                   for line in inst.proc.stderr_path.read_text(errors="replace").splitlines())

    def log_lines(self, needle: str, limit: int = 12) -> str:
        """The instances' log lines that mention ``needle`` (an event id): what each sender saw of it."""
        out = []
        for name, inst in self.instances.items():
            for path in (inst.proc.stderr_path, inst.proc.stdout_path):
                if path.exists():
                    out += [f"{name}: {line.strip()[:300]}" for line in path.read_text(errors="replace").splitlines()
                            if needle in line]
        return " | ".join(out[:limit]) or "no log line names it"


@dataclass
class Verdict(_Verdict):
    unexplained: list[str] = field(default_factory=list)  # duplicates no kill explains

    @property
    def problems(self) -> list[str]:
        out = list(super().problems)
        if self.unexplained:
            out.append(f"hook: {len(self.unexplained)} duplicates no kill explains, e.g. {self.unexplained[:3]}")
        return out


def unexplained_duplicates(hook: Receiver, deaths: dict[str, list[float]], window: float = 3.0,
                           starts: dict[str, list[float]] | None = None,
                           retried: Callable[[str, str], bool] | None = None,
                           outages: list[tuple[float, float]] | None = None) -> list[str]:
    """Event ids accepted twice where no kill of the instance that sent the first copy explains the second.

    Sends in flight at a SIGKILL are the only legitimate re-sends (a live instance records every outcome, and
    a live claim keeps the other instance off). The first copy is explained by a kill of its sender

    * within ``window`` seconds after the receiver took it (the sink's timeout plus slack: sent, outcome not
      yet committed), or
    * before the receiver took it, when that instance was not started again in between: a request a killed
      process wrote is still read from the socket afterwards (the receiver shares its event loop with the
      test, so its timestamp can trail the kill), and only the killed process can have sent it.

    And a first copy whose sender logged a retry of that event (``retried(sender, event_id)``: the attempt
    failed as the sender saw it, e.g. a timeout on a busy machine while the receiver had taken it) is the
    re-send at-least-once promises, not a lost claim.

    ``outages``: (down, back) times of the database. A first copy the receiver took from ``window`` seconds before
    the database went away until it was back was a send whose outcome could not be recorded: in flight too.
    """
    accepted = sorted((r.at, r.path.rsplit("/", 1)[-1], r.headers.get("webhook-id", "")) for r in hook.accepted())
    counts = Counter(i for _, _, i in accepted)
    starts = starts or {}
    out = []
    for event_id, n in counts.items():
        if n < 2:
            continue
        first_at, sender, _ = next(a for a in accepted if a[2] == event_id)

        def explains(death: float, sender: str = sender, first_at: float = first_at) -> bool:
            if death >= first_at:
                return death <= first_at + window
            restarted = [s for s in starts.get(sender, []) if s >= death]
            return not restarted or first_at < min(restarted)

        in_outage = any(down - window <= first_at <= back for down, back in outages or [])
        if not any(explains(d) for d in deaths.get(sender, [])) and not (retried and retried(sender, event_id)) \
                and not in_outage:
            copies = ", ".join(f"{who}@{at:.2f}" for at, who, i in accepted if i == event_id)
            kills = "; ".join(f"{who} killed at {', '.join(f'{d:.2f}' for d in ds)}"
                              for who, ds in deaths.items() if ds)
            away = ", ".join(f"{down:.2f}-{back:.2f}" for down, back in outages or [])
            out.append(f"{event_id} ({copies}; {kills or 'no kills'}"
                       + (f"; database away {away}" if away else "") + ")")
    return out


class fleet:
    """Simulator + receiver + ``names`` instances (not started) on the database at ``store_url``."""

    def __init__(self, workdir: Path, store_url: str, names: tuple[str, ...] = ("a", "b"), *, lease: float = 2.0,
                 interval: float = 0.2, seed: int = 1, listen: str | None = None) -> None:
        self.args = (workdir, store_url, names, lease, interval, seed, listen)
        self._stack: list[Any] = []

    async def __aenter__(self) -> Fleet:
        workdir, store_url, names, lease, interval, seed, listen = self.args
        sim = Simulator(api_key=API_KEY, seed=seed)
        api = await SimServer(sim).start()
        hook = await Receiver(signing_secret=SECRET).start()
        instances = {}
        for name in names:
            args: dict[str, Any] = dict(directory=workdir / name, base_url=api.base_url, hook_url=hook.origin,
                                        store_url=store_url, lease=lease, interval=interval, listen=listen)
            cfg = write_config(workdir / name, name, **{k: v for k, v in args.items() if k != "directory"})
            instances[name] = Instance(name, WatcherProcess(cfg, workdir / name / "logs"), config_args=args)
        self.the_fleet = Fleet(workdir, store_url, sim, api, hook, instances, lease, interval)
        return self.the_fleet

    async def __aexit__(self, *exc: object) -> None:
        f = self.the_fleet
        for inst in f.instances.values():
            await inst.proc.kill()
        await f.hook.close()
        await f.api.close()
