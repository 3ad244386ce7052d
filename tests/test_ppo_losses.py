"""PPO losses against hand-derived values and a float64 loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignment.ppo.losses import aggregate, entropy_from_logits, policy_loss, value_loss


def test_ratio_one_gives_minus_advantage_and_no_clipping():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    advantages = torch.tensor([[1.0, -2.0, 0.5]])
    loss, clipped, ratio = policy_loss(logp, logp, advantages)
    assert torch.equal(ratio, torch.ones_like(ratio))
    assert torch.equal(loss, -advantages) and not clipped.any()


def test_policy_loss_matches_float64_loop_with_asymmetric_and_dual_clip():
    rng = np.random.default_rng(1)
    logp, old, adv = (rng.normal(scale=s, size=40) for s in (0.5, 0.5, 1.0))
    low, high, dual = 0.2, 0.28, 3.0
    loss, clipped, _ = policy_loss(*(torch.tensor(x, dtype=torch.float64) for x in (logp, old, adv)),
                                   clip_low=low, clip_high=high, dual_clip=dual)
    for i in range(40):
        ratio = math.exp(logp[i] - old[i])
        bounded = min(max(ratio, 1 - low), 1 + high)
        expected = max(-adv[i] * ratio, -adv[i] * bounded)
        if adv[i] < 0:
            expected = min(expected, -adv[i] * dual)
        assert loss[i].item() == pytest.approx(expected, rel=1e-12)
        assert clipped[i].item() == float(-adv[i] * bounded > -adv[i] * ratio)


def test_hand_derived_clipping_cases():
    # ratio e^0.5 = 1.6487 with A = +1: clipped at 1.2 -> loss -1.2; with A = -1: unclipped 1.6487
    logp, old = torch.tensor([0.5, 0.5]), torch.tensor([0.0, 0.0])
    loss, clipped, _ = policy_loss(logp, old, torch.tensor([1.0, -1.0]))
    assert loss.tolist() == pytest.approx([-1.2, math.exp(0.5)])
    assert clipped.tolist() == [1.0, 0.0]
    # dual clip c=1.5 caps the A<0 loss at 1.5
    loss, _, _ = policy_loss(logp, old, torch.tensor([1.0, -1.0]), dual_clip=1.5)
    assert loss.tolist() == pytest.approx([-1.2, 1.5])


def test_value_loss_clipping():
    values, old, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0])
    # first: V moved 1.0 away from R=0; clipped V=0.2 -> max(1, 0.04)/2 = 0.5
    # second: V=0, R=1 -> (0-1)^2 = 1 both ways -> 0.5
    assert value_loss(values, old, returns, clip=0.2).tolist() == pytest.approx([0.5, 0.5])
    values = torch.tensor([0.9])  # towards R=1 from 0: clipped 0.2 -> (0.2-1)^2 = 0.64 > 0.01
    assert value_loss(values, torch.tensor([0.0]), torch.tensor([1.0]), clip=0.2).item() == pytest.approx(0.32)
    assert value_loss(values, torch.tensor([0.0]), torch.tensor([1.0]), clip=None).item() == pytest.approx(0.005)


def test_entropy_uniform_and_peaked():
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_aggregation_modes():
    values = torch.tensor([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    total, units = aggregate(values, mask, "token")
    assert (total.item(), units) == (6.0, 3.0)  # mean 2.0 over tokens
    total, units = aggregate(values, mask, "sequence")
    assert (total.item(), units) == (4.0, 2.0)  # (2 + 2) / 2 sequences
