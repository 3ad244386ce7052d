import numpy as np

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
