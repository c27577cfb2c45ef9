"""Install flora-watcher as a systemd service: write the unit with ExecStart= pointing at this install's
console script, install the man page it names in Documentation=, and put the example config in place when
there is none yet.

Writes, by default: /etc/systemd/system/flora-watcher.service (0644), /usr/local/share/man/man1/flora-watcher.1
(0644), and /etc/flora-watcher/ (0755) with flora-watcher.toml (0644, only if absent). It does not start
anything: `systemctl daemon-reload && systemctl enable --now flora-watcher` does, after the key is in
/etc/flora-watcher/flora_api_key (docs/operations.md). Run it as root. --root DIR writes everything under DIR
instead (for packaging and CI); ExecStart= still names the real console script.

It warns (and writes the unit all the same) when that script cannot work or will not stay put under the unit:
under /tmp, /var/tmp or /dev/shm (PrivateTmp=yes), under /home, /root or /run/user (ProtectHome=yes), inside a
source checkout, or an editable install of one. Checked: the script's path, its resolved path and the
interpreter of its #! line.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

UNIT_NAME = "flora-watcher.service"
DEFAULT_PREFIX = "/etc/systemd/system"
DEFAULT_MAN_DIR = "/usr/local/share/man/man1"
DEFAULT_CONFIG_DIR = "/etc/flora-watcher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", metavar="DIR", default=DEFAULT_PREFIX,
                        help=f"where the unit goes (default: {DEFAULT_PREFIX})")
    parser.add_argument("--bin", metavar="PATH",
                        help="the console script for ExecStart= (default: this install's flora-watcher)")
    parser.add_argument("--man-dir", metavar="DIR", default=DEFAULT_MAN_DIR,
                        help=f"where flora-watcher.1 goes (default: {DEFAULT_MAN_DIR})")
    parser.add_argument("--no-man", action="store_true", help="do not install the man page")
    parser.add_argument("--config-dir", metavar="DIR", default=DEFAULT_CONFIG_DIR,
                        help=f"the config directory; gets the example config if it has none "
                        f"(default: {DEFAULT_CONFIG_DIR})")
    parser.add_argument("--root", metavar="DIR", help="write every file under DIR (like DESTDIR)")
    parser.add_argument("--stdout", action="store_true", help="print the unit; write nothing")


def console_script() -> Path | None:
    """This install's flora-watcher: next to the running interpreter (a venv), else the first on $PATH."""
    beside = Path(sys.executable).parent / "flora-watcher"
    if beside.is_file() and os.access(beside, os.X_OK):
        return Path(os.path.abspath(beside))
    found = shutil.which("flora-watcher")
    return Path(os.path.abspath(found)) if found else None


# Where the unit's sandbox cannot reach a program, or where it does not stay put (warned about, never refused:
# the operator may know better, e.g. a unit edited afterwards).
TMP_ROOTS = ("/tmp", "/var/tmp", "/dev/shm")  # PrivateTmp=yes: the service gets its own, empty, /tmp
HOME_ROOTS = ("/home", "/root", "/run/user")  # ProtectHome=yes: hidden from the service
INSTEAD = "install a release into /opt/flora-watcher/venv instead (docs/operations.md)"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def placement_warnings(programs: list[str], checkouts: dict[str, str], editable_source: str | None) -> list[str]:
    """Why ExecStart= may not work, or not stay the program it is now: one line per cause. Pure. ``programs``:
    the console script as named, its resolved path and the interpreter of its ``#!`` line; ``checkouts``: each
    of them that lies in a source checkout → that checkout; ``editable_source``: the source tree the package
    is loaded from when the script is this install's and it is editable (``pip install -e``), else None."""
    found: dict[tuple[str, str], str] = {}  # (cause, where) → the first program found there
    for program in programs:
        if root := next((r for r in TMP_ROOTS if _under(program, r)), None):
            found.setdefault(("tmp", root), program)
        elif root := next((r for r in HOME_ROOTS if _under(program, r)), None):
            found.setdefault(("home", root), program)
        if program in checkouts:
            found.setdefault(("checkout", checkouts[program]), program)
    if editable_source is not None and not any(cause == "checkout" for cause, _ in found):
        found[("editable", editable_source)] = ""
    texts = {
        "tmp": "{program} is under {where}, which the unit's PrivateTmp=yes replaces with an empty directory (and "
               "which is cleaned): the service would not start",
        "home": "{program} is under {where}, which the unit hides (ProtectHome=yes): the service would not start",
        "checkout": "{program} is inside the source checkout {where}: the service would run whatever is checked "
                    "out there, and a branch switch or `git clean` changes or removes it",
        "editable": "this flora-watcher is an editable install of the source tree {where}: the service would run "
                    "whatever is checked out there",
    }
    return [f"{texts[cause].format(program=program, where=where)}; {INSTEAD}"
            for (cause, where), program in found.items()]


