"""The command line: argparse over plain functions.

Each command lives in ``watcher/commands/<name>.py`` and exposes ``add_arguments(parser)`` and
``main(args) -> int``. Command modules keep their heavy imports inside ``main`` so ``--help`` stays fast.

Exit statuses are named once, in ``watcher/exits.py`` (CONTRACT §2). A command returns one of them for its own
outcome (``watch``: completed, failed, not found ...; ``test-sink``: delivered or not). Every error that escapes
a command is turned into a status here and only here: a config or usage error is 2, a state store that cannot
be opened or read is 1 (one line with the store's own reason), Ctrl-C is 0, a closed stdout is 0. Nothing calls
``sys.exit`` but ``__main__``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from watcher import __version__, exits
from watcher.errors import ConfigError, StoreError, UsageError

# (command, module, one-line help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "run", "run the watcher daemon in the foreground"),
    ("demo", "demo", "watch a built-in FLORA simulator: no key, no config"),
    ("simulate", "simulate", "serve the FLORA API simulator on loopback"),
    ("watch", "watch", "follow one run until it ends"),
    ("check-config", "check_config", "validate the config and resolve every secret"),
    ("test-sink", "test_sink", "send one synthetic event through a sink"),
    ("deliveries", "deliveries", "list pending deliveries (or dead letters with --failed)"),
    ("replay", "replay", "re-queue dead-lettered or delivered events"),
    ("status", "status", "tracked runs, outbox depth, last sweep, sink health"),
    ("events", "events", "the transition history from the state store (--follow for new ones)"),
    ("install-unit", "install_unit", "write the systemd unit (and man page) for this install"),
    ("completion", "completion", "print a bash or zsh completion script"),
    ("man", "man", "print the man page (roff)"),
    ("migrate-state", "migrate_state", "copy the SQLite state into an empty PostgreSQL store"),
)


class Parser(argparse.ArgumentParser):
    """argparse with a usage error in one line, like every other error of the command line (exit 2): the
    command, what is wrong, where to look. argparse's default prints the whole usage block first."""

    def error(self, message: str) -> NoReturn:
        self.exit(exits.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="flora-watcher",
        description="Watches FLORA technique runs and reports each completion and failure.",
    )
    parser.add_argument("--version", action="version", version=f"flora-watcher {__version__}")
    add_global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(f"watcher.commands.{module_name}")
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        add_global_options(p, defaults=False)  # `flora-watcher run --log-format json` works too
        p.set_defaults(_module=module)
    return parser


def add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options that apply to every command. On the top-level parser they carry the defaults; each command's
    parser repeats them without defaults (SUPPRESS), so they may also come after the command and win there."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--log-format", choices=("auto", "console", "json"), default=default("auto"),
        help="console lines on a terminal, JSON lines otherwise (default: auto)",
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default=default(None),
        help="minimum level to log (default: info; warning for demo)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    from watcher import logs

    default_level = "warning" if args.command == "demo" else "info"
    logs.configure(fmt=args.log_format, level=args.log_level or default_level)
    try:
        return int(args._module.main(args))
    except ConfigError as exc:  # also a config problem `run` finds at start (the daemon re-raises it)
        for problem in exc.problems():  # one line each
            print(f"flora-watcher: config error: {problem}", file=sys.stderr)
        return exits.USAGE
    except UsageError as exc:
        print(f"flora-watcher {args.command}: {exc}", file=sys.stderr)
        return exits.USAGE
    except StoreError as exc:  # the state store cannot be opened or read: its own reason, one line, no password
        print(f"flora-watcher {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return exits.STORE
    except KeyboardInterrupt:
        return exits.OK
    except BrokenPipeError:  # `flora-watcher deliveries | head`: the reader left; that is not an error
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return exits.OK


def one_line(text: str) -> str:
    """``text`` with its line breaks folded: an error message is one line."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


if __name__ == "__main__":
    raise SystemExit(main())
