"""Reliability harness: the real ``flora-watcher run`` as a subprocess, the simulator and local receivers on
loopback, and the checks (Jepsen-style: compare what the receivers got with the simulator's ground truth).

Used by the CI-sized tests in ``tests/reliability/`` and by the long runs in ``scripts/`` (docs/reliability.md).
Everything binds 127.0.0.1 port 0; nothing here reaches beyond loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from watcher.simulator.app import Simulator

REPO = Path(__file__).resolve().parents[2]
TERMINAL_TYPES = {"completed": "run.completed", "failed": "run.failed"}


# ------------------------------------------------------------------------------------------- canaries


@dataclass(frozen=True)
class Canaries:
    """Secrets that must never show up anywhere but where they are used: the API key (only in the Authorization
    header towards the API origin), the webhook URL's token path and the signing secret."""

    api_key: str
    url_token: str
    signing_secret: str  # whsec_<base64>

    @classmethod
    def fresh(cls) -> Canaries:
        raw = b"CANARYsig" + secrets.token_bytes(24)
        return cls(
            api_key=f"sk_live_CANARYkey{secrets.token_hex(12)}",
            url_token=f"CANARYurl{secrets.token_hex(12)}",
            signing_secret="whsec_" + base64.b64encode(raw).decode(),
        )

    def needles(self) -> dict[str, bytes]:
        """Every form a leak could take: verbatim, percent-encoded, the signing key's base64 body and bytes."""
        body = self.signing_secret.removeprefix("whsec_")
        forms = {
            "api_key": self.api_key,
            "api_key (percent-encoded)": quote(self.api_key, safe=""),
            "webhook url token": self.url_token,
            "signing secret": self.signing_secret,
            "signing secret (base64 body)": body,
        }
        out = {name: value.encode() for name, value in forms.items()}
        out["signing secret (raw key bytes)"] = base64.b64decode(body)
        return out


def find_leaks(paths: Iterable[Path], needles: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """(file, needle name) for every needle found in any of ``paths`` (files, or directories walked)."""
    leaks = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for path in files:
            data = path.read_bytes()
            leaks += [(str(path), name) for name, needle in needles.items() if needle in data]
    return leaks


# ------------------------------------------------------------------------------------------- servers


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on 127.0.0.1 (a port the OS picks); returns the runner and ``http://127.0.0.1:PORT``."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@dataclass(frozen=True, slots=True)
class ApiRequest:
    at: float  # time.monotonic() when the request arrived
    method: str
    path: str
    status: int  # 499 = the simulator dropped the connection
    retry_after: str | None


class SimServer:
    """The simulator's app with an outer middleware that records every API request (arrival time, status), so
    checks can count requests per second and see what followed a 429. Adds one route, ``/api/v1/redirect-out/
    {run_id}``, that answers 302 to ``foreign_url`` (a poll_url that redirects to a foreign origin)."""

    def __init__(self, sim: Simulator, *, foreign_url: str | None = None) -> None:
        self.sim = sim
        self.foreign_url = foreign_url
        self.requests: list[ApiRequest] = []
        self.runner: web.AppRunner | None = None
        self.origin = ""

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/v1"

    async def start(self) -> SimServer:
        app = self.sim.make_app()
        app.middlewares.insert(0, self._record)
        app.router.add_get("/api/v1/redirect-out/{run_id}", self._redirect_out)
        self.runner, self.origin = await serve(app)
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        at = time.monotonic()
        response = await handler(request)
        if request.path.startswith("/api/"):  # appended when answered: sort by ``at`` for arrival order
            self.requests.append(ApiRequest(at, request.method, request.path, response.status,
                                            response.headers.get("Retry-After")))
        return response

    async def _redirect_out(self, request: web.Request) -> web.StreamResponse:
        target = f"{self.foreign_url or 'http://127.0.0.1:9'}/api/v1/runs/{request.match_info['run_id']}"
        return web.Response(status=302, headers={"Location": target})  # returned: the simulator maps raised ones


@dataclass(frozen=True, slots=True)
class Received:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: it hung or reset the connection)
    signature_ok: bool | None = None  # Standard Webhooks verification on arrival (None: no secret to check)

    @property
    def event(self) -> dict[str, Any] | None:
        try:
            obj = json.loads(self.body)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None


