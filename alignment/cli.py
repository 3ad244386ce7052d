"""The `align` command line: one subcommand per job.

Each job module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
Heavy imports (torch, ray, deepspeed) happen inside those callables, so that
``align --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from alignment.errors import AlignError

JOB_MODULES = (
    "alignment.jobs.sft",
    "alignment.jobs.dpo",
    "alignment.jobs.kto",
    "alignment.jobs.rm",
    "alignment.jobs.ppo",
    "alignment.jobs.tiny",
    "alignment.jobs.generate",
    "alignment.jobs.compare",
    "alignment.jobs.demo",
    "alignment.jobs.model",
    "labeling_ui.cli",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="align",
        description="Align language models with human preferences.",
    )
    subparsers = parser.add_subparsers(dest="job", metavar="JOB", title="jobs")
    for module_name in JOB_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from alignment.runtime_env import configure_environment

    configure_environment()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # positionals after options: only jobs that set ``intermixed`` take them (into ``args.items``)
        if not getattr(args, "intermixed", False) or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.items += extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AlignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
