"""Advantage estimators and KL estimators against float64 loop implementations on random, ragged batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignment.ppo.advantages import (
    gae,
    grpo_advantages,
    masked_whiten,
    reinforce_plus_plus,
    rloo_advantages,
)
from alignment.ppo.kl import AdaptiveKLController, kl_estimate

rng = np.random.default_rng(0)
LENGTHS = [7, 3, 1, 5, 7, 2]  # responses of different lengths, right-padded to 7


def ragged(batch_lengths=LENGTHS, width=7):
    mask = np.array([[1.0] * n + [0.0] * (width - n) for n in batch_lengths])
    return rng.normal(size=mask.shape) * mask, rng.normal(size=mask.shape) * mask, mask


def as_torch(*arrays):
    return [torch.tensor(a, dtype=torch.float32) for a in arrays]


def gae_reference(rewards, values, length, gamma, lam):
    advantages = [0.0] * length
    for t in range(length):  # forward sums, independent of the backward recursion
        total = 0.0
        for k in range(t, length):
            next_value = values[k + 1] if k + 1 < length else 0.0
            delta = rewards[k] + gamma * next_value - values[k]
            total += (gamma * lam) ** (k - t) * delta
        advantages[t] = total
    return advantages


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0)])
def test_gae_matches_float64_reference_with_padding(gamma, lam):
    rewards, values, mask = ragged()
    advantages, returns = gae(*as_torch(rewards, values, mask), gamma, lam)
    for row, n in enumerate(LENGTHS):
        expected = gae_reference(rewards[row], values[row], n, gamma, lam)
        np.testing.assert_allclose(advantages[row, :n].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(returns[row, :n].numpy(), np.array(expected) + values[row, :n], atol=1e-5)
        assert not advantages[row, n:].any() and not returns[row, n:].any()


def test_grpo_and_rloo_match_float64_reference():
    scores = rng.normal(size=12)
    group = 4
    grpo = grpo_advantages(torch.tensor(scores, dtype=torch.float32), group).numpy()
    rloo = rloo_advantages(torch.tensor(scores, dtype=torch.float32), group).numpy()
    for start in range(0, 12, group):
        block = scores[start:start + group]
        mean = sum(block) / group
        std = math.sqrt(sum((x - mean) ** 2 for x in block) / (group - 1))
        for i, x in enumerate(block):
            assert grpo[start + i] == pytest.approx((x - mean) / (std + 1e-6), rel=1e-5)
            others = [y for j, y in enumerate(block) if j != i]
            assert rloo[start + i] == pytest.approx(x - sum(others) / len(others), rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="groups of 5"):
        grpo_advantages(torch.zeros(12), 5)


@pytest.mark.parametrize("baseline", [False, True])
def test_reinforce_plus_plus_matches_float64_reference(baseline):
    kl, _, mask = ragged()
    scores = rng.normal(size=len(LENGTHS))
    kl_coef, group = 0.1, 2
    result = reinforce_plus_plus(*as_torch(scores, mask, kl), kl_coef=kl_coef,
                                 group_size=group if baseline else None)
    shifted = scores.copy()
    if baseline:
        for start in range(0, len(scores), group):
            shifted[start:start + group] -= scores[start:start + group].mean()
    returns = []
    for row, n in enumerate(LENGTHS):
        token_rewards = [-kl_coef * kl[row, t] + (shifted[row] if t == n - 1 else 0.0) for t in range(n)]
        returns.append([sum(token_rewards[t:]) for t in range(n)])
    flat = np.concatenate(returns)
    whitened = (flat - flat.mean()) / math.sqrt(flat.var(ddof=1) + 1e-8)
    got = np.concatenate([result[row, :n].numpy() for row, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(got, whitened, rtol=1e-4, atol=1e-5)
    assert not (result * (1 - torch.tensor(mask, dtype=torch.float32))).any()


def test_whitening_ignores_padding():
    values, _, mask = ragged()
    whitened = masked_whiten(*as_torch(values, mask))
    kept = whitened[torch.tensor(mask) > 0]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6) and kept.std().item() == pytest.approx(1.0, rel=1e-4)


def test_kl_estimators_against_hand_values_and_zero_at_identity():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])
    r = np.array([0.5, -1.0])
    np.testing.assert_allclose(kl_estimate(logp, ref, "k1"), r)
    np.testing.assert_allclose(kl_estimate(logp, ref, "k2"), 0.5 * r**2)
    np.testing.assert_allclose(kl_estimate(logp, ref, "k3"), np.exp(-r) - 1 + r, rtol=1e-6)
    for kind in ("k1", "k2", "k3"):
        assert not kl_estimate(logp, logp, kind).any()


def test_k3_is_unbiased_for_the_true_kl():
    p = torch.distributions.Categorical(logits=torch.tensor([1.0, 0.0, -1.0]))
    q = torch.distributions.Categorical(logits=torch.tensor([0.0, 0.5, 0.0]))
    torch.manual_seed(0)
    samples = p.sample((200_000,))
    estimate = kl_estimate(p.log_prob(samples), q.log_prob(samples), "k3").mean().item()
    assert estimate == pytest.approx(torch.distributions.kl_divergence(p, q).item(), rel=0.02)


def test_adaptive_controller_moves_toward_target():
    controller = AdaptiveKLController(coef=0.1, target=6.0, horizon=10_000)
    controller.update(current_kl=12.0, steps=256)  # error clipped at +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
    controller.update(current_kl=3.0, steps=256)  # error -0.5 clipped at -0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000) * (1 - 0.2 * 256 / 10_000))