class Receiver:
    """An HTTP receiver on loopback that records every request. ``mode`` decides the answer: ``ok`` (204),
    ``hang`` (never answers in time), ``reset`` (drops the connection), or an HTTP status such as 429 / 500 /
    410 (429 carries ``Retry-After: retry_after``); a callable picks one per request. ``delay`` (seconds, or a
    callable) is waited before answering — it widens the window in which a SIGKILL lands mid-send. ``by_path``
    overrides ``mode`` for requests to one path (``{"/hooks/old": 410}``: that URL is gone, another one works)."""

    def __init__(self, *, mode: str | int | Callable[[], str | int] = "ok",
                 delay: float | Callable[[], float] = 0.0, retry_after: int = 1, hang_s: float = 30.0,
                 signing_secret: str | None = None) -> None:
        self.mode: str | int | Callable[[], str | int] = mode
        self.by_path: dict[str, str | int] = {}
        self.signing_secret = signing_secret
        self.delay = delay
        self.retry_after = retry_after
        self.hang_s = hang_s
        self._hung: list[web.Request] = []  # requests held by ``hang`` now
        self._release = asyncio.Event()
        self.received: list[Received] = []
        self.runner: web.AppRunner | None = None
        self.origin = ""

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=4 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner, self.origin = await serve(app)
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def hung_open(self) -> int:
        """How many ``hang`` requests are held now with their sender still connected (still waiting for our
        answer): 0 once the sender gave up on them (its timeout) or they were released."""
        return sum(1 for r in self._hung if r.transport is not None and not r.transport.is_closing())

    def release_hung(self) -> None:
        """End the ``hang`` requests held now by dropping their connections (the sender sees a reset)."""
        self._release.set()
        self._release = asyncio.Event()

    def accepted(self) -> list[Received]:
        """Requests answered 2xx: what the receiver took as delivered."""
        return [r for r in self.received if 200 <= r.status < 300]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        at = time.monotonic()  # arrival: a SIGKILL after this may leave the sender without our answer
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        # Verified on arrival, as a receiver does: the timestamp must be fresh (5 minutes' tolerance).
        verified = verify_standard_signature(body, headers, self.signing_secret) if self.signing_secret else None
        delay = self.delay() if callable(self.delay) else self.delay
        if delay:
            await asyncio.sleep(delay)
        mode = self.by_path.get(request.path) or (self.mode() if callable(self.mode) else self.mode)
        if mode == "hang":
            self.received.append(Received(at, request.path, headers, body, 0, verified))
            self._hung.append(request)
            try:
                await asyncio.wait_for(self._release.wait(), self.hang_s)
            except TimeoutError:
                return web.Response(status=504)
            finally:
                self._hung.remove(request)
            if request.transport is not None:  # released: the connection is dropped, as `reset` does
                request.transport.abort()
            return web.Response(status=499)
        if mode == "reset":
            self.received.append(Received(at, request.path, headers, body, 0, verified))
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=499)
        status = 204 if mode == "ok" else int(mode)
        self.received.append(Received(at, request.path, headers, body, status, verified))
        extra = {"Retry-After": str(self.retry_after)} if status == 429 else None
        return web.Response(status=status, headers=extra)


class ForeignOrigin(Receiver):
    """Another origin on loopback that must never see the API key: it records everything it gets."""


# ------------------------------------------------------------------------------------------- the watcher


