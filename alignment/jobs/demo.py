"""`align demo`: the whole loop on the tiny task: label, reward model, DPO, PPO, compare."""

from __future__ import annotations

import argparse

from alignment.jobs import add_config_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="The whole loop on the tiny task: annotate, reward model, DPO, PPO, compare (~15 min on 2 cores)",
        description="Tiny task -> candidates -> simulated annotators in the labeling store -> pairs -> reward model "
                    "and DPO -> PPO -> align compare. Stages are cached under $ALIGN_HOME/demo.")
    add_config_arguments(parser, resumable=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alignment.config import dump_config, load_config
    from alignment.demo import DemoConfig, run_demo

    config = load_config(DemoConfig, args.config, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    run_demo(config)
    return 0
