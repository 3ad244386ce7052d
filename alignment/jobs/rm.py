"""`align rm`: Bradley-Terry reward model from preference pairs or rankings."""

from __future__ import annotations

from alignment.jobs import config_job


def register(subparsers) -> None:
    config_job(
        subparsers, "rm", help="Train a Bradley-Terry reward model on preference pairs or rankings",
        description="Reward model: causal-LM backbone plus a scalar head, Bradley-Terry loss.",
        schema="alignment.config:RMConfig", runner="reward.train:run_rm",
    )
