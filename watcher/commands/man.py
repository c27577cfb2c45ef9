"""Print the man page, flora-watcher(1), generated from this command line's own parser (roff on stdout).

`flora-watcher man | man -l -` reads it; `flora-watcher install-unit` installs it.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    return None


def main(args: argparse.Namespace) -> int:
    print(render_man(), end="")
    return 0


def render_man() -> str:
    from watcher import __version__
    from watcher.cli import build_parser
    from watcher.manpage import render

    return render(build_parser(), __version__)
