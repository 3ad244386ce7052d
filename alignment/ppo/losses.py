"""PPO policy and value losses, entropy, and how per-token losses are aggregated.

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


def aggregate(token_values: torch.Tensor, mask: torch.Tensor,
              mode: Literal["token", "sequence"]) -> tuple[torch.Tensor, float]:
    """(sum, units) of masked per-token values.

    token: every response token weighs the same (units = tokens);
    sequence: each sequence's token mean weighs the same (units = sequences).
    """
    if mode == "token":
        return (token_values * mask).sum(), float(mask.sum())
    if mode == "sequence":
        per_sequence = (token_values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_sequence.sum(), float(len(per_sequence))
    raise ValueError(f"unknown aggregation {mode!r}; allowed: token, sequence")
