"""Experience: from sampled responses and the models' per-token outputs to advantages and returns.

Pure tensor code, run by the driver on the whole rollout batch (so whitening and group
baselines see every sample). Per-token tensors are right-padded to [batch, longest response].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignment.data import right_pad
from alignment.ppo.advantages import (
    broadcast_to_tokens,
    gae,
    grpo_advantages,
    masked_mean,
    masked_whiten,
    reinforce_plus_plus,
    rloo_advantages,
    token_level_rewards,
)
from alignment.ppo.config import AlgorithmConfig, KLConfig
from alignment.ppo.kl import kl_estimate


def pad(rows: Sequence[Sequence[float]], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [len(rows), longest] values and their 0/1 mask."""
    return right_pad(rows, dtype=dtype), right_pad([[1.0] * len(r) for r in rows])


@dataclass
class Experience:
    """Per-token training targets of a rollout batch, plus the per-token KL and rewards they came from."""

    mask: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor | None
    kl: torch.Tensor
    token_rewards: torch.Tensor | None


def compute_experience(
    algorithm: AlgorithmConfig,
    kl_config: KLConfig,
    kl_coef: float,
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    values: torch.Tensor | None,
    group_size: int,
) -> Experience:
    """Advantages (and critic returns for GAE) of one batch; ``scores`` is one reward per sequence."""
    kl = kl_estimate(logprobs, ref_logprobs, kl_config.estimator) * mask if ref_logprobs is not None else torch.zeros_like(mask)
    in_reward = kl_config.use_in == "reward" and ref_logprobs is not None
    penalty, coef = (kl, kl_coef) if in_reward else (None, 0.0)
    kind = algorithm.advantage
    returns = token_rewards = None
    if kind == "gae":
        token_rewards = token_level_rewards(scores, mask, penalty, coef)
        advantages, returns = gae(token_rewards, values, mask, algorithm.gamma, algorithm.lam)
        if algorithm.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
    elif kind in ("reinforce_pp", "reinforce_pp_baseline"):
        group = group_size if kind == "reinforce_pp_baseline" else None
        advantages = reinforce_plus_plus(scores, mask, penalty, coef, algorithm.gamma, group)
    else:
        # Sequence-level estimators: the KL penalty (when in the reward) lowers each sequence's score.
        sequence_scores = scores - coef * (kl * mask).sum(dim=1) if in_reward else scores
        if kind == "grpo":
            per_sequence = grpo_advantages(sequence_scores, group_size, scale=algorithm.grpo_scale)
        else:
            per_sequence = rloo_advantages(sequence_scores, group_size)
        advantages = broadcast_to_tokens(per_sequence, mask)
        if kind == "rloo" and algorithm.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
    return Experience(mask=mask, advantages=advantages, returns=returns, kl=kl, token_rewards=token_rewards)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over response tokens (1 is a perfect critic)."""
    residual = returns - values
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float(1.0 - var_residual / var_returns.clamp(min=1e-8))


def logprob_mismatch(train_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over response tokens of exp(|logp_train - logp_rollout|): 1 when engine and trainer agree."""
    return float(masked_mean(torch.exp((train_logprobs - rollout_logprobs).abs()), mask))