def _interpreter(script: Path) -> str | None:
    """The program of a script's ``#!`` line (a venv's console script names its python), or None."""
    try:
        with open(script, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    return words[0] if words and words[0].startswith("/") else None


def _checkout(path: str) -> str | None:
    """The source checkout (a directory with .git, a directory or a worktree's file) holding ``path``, or None."""
    for parent in Path(path).parents:
        if parent != Path("/") and (parent / ".git").exists():
            return str(parent)
    return None


def _editable_source() -> str | None:
    """The source tree of the running package when it is not installed in site-packages (``pip install -e``)."""
    import watcher

    package = Path(watcher.__file__).resolve().parent
    if any(part in ("site-packages", "dist-packages") for part in package.parts):
        return None
    tree = package.parent
    return str(tree) if (tree / "pyproject.toml").exists() else None


def install_warnings(exec_path: Path) -> list[str]:
    """``placement_warnings`` for the console script ExecStart= would name, looked up on this machine."""
    programs = [str(exec_path), os.path.realpath(exec_path)]
    if (interpreter := _interpreter(exec_path)) is not None:
        programs.append(interpreter)
    programs = list(dict.fromkeys(programs))
    checkouts = {p: c for p in programs if (c := _checkout(p)) is not None}
    ours = console_script()  # the running package matters only when ExecStart= runs this very install
    editable = _editable_source() if ours is not None and os.path.realpath(ours) == programs[1] else None
    return placement_warnings(programs, checkouts, editable)


def render_unit(template: str, *, exec_path: str, docs: list[str]) -> str:
    """The shipped unit with ExecStart='s program and Documentation= replaced. Pure."""
    if re.search(r"\s", exec_path):
        raise ValueError(f"the console script's path has a space in it: {exec_path!r}")
    text, n = re.subn(r"(?m)^ExecStart=\S+", lambda _m: f"ExecStart={exec_path}", template)
    if n != 1:
        raise ValueError("the shipped unit has no single ExecStart= line")
    text = re.sub(r"(?m)^Documentation=.*$", lambda _m: "Documentation=" + " ".join(docs), text)
    header = f"# Written by `flora-watcher install-unit` for {exec_path}.\n"
    return header + text


def main(args: argparse.Namespace) -> int:
    from watcher.commands.man import render_man
    from watcher.resources import data_path, read_data

    exec_path = Path(os.path.abspath(args.bin)) if args.bin else console_script()
    if exec_path is None or not exec_path.is_file():
        print(f"flora-watcher install-unit: no console script at {exec_path or '(none found)'}; "
              "pass --bin PATH", file=sys.stderr)
        return 2
    docs = ["man:flora-watcher(1)"]
    operations = data_path("docs/operations.md")
    if operations is not None:
        docs.append(operations.resolve().as_uri())
    try:
        unit = render_unit(read_data(UNIT_NAME), exec_path=str(exec_path), docs=docs)
    except (FileNotFoundError, ValueError) as exc:
        print(f"flora-watcher install-unit: {exc}", file=sys.stderr)
        return 1
    for warning in install_warnings(exec_path):  # written all the same: the operator may know better
        print(f"warning: {warning}", file=sys.stderr)
    if args.stdout:
        print(unit, end="")
        return 0

    def at(path: str) -> Path:
        return Path(args.root, path.lstrip("/")) if args.root else Path(path)

    try:
        written = [_write(at(args.prefix) / UNIT_NAME, unit, 0o644)]
        if not args.no_man:
            written.append(_write(at(args.man_dir) / "flora-watcher.1", render_man(), 0o644))
        config_dir = at(args.config_dir)
        config_dir.mkdir(parents=True, exist_ok=True)
        config_dir.chmod(0o755)  # the service's transient user must read the config (secrets are credentials)
        config = config_dir / "flora-watcher.toml"
        if not config.exists():
            written.append(_write(config, read_data("flora-watcher.example.toml"), 0o644))
    except OSError as exc:
        where = exc.filename or ""
        hint = " (run it as root)" if isinstance(exc, PermissionError) else ""
        print(f"flora-watcher install-unit: cannot write {where}: {exc.strerror or exc}{hint}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"ExecStart={exec_path} run")
    print("next: put the API key in /etc/flora-watcher/flora_api_key (0600), edit flora-watcher.toml, then\n"
          "  systemctl daemon-reload && systemctl enable --now flora-watcher")
    return 0


def _write(path: Path, text: str, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)
    return path
