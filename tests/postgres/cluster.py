"""A throwaway PostgreSQL cluster for tests and scripts: initdb into a temp dir, a Unix socket in that dir, no TCP.

Debian's server binaries live in /usr/lib/postgresql/<major>/bin (not on PATH); ``$FLORA_PG_BIN`` overrides.
As root, the cluster runs as the ``postgres`` user (initdb refuses root), in a directory that user owns.

Every connection is trusted (no password) unless a test adds a role with ``add_role``: that role must log in
with its SCRAM password. The operations a DBA does to a running cluster are here too, for the chaos tests
(tests/reliability/test_pg_outages.py): ``restart`` (``pg_ctl restart -m fast|immediate``), ``halt`` and
``start`` (an outage of any length), ``set_password`` and ``terminate`` (a password rotated under a running
client, its sessions ended).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path


def find_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL's server is not installed."""
    env = os.environ.get("FLORA_PG_BIN")
    candidates = [env] if env else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


@dataclass
class Cluster:
    """A running throwaway cluster. ``url(db)`` is a libpq URL over its Unix socket."""

    bindir: Path
    root: Path
    user: str | None  # the OS user the server runs as (None: the current user)
    options: str = ""  # the server's -o options, given again at every start

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root

    def url(self, dbname: str = "postgres", *, user: str = "flora", password: str | None = None) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@/{dbname}?host={self.sockdir}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = self._run(str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-h", str(self.sockdir), "-U", "flora",
                        "-d", dbname, "-c", sql)
        return out.stdout.strip()

    def create_database(self, prefix: str = "t", *, owner: str = "flora", password: str | None = None) -> str:
        """A fresh, empty database owned by ``owner``; returns its URL as that role (with ``password``)."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return self.url(name, user=owner, password=password)

    def stop(self) -> None:
        """Tear down: stop the server (immediate) and remove the cluster's directory."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # ----------------------------------------------------------------------- operations on a running cluster

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.root / "log"), *args)

    def start(self) -> None:
        """Start the server again after ``halt``; returns once it accepts connections."""
        self._pg_ctl("-o", self.options, "-w", "-t", "60", "start")

    def halt(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``: every client's connection ends (fast: "terminating connection due to
        administrator command"; immediate: dropped without a word). The data stays; ``start`` brings it back."""
        self._pg_ctl("-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE``; returns once the server accepts connections again."""
        self._pg_ctl("-m", mode, "-o", self.options, "-w", "-t", "60", "restart")

    def running(self) -> bool:
        return self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status", check=False).returncode == 0

    def add_role(self, role: str, password: str) -> None:
        """A login role that must authenticate with SCRAM over the socket (the cluster trusts every other role):
        its password can then be wrong."""
        self.psql(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())  # the first matching line wins
        self.psql("SELECT pg_reload_conf()")

    def set_password(self, role: str, password: str) -> None:
        """``ALTER ROLE … PASSWORD``: new sessions need the new password; open ones stay (see ``terminate``)."""
        self.psql(f"ALTER ROLE \"{role}\" PASSWORD '{password}'")

    def terminate(self, role: str) -> int:
        """End every session of ``role`` (``pg_terminate_backend``), as a DBA does after rotating a password."""
        out = self.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        f"WHERE usename = '{role}' AND pid <> pg_backend_pid()")
        return int(out or 0)


def start_cluster(*, crash_safe: bool = False) -> Cluster:
    """initdb + pg_ctl start, socket only, fsync off (a throwaway cluster; durability is PostgreSQL's own).

    By default commits are asynchronous too (``synchronous_commit=off``): fast, and nothing is lost while the
    server stops cleanly. ``crash_safe`` makes every commit wait for its WAL to be written, as a production server
    does, so a crash (``restart -m immediate``) loses no acknowledged commit: with asynchronous commits it loses
    the last ~200 ms of them, and a test would see deliveries marked done there sent again."""
    bindir = find_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's `postgresql`")
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="flora-pg-"))
    os.chmod(root, 0o755)
    if user:
        shutil.chown(root, user=user, group=user)
    opts = (f"-c listen_addresses='' -c unix_socket_directories='{root}' -c fsync=off "
            f"-c synchronous_commit={'on' if crash_safe else 'off'} -c full_page_writes=off -c max_connections=200 "
            "-c shared_buffers=32MB")
    cluster = Cluster(bindir=bindir, root=root, user=user, options=opts)
    try:
        cluster._run(str(bindir / "initdb"), "-D", str(cluster.datadir), "-U", "flora", "--auth=trust",
                     "--no-sync", "-E", "UTF8", "--locale=C")
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