def write_config(
    directory: Path,
    *,
    base_url: str,
    api_key: str,
    events_file: Path,
    webhook_url: str | None = None,
    signing_secret: str | None = None,
    interval: float = 0.2,
    max_rps: float = 200,
    timeout: float = 5,
    poll_max_interval: float = 1,
    concurrency: int = 8,
    sink_timeout: float = 2,
    backoff_initial: float = 0.2,
    backoff_max: float = 1,
    shutdown_grace: float = 2,
    listen: str | None = None,
    resync_interval: float | None = None,
    store_url: str | None = None,
    lease: float = 2.0,
    extra_sinks: str = "",
) -> Path:
    """A config for the harness: a file sink always, a webhook sink when ``webhook_url`` is given, then
    ``extra_sinks`` (TOML ``[[sinks]]`` tables). ``store_url``: the state in PostgreSQL instead of state_dir.
    Written again in place, it is what a SIGHUP reloads."""
    watch_extra = f"resync_interval = {resync_interval}\n" if resync_interval is not None else ""
    text = f"""
[api]
base_url = "{base_url}"
api_key = "{api_key}"
max_rps = {max_rps}
timeout = {timeout}

[watch]
interval = {interval}
concurrency = {concurrency}
state_dir = "{directory / 'state'}"
poll_max_interval = {poll_max_interval}
{watch_extra}
[delivery]
backoff_initial = {backoff_initial}
backoff_max = {backoff_max}
shutdown_grace = {shutdown_grace}

[[sinks]]
name = "journal"
type = "file"
path = "{events_file}"
"""
    if listen:
        text += f'\n[server]\nlisten = "{listen}"\n'
    if store_url:
        text += f'\n[store]\nurl = "{store_url}"\nlease = {lease}\n'
    if webhook_url:
        text += f'\n[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{webhook_url}"\ntimeout = {sink_timeout}\n'
        if signing_secret:
            text += f'secret = "{signing_secret}"\n'
    text += extra_sinks
    cfg = directory / "flora-watcher.toml"
    cfg.write_text(text)
    os.chmod(cfg, 0o600)
    return cfg


