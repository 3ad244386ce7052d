"""Agreement and consensus against hand-computed and published values."""

from __future__ import annotations

import math

import pytest

from labeling_ui.agreement import candidate_alpha, consensus, kendall_tau_b, krippendorff_alpha, pairwise_tau


def test_kendall_tau_b_by_hand():
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 3, 4]) == 1
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # C=5, D=1
    # one tie in x: C=2, D=0, n0=3, n1=1, n2=0 -> 2 / sqrt(2 * 3)
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))


def test_krippendorff_alpha_by_hand():
    # units (1,1), (2,3), (3,3): o_23 = o_32 = 1, n = (2, 1, 3), n = 6.
    # interval: sum o d2 = 2; sum n_c n_k d2 = 2*(2*1*1 + 2*3*4 + 1*3*1) = 58 -> alpha = 1 - 5*2/58
    units = [[1, 1], [2, 3], [3, 3]]
    assert krippendorff_alpha(units, "interval") == pytest.approx(1 - 10 / 58)
    # nominal: sum o d = 2; sum n_c n_k d = 2*(2*1 + 2*3 + 1*3) = 22 -> 1 - 5*2/22
    assert krippendorff_alpha(units, "nominal") == pytest.approx(1 - 10 / 22)
    # ordinal d_ck = (sum_{g=c..k} n_g - (n_c+n_k)/2)^2: d12 = 1.5^2, d23 = 2^2, d13 = (6-2.5)^2
    observed = 2 * 2.0**2
    expected = 2 * (2 * 1 * 1.5**2 + 2 * 3 * 3.5**2 + 1 * 3 * 2.0**2)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(1 - 5 * observed / expected)


def test_krippendorff_alpha_published_example():
    """Krippendorff (2011), 'Computing Krippendorff's Alpha-Reliability': 4 observers, 12 units, missing data."""
    a = [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None]
    b = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3]
    c = [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None]
    d = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]
    units = list(zip(a, b, c, d, strict=True))
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)


def test_perfect_and_opposed_rankings():
    same = [
        {"ann": {1: 1, 2: 2, 3: 3}, "bob": {1: 1, 2: 2, 3: 3}},
        {"ann": {4: 2, 5: 1}, "bob": {4: 2, 5: 1}},
    ]
    assert candidate_alpha(same) == pytest.approx(1.0)
    assert pairwise_tau(same) == [{"annotator_a": "ann", "annotator_b": "bob", "items": 2, "tau": 1.0}]
    opposed = [{"ann": {1: 1, 2: 2, 3: 3}, "bob": {1: 3, 2: 2, 3: 1}}]
    assert candidate_alpha(opposed) < 0
    assert pairwise_tau(opposed)[0]["tau"] == -1.0


def test_consensus_mean_rank_with_ties():
    rankings = {"a": {1: 1, 2: 2, 3: 3}, "b": {1: 2, 2: 1, 3: 3}, "c": {1: 1, 2: 2, 3: 2}}
    assert consensus(rankings) == {1: 1, 2: 2, 3: 3}  # means 4/3, 5/3, 8/3
    assert consensus({"a": {1: 1, 2: 2}, "b": {1: 2, 2: 1}}) == {1: 1, 2: 1}
