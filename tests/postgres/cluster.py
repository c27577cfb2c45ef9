"""A throwaway PostgreSQL cluster for tests and scripts: initdb into a temp dir, a Unix socket in that dir, no TCP.

Debian's server binaries live in /usr/lib/postgresql/<major>/bin (not on PATH); ``$FLORA_PG_BIN`` overrides.
As root, the cluster runs as the ``postgres`` user (initdb refuses root), in a directory that user owns.
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

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://flora@/{dbname}?host={self.sockdir}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = self._run(str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-h", str(self.sockdir), "-U", "flora",
                        "-d", dbname, "-c", sql)
        return out.stdout.strip()

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database owned by ``flora``; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}" OWNER flora')
        return self.url(name)

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> Cluster:
    """initdb + pg_ctl start, socket only, fsync off (a throwaway cluster; durability is PostgreSQL's own)."""
    bindir = find_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's `postgresql`")
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="flora-pg-"))
    os.chmod(root, 0o755)
    if user:
        shutil.chown(root, user=user, group=user)
    cluster = Cluster(bindir=bindir, root=root, user=user)
    try:
        cluster._run(str(bindir / "initdb"), "-D", str(cluster.datadir), "-U", "flora", "--auth=trust",
                     "--no-sync", "-E", "UTF8", "--locale=C")
        opts = (f"-c listen_addresses='' -c unix_socket_directories='{root}' -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        cluster._run(str(bindir / "pg_ctl"), "-D", str(cluster.datadir), "-l", str(root / "log"), "-o", opts,
                     "-w", "-t", "60", "start")
    except BaseException:
        cluster.stop()
        raise
    return cluster
