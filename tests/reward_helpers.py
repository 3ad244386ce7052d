"""Reward functions the PPO tests load by dotted path (the job imports them like a user's own)."""

from __future__ import annotations

import os


def nan_once_flagged(responses: list[str]) -> list[float]:
    """0 for every response until the file named by $NAN_REWARD_FLAG exists, NaN from then on."""
    flagged = os.path.exists(os.environ["NAN_REWARD_FLAG"])
    return [float("nan") if flagged else 0.0] * len(responses)


def prompt_length_reward(responses: list[str], prompts: list) -> list[float]:
    return [len(str(p)) - len(r) for p, r in zip(prompts, responses)]
