"""Arena ratings from pairwise votes: online Elo and Bradley-Terry maximum likelihood, with bootstrap CIs.

A vote ``(model_a, model_b, outcome)`` scores 1 for A when A won, 0 when B won and 1/2 for a tie; "both
bad" also counts as a tie (neither answer was preferred). Both ratings are on the Elo scale: a difference
of 400 points means 10:1 odds of winning, and the mean rating over the models is 1000.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from alignment.stats import bootstrap_ci

SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
INITIAL = 1000.0
SCALE = 400.0  # rating points per factor 10 in odds

Matchups = tuple[np.ndarray, np.ndarray, np.ndarray]  # index of A, index of B, A's score


def encode(votes: Sequence[tuple[str, str, str]], models: Sequence[str]) -> Matchups:
    """Votes as three arrays: model index of A, of B, and A's score (1, 1/2 or 0)."""
    index = {model: i for i, model in enumerate(models)}
    first = np.array([index[a] for a, _, _ in votes], dtype=np.int64)
    second = np.array([index[b] for _, b, _ in votes], dtype=np.int64)
    score = np.array([SCORES[outcome] for _, _, outcome in votes], dtype=np.float64)
    return first, second, score


def elo_ratings(matchups: Matchups, models: int, k: float = 16.0) -> np.ndarray:
    """Online Elo in vote order (Elo, 1978), every model starting at 1000.

    E_A = 1 / (1 + 10^((R_B - R_A) / 400));  R_A += K (S_A - E_A);  R_B -= K (S_A - E_A).
    """
    ratings = [INITIAL] * models
    for i, j, score in zip(*(array.tolist() for array in matchups)):
        delta = k * (score - 1.0 / (1.0 + 10.0 ** ((ratings[j] - ratings[i]) / SCALE)))
        ratings[i] += delta
        ratings[j] -= delta
    return np.array(ratings)


def win_matrix(matchups: Matchups, models: int) -> np.ndarray:
    """``wins[i, j]``: i's total score against j (a tie gives each side 1/2)."""
    first, second, score = matchups
    wins = np.zeros((models, models))
    np.add.at(wins, (first, second), score)
    np.add.at(wins, (second, first), 1.0 - score)
    return wins


def bradley_terry_ratings(
    matchups: Matchups, models: int, prior: float = 1.0, tolerance: float = 1e-10, max_steps: int = 100
) -> np.ndarray:
    """Maximum likelihood of P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)) (Bradley & Terry, 1952).

    Newton's method on the log-likelihood sum_ij wins[i, j] log P(i beats j), with mean rating 1000.
    ``prior`` adds that many virtual ties between every two models, which keeps the estimate finite when a
    model never won or never lost; ``prior=0`` is the plain MLE (then every model needs a win and a loss).
    """
    wins = win_matrix(matchups, models) + prior / 2.0 * (1.0 - np.eye(models))
    games = wins + wins.T
    strength = np.zeros(models)  # natural-log strengths, mean 0
    centre = np.full((models, models), 1.0 / models)  # fixes the free shift: steps keep the mean at 0
    for _ in range(max_steps):
        p = 1.0 / (1.0 + np.exp(strength[None, :] - strength[:, None]))  # p[i, j] = P(i beats j)
        gradient = (wins - games * p).sum(axis=1)
        weight = games * p * p.T
        curvature = np.diag(weight.sum(axis=1)) - weight  # minus the Hessian: a graph Laplacian
        step = np.linalg.lstsq(curvature + centre, gradient, rcond=None)[0]
        step *= min(1.0, 2.0 / max(np.abs(step).max(), 1e-300))  # damped: at most 2 nats per step
        strength += step
        if np.abs(step).max() < tolerance:
            break
    return INITIAL + SCALE * (strength - strength.mean()) / math.log(10.0)


def _memoised(rate: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], Any]:
    """``rate(indices)`` computed once per resample, so one bootstrap serves every model's interval."""
    cache: dict[bytes, Any] = {}

    def cached(indices: np.ndarray) -> Any:
        key = hashlib.blake2b(indices.tobytes(), digest_size=16).digest()
        if key not in cache:
            cache[key] = rate(indices)
        return cache[key]

    return cached


def leaderboard(
    votes: Sequence[tuple[str, str, str]],
    *,
    k: float = 16.0,
    prior: float = 1.0,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per model, best Bradley-Terry rating first, from votes in the order they were cast.

    Confidence intervals are percentile bootstraps over votes (``alignment.stats.bootstrap_ci``): each
    resample draws the votes with replacement, in random order, and recomputes both ratings (for Elo the
    random order is part of the resample, so its interval also covers the order dependence).
    """
    models = sorted({model for a, b, _ in votes for model in (a, b)})
    if not models:
        return []
    matchups = encode(votes, models)

    def ratings(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sample = tuple(array[indices] for array in matchups)
        return elo_ratings(sample, len(models), k), bradley_terry_ratings(sample, len(models), prior)

    resampled = _memoised(ratings)
    elo, bt = ratings(np.arange(len(votes)))
    wins = win_matrix(matchups, len(models))
    played = (wins + wins.T).sum(axis=1)
    rows = []
    for i, model in enumerate(models):
        intervals = [
            bootstrap_ci(
                len(votes), lambda idx, m=method, i=i: resampled(idx)[m][i], resamples, confidence, seed
            )
            for method in (0, 1)
        ]
        rows.append(
            {
                "model": model,
                "elo": round(float(elo[i]), 1),
                "elo_ci": [round(bound, 1) for bound in intervals[0]],
                "bt": round(float(bt[i]), 1),
                "bt_ci": [round(bound, 1) for bound in intervals[1]],
                "votes": int(played[i]),
                "win_rate": round(float(wins[i].sum() / played[i]), 3),
            }
        )
    return sorted(rows, key=lambda row: (-row["bt"], -row["elo"], row["model"]))
