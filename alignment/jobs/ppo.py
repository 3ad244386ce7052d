"""`align ppo`: RLHF with PPO, GRPO, RLOO or REINFORCE++ on Ray + DeepSpeed, rollouts from vLLM."""

from __future__ import annotations

from alignment.jobs import config_job


def register(subparsers) -> None:
    config_job(
        subparsers, "ppo", help="RLHF: PPO / GRPO / RLOO / REINFORCE++ with rollouts from vLLM",
        description="Reinforcement learning from a reward model and/or reward functions.",
        schema="alignment.ppo.config:PPOConfig", runner="alignment.ppo.trainer:run_ppo",
    )
