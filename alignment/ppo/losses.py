"""PPO policy and value losses, entropy, rollout/trainer mismatch weights, and loss aggregation.

Each loss returns per-token values; :func:`aggregate` turns them into (sum, units) so the
training core can normalise by the global unit count across ranks and micro-batches.
"""

from __future__ import annotations

from typing import Literal

import torch


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float | None = None):
    """Clipped surrogate (Schulman et al. 2017) with separate low/high clip (DAPO's clip-higher).

    ratio = exp(logp - logp_old);  loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)).
    ``dual_clip`` = c > 1 (Ye et al. 2020) also bounds the loss by -A * c where A < 0.
    Returns (per-token loss, per-token 1.0 where clipping was active, ratio).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        loss = torch.where(advantages < 0, torch.minimum(loss, -advantages * dual_clip), loss)
    return loss, (clipped > unclipped).float(), ratio


def sequence_ratio_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_low: float = 3e-4, clip_high: float = 4e-4):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): one length-normalised
    importance ratio per sequence, clipped per sequence.

        s_i = exp(1/|y_i| * sum_t (logp_t - logp_old_t));  J_i = max(-A_i * s_i, -A_i * clip(s_i, 1 - lo, 1 + hi))

    Returned in the per-token form of the paper's GSPO-token: every token carries
    s_i,t = sg[s_i] * exp(logp_t - sg[logp_t]), whose value is s_i, so the token mean of the loss is
    J_i and its gradient is J_i's (aggregate with ``sequence`` for the paper's objective).
    Returns (per-token loss, per-token 1.0 where the sequence was clipped, per-token ratio s_i).
    """
    log_ratio = ((logprobs - old_logprobs) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    ratio = torch.exp(log_ratio.detach()[:, None] + logprobs - logprobs.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float(), ratio


def truncated_is_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor,
                         cap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance sampling for the rollout engine / trainer gap (Yao et al. 2025, "Your
    Efficient RL Framework Secretly Brings You Off-Policy RL Training"): the rollout was sampled from
    the engine's pi_rollout, the loss assumes the trainer's pi_old, so each token's loss is weighted by

        w_t = min(pi_old(y_t) / pi_rollout(y_t), C)

    (no gradient; ``cap`` C = None gives the untruncated ratio). Returns (weights [B, R] on response
    tokens, 1.0 where the ratio exceeded the cap).
    """
    ratio = torch.exp(old_logprobs - rollout_logprobs) * mask
    if cap is None:
        return ratio, torch.zeros_like(mask)
    return ratio.clamp(max=cap), (ratio > cap).float() * mask


def mismatch_sequence_mask(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor,
                           threshold: float) -> torch.Tensor:
    """[B] 1.0 for sequences to keep, 0.0 for those whose length-normalised trainer/engine ratio
    exp(1/|y| * sum_t (logp_old_t - logp_rollout_t)) lies outside [1 / threshold, threshold]
    (masked importance sampling at the sequence level, as in Liu et al. 2025, "When Speed Kills
    Stability: Demystifying RL Collapse from the Training-Inference Mismatch")."""
    if threshold <= 1.0:
        raise ValueError(f"the mismatch mask threshold must be > 1, got {threshold}")
    log_ratio = ((old_logprobs - rollout_logprobs) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return (log_ratio.abs() <= torch.log(torch.tensor(threshold, dtype=log_ratio.dtype))).float()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float | None = 0.2):
    """0.5 * max((V - R)^2, (V_clipped - R)^2) with V_clipped = V_old + clip(V - V_old, -clip, clip)."""
    loss = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * loss


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits): -sum p log p."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


Aggregation = Literal["token", "sequence", "constant"]


def aggregate(token_values: torch.Tensor, mask: torch.Tensor, mode: Aggregation,
              max_length: int | None = None) -> tuple[torch.Tensor, float]:
    """(sum, units) of masked per-token values; the loss is the global sum over the global units.

    token: every response token weighs the same (units = tokens; DAPO's token-level loss);
    sequence: each sequence's token mean weighs the same (units = sequences; GRPO, GSPO);
    constant: token sums over a fixed ``max_length`` per sequence (units = sequences x max_length),
    so no response's tokens weigh more for being short (Liu et al. 2025, Dr. GRPO,
    "Understanding R1-Zero-Like Training: A Critical Perspective").
    """
    if mode == "sequence":
        per_sequence = (token_values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_sequence.sum(), loss_units(mask, mode, max_length)
    if mode in ("token", "constant"):
        return (token_values * mask).sum(), loss_units(mask, mode, max_length)
    raise ValueError(f"unknown aggregation {mode!r}; allowed: token, sequence, constant")


def loss_units(mask: torch.Tensor, mode: Aggregation, max_length: int | None = None) -> float:
    """The units :func:`aggregate` divides by: tokens, sequences, or sequences x ``max_length``."""
    if mode == "token":
        return float(mask.sum())
    if mode == "sequence":
        return float(mask.shape[0])
    if mode == "constant":
        if not max_length:
            raise ValueError("constant aggregation needs max_length (the response token limit)")
        return float(mask.shape[0] * max_length)
    raise ValueError(f"unknown aggregation {mode!r}; allowed: token, sequence, constant")
