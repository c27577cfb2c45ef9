"""What the kernel says about a process's files (Linux /proc): for tests that a process keeps its state attached.

Closing any descriptor of a file drops every POSIX lock the process holds on it (SQLite "How To Corrupt" §2.2);
a process that lost them can have its WAL deleted under it by another process's close. ``posix_locks`` sees the
first, ``deleted_files`` the second.
"""

from __future__ import annotations

import os
from pathlib import Path

HAVE_PROC = Path("/proc/locks").exists()


def posix_locks(path: Path, pid: int | None = None) -> int:
    """POSIX (fcntl) locks ``pid`` (default: this process) holds on ``path``, from ``/proc/locks``."""
    pid = os.getpid() if pid is None else pid
    st = os.stat(path)
    held = 0
    for line in Path("/proc/locks").read_text().splitlines():
        # "1: POSIX  ADVISORY  READ 12345 08:01:1234 128 128"; a blocked waiter has "->" after the number
        fields = [f for f in line.split() if f != "->"]
        if len(fields) >= 6 and fields[1] == "POSIX" and fields[4] == str(pid):
            major, minor, ino = fields[5].split(":")
            if int(ino) == st.st_ino and os.makedev(int(major, 16), int(minor, 16)) == st.st_dev:
                held += 1
    return held


def deleted_files(pid: int) -> list[str]:
    """The targets of ``pid``'s descriptors whose file was deleted (``/proc/PID/fd`` shows ' (deleted)')."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.endswith(" (deleted)"):
            out.append(target)
    return out
