"""`align dpo`: direct preference optimisation (DPO, cDPO, IPO, SimPO)."""

from __future__ import annotations

import argparse

from alignment.jobs import add_config_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser("dpo", help="Preference optimisation (DPO, cDPO, IPO, SimPO) against a frozen reference",
                                   description="Direct preference optimisation on preference pairs or rankings.")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alignment.config import DPOConfig, dump_config, load_config

    config = load_config(DPOConfig, args.config, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    from alignment.dpo import run_dpo

    run_dpo(config, resume=args.resume)
    return 0
