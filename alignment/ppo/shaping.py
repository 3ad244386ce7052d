"""DAPO's reward shaping and sample filtering (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement
Learning System at Scale"): the overlong penalty and the groups dynamic sampling keeps.

Pure tensor code, run by the driver on whole groups of samples.
"""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (eq. 13), added to each response's reward:

        R(|y|) = 0                                  if |y| <= L_max - L_cache
               = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
               = -1                                 if |y| > L_max

    times ``factor``, with L_max = ``max_length`` and L_cache = ``buffer`` (0 < buffer <= max_length).
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"the overlong buffer must be in (0, max_length={max_length}], got {buffer}")
    lengths = lengths.to(torch.float64)
    start = max_length - buffer
    penalty = ((start - lengths) / buffer).clamp(min=-1.0, max=0.0)
    return (factor * penalty).to(torch.float32)


def informative_groups(scores: torch.Tensor, group_size: int, tolerance: float = 1e-6) -> torch.Tensor:
    """[G] True for groups whose ``group_size`` consecutive scores are not all equal (within
    ``tolerance``): a group of equal rewards has zero advantage under a group baseline, so it carries no
    gradient and DAPO's dynamic sampling drops it."""
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    grouped = scores.view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > tolerance


def fill_groups(kept: list[int], wanted: int) -> list[int]:
    """``wanted`` group indices from ``kept`` (first come first): all of them when there are enough,
    else ``kept`` repeated in order until the batch is full (a batch has a fixed size: minibatches and
    gradient accumulation count on it). Empty when nothing was kept."""
    if not kept:
        return []
    return [kept[i % len(kept)] for i in range(wanted)]
