"""Advantage estimators on right-padded token tensors of shape [batch, response_length].

``mask`` is 1 on response tokens and 0 on padding. Group estimators take one scalar reward per
sequence and ``group_size`` consecutive sequences per prompt (n samples per prompt).
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the unmasked entries (unbiased variance); padding stays 0."""
    mean = masked_mean(values, mask)
    count = mask.sum().clamp(min=2)
    variance = (((values - mean) * mask) ** 2).sum() / (count - 1)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016), per sequence, stopping at padding.

    delta_t = r_t + gamma * V_{t+1} - V_t  (V past the last response token is 0)
    A_t = delta_t + gamma * lam * A_{t+1};  returns_t = A_t + V_t.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_k gamma^k r_{t+k} within each sequence (REINFORCE returns)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} sequences do not split into groups of {group_size}")
    return scores.view(-1, group_size)


def grpo_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """GRPO (Shao et al. 2024): (r - mean of the prompt's group) / (std of the group + eps), per sequence."""
    grouped = _groups(scores, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): r_i minus the mean of the other samples of the same prompt."""
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    grouped = _groups(scores, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def token_level_rewards(scores: torch.Tensor, mask: torch.Tensor, kl_penalty: torch.Tensor | None = None,
                        kl_coef: float = 0.0) -> torch.Tensor:
    """Sequence score on each sequence's last response token, minus kl_coef * per-token KL everywhere."""
    rewards = torch.zeros_like(mask, dtype=scores.dtype)
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] = scores
    if kl_penalty is not None:
        rewards = rewards - kl_coef * kl_penalty
    return rewards * mask


def reinforce_plus_plus(scores: torch.Tensor, mask: torch.Tensor, kl_penalty: torch.Tensor | None, kl_coef: float,
                        gamma: float = 1.0, group_size: int | None = None) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): token returns of (score - KL penalty), whitened over the whole batch.

    With ``group_size`` (REINFORCE++-baseline) the prompt's group mean score is subtracted first.
    """
    if group_size is not None:
        scores = grpo_advantages(scores, group_size, scale=False)
    returns = discounted_returns(token_level_rewards(scores, mask, kl_penalty, kl_coef), mask, gamma)
    return masked_whiten(returns, mask)


def broadcast_to_tokens(sequence_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One value per sequence copied onto each of its response tokens."""
    return sequence_values[:, None] * mask
