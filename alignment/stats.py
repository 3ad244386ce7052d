"""Small statistics shared by checkpoint comparison, RL evaluation and the arena leaderboard."""

from __future__ import annotations

import math
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


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: the chance that at least one of
    ``k`` samples drawn without replacement from the ``n`` is correct (Chen et al. 2021, "Evaluating
    Large Language Models Trained on Code", eq. 1):

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

    computed as the product (no huge binomials). Averaged over problems, it estimates the pass@k of
    the model without the bias of 1 - (1 - c/n)^k. ValueError unless 0 <= c <= n and 1 <= k <= n.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
