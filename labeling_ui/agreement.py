"""Inter-annotator agreement and consensus rankings.

Rankings are dicts candidate id -> rank (1 best; equal ranks are ties); ratings are dicts candidate
id -> rating (thumbs 0/1, or 1 to 5).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Literal

Level = Literal["nominal", "ordinal", "interval"]


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either ranking corrected), NaN when either ranking is all ties.

    tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2)), n0 = n(n-1)/2, n1/n2 = pairs tied in x/y.
    """
    if len(x) != len(y):
        raise ValueError("rankings must have the same length")
    concordant = discordant = tied_x = tied_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        tied_x += dx == 0
        tied_y += dy == 0
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    pairs = len(x) * (len(x) - 1) // 2
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return (concordant - discordant) / denominator if denominator else math.nan


def pairwise_tau(items: Sequence[Mapping[str, Mapping[int, int]]]) -> list[dict]:
    """Mean Kendall tau-b per pair of annotators over the items both ranked (items where tau is undefined are left out)."""
    taus: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rankings in items:
        for a, b in combinations(sorted(rankings), 2):
            ids = sorted(rankings[a])
            tau = kendall_tau_b([rankings[a][i] for i in ids], [rankings[b][i] for i in ids])
            if not math.isnan(tau):
                taus[(a, b)].append(tau)
    return [
        {"annotator_a": a, "annotator_b": b, "items": len(values), "tau": round(sum(values) / len(values), 4)}
        for (a, b), values in sorted(taus.items())
    ]


def krippendorff_alpha(units: Sequence[Sequence[float | None]], level: Level = "ordinal") -> float:
    """Krippendorff's alpha from reliability data: one sequence of coder values per unit (None = missing).

    alpha = 1 - (n - 1) * sum_ck o_ck d2_ck / sum_ck n_c n_k d2_ck, with the coincidence matrix
    o_ck = sum_u (number of ordered c-k pairs in u) / (m_u - 1) over units with m_u >= 2 values
    (Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011). NaN without disagreement to expect.
    """
    coincidences: dict[tuple[float, float], float] = defaultdict(float)
    for unit in units:
        values = [v for v in unit if v is not None]
        if len(values) < 2:
            continue
        for i, j in ((i, j) for i in range(len(values)) for j in range(len(values)) if i != j):
            coincidences[(values[i], values[j])] += 1 / (len(values) - 1)
    totals: dict[float, float] = defaultdict(float)
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    categories = sorted(totals)
    delta = _distance(categories, totals, level)
    observed = sum(weight * delta(c, k) for (c, k), weight in coincidences.items())
    expected = sum(totals[c] * totals[k] * delta(c, k) for c in categories for k in categories)
    return 1 - (n - 1) * observed / expected if expected else math.nan


def _distance(categories: list[float], totals: Mapping[float, float], level: Level):
    if level == "nominal":
        return lambda c, k: float(c != k)
    if level == "interval":
        return lambda c, k: float(c - k) ** 2
    if level == "ordinal":
        index = {c: i for i, c in enumerate(categories)}

        def ordinal(c: float, k: float) -> float:
            low, high = sorted((index[c], index[k]))
            between = sum(totals[categories[g]] for g in range(low, high + 1))
            return (between - (totals[c] + totals[k]) / 2) ** 2

        return ordinal
    raise ValueError(f"unknown level {level!r}")


def candidate_alpha(items: Sequence[Mapping[str, Mapping[int, int]]], level: Level = "ordinal") -> float:
    """Alpha for rankings or ratings: each (item, candidate) is a unit, each annotator's rank or rating of
    it a value (ratings: nominal for thumbs, ordinal for 1 to 5)."""
    units: list[list[float | None]] = []
    for rankings in items:
        candidates = {c for ranks in rankings.values() for c in ranks}
        for candidate in sorted(candidates):
            units.append([ranks.get(candidate) for ranks in rankings.values()])
    return krippendorff_alpha(units, level)


def consensus(rankings: Mapping[str, Mapping[Hashable, int]]) -> dict[Hashable, int]:
    """Consensus by mean rank (Borda count for complete rankings): dense ranks, equal means tie."""
    mean = {
        candidate: sum(ranks[candidate] for ranks in rankings.values()) / len(rankings)
        for candidate in next(iter(rankings.values()))
    }
    levels = sorted({round(value, 9) for value in mean.values()})
    return {candidate: levels.index(round(value, 9)) + 1 for candidate, value in mean.items()}