class WatcherProcess:
    """``python -m watcher --log-format json run -c CONFIG`` with its stdout and stderr appended to files.
    ``crash_points``/``crash_probability`` set the test-only crash points (watcher/crashpoints.py)."""

    def __init__(self, config: Path, logs: Path, *, log_level: str = "info") -> None:
        self.config = config
        self.logs = logs
        self.log_level = log_level
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.deaths = 0  # exits by SIGKILL, ours or a crash point's
        self.started_at_offset = 0  # the log's size when the current process started

    @property
    def stdout_path(self) -> Path:
        return self.logs / "watcher.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.logs / "watcher.stderr"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, *, crash_points: Iterable[str] = (), crash_probability: float = 1.0,
                    args: Iterable[str] = ()) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLORA_", "NOTIFY_SOCKET"))}
        env["PYTHONUNBUFFERED"] = "1"
        points = ",".join(crash_points)
        if points:
            env["FLORA_WATCHER_CRASH_POINTS"] = points
            env["FLORA_WATCHER_CRASH_PROBABILITY"] = str(crash_probability)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started_at_offset = self.log_size()
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "watcher", "--log-format", "json", "--log-level", self.log_level,
                "run", "-c", str(self.config), *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=str(self.logs),
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait(self, timeout: float) -> int | None:
        """The exit status within ``timeout`` seconds, else None (still running)."""
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return None
        if code == -signal.SIGKILL:
            self.deaths += 1
        return code

    async def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            await self.wait(30)

    async def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for a clean stop; SIGKILL (and AssertionError) when it does not come."""
        assert self.proc is not None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        code = await self.wait(timeout)
        if code is None:
            await self.kill()
            raise AssertionError(f"the watcher did not stop within {timeout}s of SIGTERM")
        return code

    async def wait_for_log(self, needle: str, timeout: float = 60, *, after: int = 0) -> None:
        """Wait until the JSON log (stderr) holds ``needle`` past byte offset ``after``. ``timeout`` is a liveness
        bound only (a Python process and its first sweep can take 15 s to start with both cores busy)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stderr_path.exists():
                with open(self.stderr_path, "rb") as f:
                    f.seek(after)
                    if needle.encode() in f.read():
                        return
            if not self.alive():
                raise AssertionError(f"the watcher exited ({self.proc.returncode}) before logging {needle!r}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"the watcher did not log {needle!r} within {timeout}s")

    def log_size(self) -> int:
        return self.stderr_path.stat().st_size if self.stderr_path.exists() else 0

    async def reload(self, expect: str = '"config.reloaded"', timeout: float = 60) -> None:
        """SIGHUP, then wait for the daemon's answer in its log (``"config.reload_rejected"`` for a bad config)."""
        assert self.proc is not None and self.alive(), "reload of a watcher that is not running"
        offset = self.log_size()
        self.proc.send_signal(signal.SIGHUP)
        await self.wait_for_log(expect, timeout, after=offset)

    async def server_url(self, timeout: float = 60) -> str:
        """``[server] listen`` with port 0: the address the current process bound (its ``server.listening`` line)."""
        await self.wait_for_log('"server.listening"', timeout, after=self.started_at_offset)
        with open(self.stderr_path, "rb") as f:
            f.seek(self.started_at_offset)
            lines = f.read().splitlines()
        for line in lines:
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict) and obj.get("event") == "server.listening":
                    return str(obj["url"])
        raise AssertionError("server.listening has no url")

    def deleted_state_files(self) -> list[str]:
        """The state store's files this process holds open although they were deleted (``/proc/PID/fd``): a
        ``state.sqlite3-wal``/``-shm`` there means another process checkpointed and removed them under it (its
        POSIX locks were dropped), and everything it writes from then on is lost at the next kill."""
        return deleted_files(self.pid, "state.sqlite3") if self.alive() and self.pid else []

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON log line the watcher wrote so far."""
        out = []
        if self.stderr_path.exists():
            for line in self.stderr_path.read_bytes().splitlines():
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict):
                        out.append(obj)
        return out


def deleted_files(pid: int, needle: str) -> list[str]:
    """Targets of ``/proc/PID/fd`` that name ``needle`` and were deleted (``… (deleted)``)."""
    out = []
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if needle in target and target.endswith(" (deleted)"):
                out.append(target)
    return out


async def http_get(url: str, timeout: float = 30) -> tuple[int, str]:
    """(status, body) of a GET; (0, the error) when nothing answered (within ``timeout``: a liveness bound, a
    busy machine's daemon may take seconds to answer)."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
                session.get(url) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class CliResult:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def one_line_failure(self) -> str | None:
        """None when this is a failure as an operator should see one: a non-zero exit and one line on stderr
        with no traceback; otherwise what is wrong with it."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        if self.code == 0:
            return f"`{' '.join(self.args)}` exited 0"
        if "Traceback" in self.out + self.err:
            return f"`{' '.join(self.args)}` printed a traceback: {self.err[-600:]!r}"
        if len(lines) != 1:
            return f"`{' '.join(self.args)}` printed {len(lines)} lines on stderr, not one: {self.err[-600:]!r}"
        return None


async def run_cli(config: Path, *args: str, logs: Path | None = None, timeout: float = 60,
                  env: Mapping[str, str] | None = None) -> CliResult:
    """``python -m watcher ARGS -c CONFIG`` (an admin command as an operator runs it, next to the daemon); its
    exit status and output. With ``logs``, the output is also kept there (for the leak scan)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLORA_", "NOTIFY_SOCKET"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher", *args, "-c", str(config),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=str(config.parent), env={**base, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"`flora-watcher {' '.join(args)}` did not finish within {timeout}s") from None
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        name = "cli-" + "-".join(a.strip("-").replace("/", "_")[:40] for a in args)
        with open(logs / f"{name}.out", "ab") as f:
            f.write(out + err)
    assert proc.returncode is not None
    return CliResult(tuple(args), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(events, torn lines) of a JSON Lines file; a torn line is one a SIGKILL cut mid-write."""
    if not path.exists():
        return [], 0
    events, torn = [], 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            torn += 1
    return events, torn


# ------------------------------------------------------------------------------------------- the checker


@dataclass
class Verdict:
    """What the receivers got, compared with the simulator's ground truth."""

    expected: int = 0  # terminal transitions of runs created after the first start
    delivered: dict[str, int] = field(default_factory=dict)  # sink → distinct transitions it got
    lost: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # sink → transitions it never got
    spurious: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # events for what did not happen
    duplicates: dict[str, int] = field(default_factory=dict)  # sink → copies beyond the first
    id_conflicts: list[tuple[str, str]] = field(default_factory=list)  # one transition under two event ids
    body_conflicts: list[str] = field(default_factory=list)  # one event id with two different bodies
    synthetic: dict[str, int] = field(default_factory=dict)  # sink → test-sink events it got
    torn_lines: int = 0
    bad_signatures: int = 0
    foreign_auth: int = 0  # requests that reached a foreign origin carrying an Authorization header

    @property
    def problems(self) -> list[str]:
        out = []
        for sink, lost in self.lost.items():
            if lost:
                out.append(f"{sink}: {len(lost)} transitions lost, e.g. {lost[:3]}")
        for sink, extra in self.spurious.items():
            if extra:
                out.append(f"{sink}: {len(extra)} events for transitions that did not happen, e.g. {extra[:3]}")
        if self.duplicates.get("journal"):
            out.append(f"journal: {self.duplicates['journal']} duplicate lines")
        if self.id_conflicts:
            out.append(f"{len(self.id_conflicts)} transitions delivered under two event ids")
        if self.body_conflicts:
            out.append(f"{len(self.body_conflicts)} event ids delivered with two different bodies")
        if self.bad_signatures:
            out.append(f"{self.bad_signatures} webhook requests with an invalid signature")
        if self.foreign_auth:
            out.append(f"{self.foreign_auth} requests carried Authorization to a foreign origin")
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "delivered": self.delivered,
            "lost": {k: len(v) for k, v in self.lost.items()},
            "spurious": {k: len(v) for k, v in self.spurious.items()},
            "duplicates": self.duplicates,
            "id_conflicts": len(self.id_conflicts),
            "body_conflicts": len(self.body_conflicts),
            "torn_lines": self.torn_lines,
            "bad_signatures": self.bad_signatures,
            "foreign_auth": self.foreign_auth,
        }


def expected_transitions(truth: Iterable[Mapping[str, Any]], created: Iterable[str]) -> set[tuple[str, str]]:
    """(run_id, event type) of every terminal transition of the runs in ``created``."""
    wanted = set(created)
    return {(t["run_id"], TERMINAL_TYPES[t["status"]]) for t in truth if t["run_id"] in wanted}


TEST_SINK_RUN_PREFIX = "run_test_"  # `flora-watcher test-sink`'s synthetic events (watcher/commands/test_sink.py)


def compare(sink: str, events: list[dict[str, Any]], expected: set[tuple[str, str]], verdict: Verdict) -> None:
    """Fill ``verdict`` for one sink's received events (every copy, in arrival order). The synthetic events of
    ``test-sink`` are counted apart (``verdict.synthetic``), not judged as transitions."""
    def synthetic(e: dict[str, Any]) -> bool:
        data = e.get("data")
        return isinstance(data, dict) and str(data.get("run_id", "")).startswith(TEST_SINK_RUN_PREFIX)

    verdict.synthetic[sink] = sum(map(synthetic, events))
    events = [e for e in events if not synthetic(e)]
    keys = [(e.get("data", {}).get("run_id"), e.get("type")) for e in events]
    got = set(keys)
    verdict.delivered[sink] = len(got & expected)
    verdict.lost[sink] = sorted(expected - got)
    verdict.spurious[sink] = sorted(k for k in got - expected if isinstance(k[0], str))
    ids_by_key: dict[tuple[str, str], set[str]] = defaultdict(set)
    bodies_by_id: dict[str, set[str]] = defaultdict(set)
    for key, event in zip(keys, events, strict=True):
        ids_by_key[key].add(event.get("id"))
        bodies_by_id[event.get("id")].add(json.dumps(event, sort_keys=True))
    verdict.id_conflicts += [k for k, ids in ids_by_key.items() if len(ids) > 1]
    verdict.body_conflicts += [i for i, bodies in bodies_by_id.items() if len(bodies) > 1]
    counts = Counter(e.get("id") for e in events)
    verdict.duplicates[sink] = sum(n - 1 for n in counts.values())


def verify_standard_signature(body: bytes, headers: Mapping[str, str], secret: str) -> bool:
    """Standard Webhooks verification with the reference library, as a receiver does it on arrival."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    try:
        Webhook(secret).verify(body, dict(headers))
    except WebhookVerificationError:
        return False
    return True


def check(
    *,
    truth: list[Mapping[str, Any]],
    created: Iterable[str],
    events_file: Path,
    webhook: Receiver | None = None,
    foreign: Receiver | None = None,
) -> Verdict:
    """Every check of the crash and fault harnesses that needs only what the receivers recorded."""
    expected = expected_transitions(truth, created)
    verdict = Verdict(expected=len(expected))
    file_events, verdict.torn_lines = read_jsonl(events_file)
    compare("journal", file_events, expected, verdict)
    if webhook is not None:
        accepted = webhook.accepted()
        events = [r.event for r in accepted if r.event is not None]
        compare("hook", events, expected, verdict)
        mismatched = [r for r in accepted if r.event is not None and r.headers.get("webhook-id") != r.event["id"]]
        verdict.id_conflicts += [("webhook-id header", r.headers.get("webhook-id", "")) for r in mismatched]
        verdict.bad_signatures = sum(r.signature_ok is False for r in webhook.received)
    # Neither the webhook receiver nor a foreign origin is the API: neither may ever see an Authorization header.
    others = [*(webhook.received if webhook else []), *(foreign.received if foreign else [])]
    verdict.foreign_auth = sum("authorization" in r.headers for r in others)
    return verdict


# ------------------------------------------------------------------------------------------- budget


def max_in_window(times: list[float], window: float) -> int:
    """The most requests that arrived within any ``window`` seconds."""
    best, lo = 0, 0
    times = sorted(times)
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def budget_excess(times: list[float], rate: float, burst: float, slack: float = 2.0) -> float:
    """How far the arrivals exceed a token bucket (``rate``/s, ``burst``) over every interval: the largest
    ``count - (burst + rate * span) - slack``; <= 0 means the budget held. ``slack`` absorbs requests that
    left in order but arrived bunched."""
    # count(i..j) - rate * (t_j - t_i) = (j + 1 - rate * t_j) + (rate * t_i - i): keep the best i so far.
    worst = float("-inf")
    best_start = float("-inf")
    for j, t in enumerate(sorted(times)):
        best_start = max(best_start, rate * t - j)
        worst = max(worst, (j + 1 - rate * t) + best_start - burst - slack)
    return worst if times else 0.0


def pause_violations(
    requests: list[ApiRequest], pause_s: float, *, select: Callable[[ApiRequest], bool] = lambda r: True,
    grace: float = 0.25,
) -> list[tuple[float, float]]:
    """(429 time, offending arrival) for API requests that arrived while the pause of a 429 (those ``select``
    picks) was in force: later than ``grace`` after it (requests already on their way) and before ``pause_s``
    ran out."""
    limited = [r.at for r in requests if r.status == 429 and select(r)]
    out = []
    for t in limited:
        out += [(t, r.at) for r in requests if t + grace < r.at < t + pause_s - 0.05]
    return out


def proc_stats(pid: int) -> dict[str, int]:
    """RSS (bytes) and open file descriptors of a process, from /proc."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return {"rss_bytes": rss, "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}
