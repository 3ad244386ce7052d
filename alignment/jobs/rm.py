"""`align rm`: Bradley-Terry reward model from preference pairs or rankings."""

from __future__ import annotations

import argparse

from alignment.jobs import add_config_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser("rm", help="Train a Bradley-Terry reward model on preference pairs or rankings",
                                   description="Reward model: causal-LM backbone plus a scalar head, Bradley-Terry loss.")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alignment.config import RMConfig, dump_config, load_config

    config = load_config(RMConfig, args.config, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    from reward.train import run_rm

    run_rm(config, resume=args.resume)
    return 0
