"""Print a shell completion script for bash or zsh (generated from the parser with shtab).

bash:  flora-watcher completion bash | sudo tee /usr/share/bash-completion/completions/flora-watcher
zsh:   flora-watcher completion zsh > "${fpath[1]}/_flora-watcher"     (then: compinit)
Or for the current shell only: eval "$(flora-watcher completion bash)".
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete for")


def main(args: argparse.Namespace) -> int:
    print(script(args.shell), end="")
    return 0


def script(shell: str) -> str:
    import shtab

    from watcher.cli import build_parser

    parser = build_parser()
    _complete_files(parser, shtab)
    return shtab.complete(parser, shell=shell)


def _complete_files(parser: argparse.ArgumentParser, shtab) -> None:
    """-c/--config completes file names (the other arguments complete from their choices, if any)."""
    for action in parser._actions:
        if action.dest == "config":
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _complete_files(sub, shtab)
