"""Install flora-watcher as a systemd service: write the unit with ExecStart= pointing at this install's
console script, install the man page it names in Documentation=, and put the example config in place when
there is none yet.

Writes, by default: /etc/systemd/system/flora-watcher.service (0644), /usr/local/share/man/man1/flora-watcher.1
(0644), and /etc/flora-watcher/ (0755) with flora-watcher.toml (0644, only if absent). It does not start
anything: `systemctl daemon-reload && systemctl enable --now flora-watcher` does, after the key is in
/etc/flora-watcher/flora_api_key (docs/operations.md). Run it as root. --root DIR writes everything under DIR
instead (for packaging and CI); ExecStart= still names the real console script.
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
    if args.stdout:
        print(unit, end="")
        return 0
    if str(exec_path).startswith(("/home/", "/root/")):
        print(f"warning: {exec_path} is under /home or /root, which the unit hides (ProtectHome=yes); "
              "install into /opt/flora-watcher/venv instead", file=sys.stderr)

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
