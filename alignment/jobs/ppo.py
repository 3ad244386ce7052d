"""`align ppo`: RLHF with PPO, GRPO, RLOO or REINFORCE++ on Ray + DeepSpeed, rollouts from vLLM."""

from __future__ import annotations

import argparse

from alignment.jobs import add_config_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser("ppo", help="RLHF: PPO / GRPO / RLOO / REINFORCE++ with rollouts from vLLM",
                                   description="Reinforcement learning from a reward model and/or reward functions.")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alignment.config import dump_config, load_config
    from alignment.ppo.config import PPOConfig

    config = load_config(PPOConfig, args.config, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    from alignment.ppo.trainer import run_ppo

    run_ppo(config, resume=args.resume)
    return 0
