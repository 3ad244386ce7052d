import numpy as np
import pytest

from alignment.stats import bootstrap_ci


def test_bootstrap_ci_matches_a_direct_resampling_loop():
    values = np.array([1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1.0])
    low, high = bootstrap_ci(len(values), lambda idx: values[idx].mean(), resamples=500, seed=3)
    rng = np.random.default_rng(3)
    means = [values[rng.integers(0, len(values), size=len(values))].mean() for _ in range(500)]
    assert (low, high) == tuple(np.quantile(means, [0.025, 0.975]))
    assert low < values.mean() < high


def test_bootstrap_ci_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    width = [np.subtract(*bootstrap_ci(len(x), lambda i, x=x: x[i].mean())[::-1]) for x in (small, large)]
    assert width[1] < width[0] / 5
    assert np.isnan(bootstrap_ci(0, lambda i: 0.0)[0])


def test_pass_at_k_equals_exact_enumeration_of_k_subsets():
    from itertools import combinations
    from math import comb

    from alignment.stats import pass_at_k

    for n in range(1, 9):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                hits = sum(any(s) for s in combinations(samples, k))
                assert pass_at_k(n, c, k) == pytest.approx(hits / comb(n, k), abs=1e-12)
    assert pass_at_k(200, 3, 1) == pytest.approx(3 / 200)  # pass@1 is the share correct
    assert pass_at_k(10**6, 1, 10**5) == pytest.approx(0.1)  # no huge binomials
    for bad in ((4, 5, 1), (4, 2, 0), (4, 2, 5)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)
