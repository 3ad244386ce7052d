"""Rollout: generation for PPO and for comparison (vLLM engines in Ray actors, or transformers generate)."""

from rollout.config import RolloutConfig, SamplingConfig
from rollout.engine import Generation, RolloutEngines

__all__ = ["Generation", "RolloutConfig", "RolloutEngines", "SamplingConfig"]
