"""`align sft`: supervised fine-tuning."""

from __future__ import annotations

import argparse

from alignment.jobs import add_config_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser("sft", help="Supervised fine-tuning on chat or prompt/completion data",
                                   description="Supervised fine-tuning (loss on response tokens only).")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alignment.config import SFTConfig, dump_config, load_config

    config = load_config(SFTConfig, args.config, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    from alignment.sft import run_sft

    run_sft(config, resume=args.resume)
    return 0
