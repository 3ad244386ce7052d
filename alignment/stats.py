"""Small statistics shared by checkpoint comparison and the arena leaderboard."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_ci(
    count: int,
    statistic: Callable[[np.ndarray], float],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``count`` independent units.

    ``statistic`` receives an array of ``count`` indices drawn with replacement (one resample) and
    returns the statistic computed on those units (prompts, votes, ...). Seeded: the same inputs
    give the same interval.
    """
    if count == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, count, size=count)) for _ in range(resamples)], dtype=np.float64)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)
