"""One module per command: ``add_arguments(parser)`` and ``main(args) -> int`` (a status from ``watcher.exits``)."""

from __future__ import annotations

import argparse


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help="config file (default: $FLORA_WATCHER_CONFIG, ./flora-watcher.toml, "
        "/etc/flora-watcher/flora-watcher.toml)",
    )
