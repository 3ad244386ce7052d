"""CLI job definitions: each module has ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
from typing import Any


def add_config_arguments(parser: argparse.ArgumentParser, resumable: bool = True) -> None:
    """The arguments every config-driven job takes."""
    parser.add_argument("--config", "-c", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-5")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show the libraries' logs (vLLM, Ray, DeepSpeed) on the console, not only in the log file")
    if resumable:
        parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def config_job(subparsers, name: str, help: str, description: str, schema: str, runner: str,
               resumable: bool = True) -> argparse.ArgumentParser:
    """Register a job that validates a config (YAML + dotted overrides) and hands it to ``runner``.

    ``schema`` and ``runner`` are ``module:attribute`` paths, imported only when the job runs
    (so ``align --help`` stays fast); the runner is called as ``runner(config[, resume=...])``.
    """
    parser = subparsers.add_parser(name, help=help, description=description)
    add_config_arguments(parser, resumable)

    def run(args: argparse.Namespace) -> int:
        from alignment.config import dump_config, load_config
        from alignment.logs import set_verbose

        set_verbose(args.verbose)
        config = load_config(_resolve(schema), args.config, args.overrides)
        if args.print_config:
            print(dump_config(config), end="")
            return 0
        _resolve(runner)(config, **({"resume": args.resume} if resumable else {}))
        return 0

    parser.set_defaults(func=run)
    return parser
