"""CLI job definitions: each module has ``register(subparsers)``."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, resumable: bool = True) -> None:
    """The arguments every config-driven job takes."""
    parser.add_argument("--config", "-c", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-5")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    if resumable:
        parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
