"""What every benchmark records beside its figures, so anyone can tell what a figure was measured on and rerun it:
the command, the commit (and whether the work tree had uncommitted changes), the machine (nproc, CPU model,
memory, Python), a quick speed probe, and the load average at the start and at the end of the run.

A benchmark calls ``start()`` first thing (it prints the header at once, so a run that is cut short still says
what it ran on), ``finish()`` when it is done (the load at the end), then writes ``markdown()`` beside its
figures in RESULTS.md:

    meta = _meta.start("bench/bench_x.py", sys.argv[1:])
    ...                                  # measure
    meta.finish()
    section = f"## ...\\n\\n{meta.markdown()}\\n\\n{figures}"

Only this file's own directory is on ``sys.path`` when a bench runs as ``python bench/bench_x.py``, which is how
``import _meta`` finds it.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE_LOOPS = 20_000_000


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip("\n")  # not strip(): porcelain lines start with a space


def commit_of(path: Path = ROOT) -> str:
    """``<full hash>`` for a clean tree; ``<full hash> + uncommitted changes (N files: a, b, …)`` when files are
    modified or not yet added (untracked files count: a bench script nobody committed is exactly what makes a
    figure impossible to rerun); ``unknown (not a git checkout)`` outside git."""
    head = _git(path, "rev-parse", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    status = _git(path, "status", "--porcelain")
    if status is None:
        return f"{head} (dirty flag unknown)"
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    if not changed:
        return head
    shown = ", ".join(changed[:5]) + (", …" if len(changed) > 5 else "")
    return f"{head} + uncommitted changes ({len(changed)} file{'s' if len(changed) > 1 else ''}: {shown})"


def nproc() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def speed_probe() -> float:
    """CPU seconds of this process for a fixed pure-Python loop: compares machines (and a machine with itself
    under load) independent of what the benchmark measures. About half a second on the session machines."""
    t0 = time.process_time()
    n = 0
    for i in range(PROBE_LOOPS):
        n += i
    return time.process_time() - t0


def _fmt_load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class Meta:
    command: str
    commit: str
    nproc: int
    cpu: str
    memory_gib: float | None
    python: str
    system: str
    probe_s: float | None
    started: str
    load_start: tuple[float, float, float]
    extra: dict[str, str] = field(default_factory=dict)
    ended: str | None = None
    load_end: tuple[float, float, float] | None = None

    def finish(self) -> Meta:
        """Record the end of the run (time, load average) and print it."""
        self.ended = _utc()
        self.load_end = load()
        print(f"# load average at the end (1/5/15 min): {_fmt_load(self.load_end)} ({self.ended})", flush=True)
        return self

    def fields(self) -> list[tuple[str, str]]:
        mem = f", {self.memory_gib:.1f} GiB" if self.memory_gib is not None else ""
        probe = (f"; speed probe {self.probe_s:.2f} CPU-s for a {PROBE_LOOPS:,}-step Python loop"
                 if self.probe_s is not None else "")
        rows = [
            ("command", f"`{self.command}`"),
            ("commit", self.commit),
            *self.extra.items(),
            ("machine", f"{self.nproc} CPUs (nproc), {self.cpu}{mem}; {self.system}; Python {self.python}{probe}"),
            ("load average (1/5/15 min)", f"{_fmt_load(self.load_start)} at the start ({self.started})"
             + (f", {_fmt_load(self.load_end)} at the end ({self.ended})" if self.load_end is not None else "")),
        ]
        return rows

    def header(self) -> str:
        """Plain text, one ``# key: value`` line each, printed at the start of a run."""
        return "\n".join(f"# {k}: {v.strip('`')}" for k, v in self.fields())

    def markdown(self) -> str:
        """The same as a Markdown list, for RESULTS.md."""
        return "\n".join(f"- {k}: {v}" for k, v in self.fields())


def start(script: str, argv: list[str], *, probe: bool = True, **extra: str) -> Meta:
    """Record the command (``python <script> <argv>``), commit, machine and load at the start, and print them.
    ``extra``: more lines for the header (e.g. the commit of the watcher under test when it comes from another
    checkout); keys with underscores are written with spaces."""
    meta = Meta(
        command=shlex.join(["python", script, *argv]),
        commit=commit_of(ROOT),
        nproc=nproc(),
        cpu=cpu_model(),
        memory_gib=mem_total_gib(),
        python=platform.python_version(),
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
        probe_s=None,
        started=_utc(),
        load_start=load(),
        extra={k.replace("_", " "): v for k, v in extra.items()},
    )
    if probe:
        meta.probe_s = speed_probe()
    print(meta.header(), flush=True)
    return meta


def callgrind_count(args: list[str], what: str, on_line: Callable[[str], None] | None = None) -> int:
    """``python ARGS`` under callgrind with instrumentation off until the child prints ``measure`` and back off
    at ``done`` (the child waits for a newline after each, so nothing runs unmeasured in between): the
    instructions of the measured part, every thread of the process. ``on_line`` gets the child's other lines
    (figures it reports); ``what`` names the child in errors. Needs valgrind (``apt-get install valgrind``)."""
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if not valgrind or not control:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="flora-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", sys.executable,
               *args]
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True)
        assert child.stdin is not None and child.stdout is not None
        for line in child.stdout:
            word = line.strip()
            if word in ("measure", "done"):
                subprocess.run([control, "-i", "on" if word == "measure" else "off", str(child.pid)],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                child.stdin.write("\n")
                child.stdin.flush()
            elif on_line is not None:
                on_line(word)
        if child.wait() != 0:
            raise SystemExit(f"{what} under callgrind exited with {child.returncode}")
        totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        if totals is None:
            raise SystemExit("callgrind wrote no totals")
        return int(totals.group(1))
