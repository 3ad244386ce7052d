"""PPO losses against hand-derived values and a float64 loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignment.ppo.advantages import grpo_advantages
from alignment.ppo.losses import (
    aggregate,
    entropy_from_logits,
    loss_units,
    mismatch_sequence_mask,
    policy_loss,
    sequence_ratio_loss,
    truncated_is_weights,
    value_loss,
)


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


# --- GSPO, Dr. GRPO's constant aggregation, mismatch correction --------------------------------------


def ragged(rng: np.random.Generator, lengths: list[int], scale: float = 0.3):
    """float64 [B, R] log-probs, old log-probs, per-sequence advantages on tokens, and the 0/1 mask."""
    width = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths], dtype=torch.float64)
    logp = torch.tensor(rng.normal(-1.0, 0.5, (len(lengths), width)), dtype=torch.float64)
    old = logp + torch.tensor(rng.normal(0.0, scale, logp.shape), dtype=torch.float64)
    adv = torch.tensor(rng.normal(size=(len(lengths), 1)), dtype=torch.float64).expand_as(logp) * mask
    return logp * mask, old * mask, adv, mask


@pytest.mark.parametrize("scale", [0.0005, 0.3])  # inside the clip range, and mostly clipped
def test_gspo_matches_the_sequence_objective_and_its_gradient_in_float64(scale):
    lengths = [5, 1, 3, 7, 2]
    logp, old, adv, mask = ragged(np.random.default_rng(3), lengths, scale)
    low, high = 3e-4, 4e-4
    logp = logp.clone().requires_grad_(True)
    loss, clipped, ratio = sequence_ratio_loss(logp, old, adv, mask, low, high)
    total, units = aggregate(loss, mask, "sequence")
    (total / units).backward()
    grad = logp.grad.clone()
    # reference: a float64 loop over sequences of J_i = max(-A s_i, -A clip(s_i)), s_i the geometric-mean ratio
    logp_ref = logp.detach().clone().requires_grad_(True)
    objective = []
    for i, n in enumerate(lengths):
        s = torch.exp((logp_ref[i, :n] - old[i, :n]).mean())
        a = adv[i, 0]
        objective.append(torch.maximum(-a * s, -a * s.clamp(1 - low, 1 + high)))
        assert torch.allclose(ratio[i, :n].detach(), s.detach().expand(n), rtol=1e-12)
        assert bool(clipped[i, 0]) == bool(-a * s.clamp(1 - low, 1 + high) > -a * s)
    reference = torch.stack(objective).mean()
    reference.backward()
    assert float(total / units) == pytest.approx(float(reference), rel=1e-12)
    assert torch.allclose(grad, logp_ref.grad * mask, rtol=1e-10, atol=1e-14)


def test_constant_aggregation_divides_by_sequences_times_the_token_limit():
    values = torch.tensor([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    total, units = aggregate(values, mask, "constant", max_length=8)
    assert (total.item(), units) == (6.0, 16.0)  # Dr. GRPO: (1 + 3 + 2) / (2 sequences x 8 tokens)
    assert loss_units(mask, "constant", 8) == 16.0 and loss_units(mask, "token") == 3.0
    with pytest.raises(ValueError, match="max_length"):
        aggregate(values, mask, "constant")


def test_dr_grpo_loss_equals_a_float64_reference_on_ragged_lengths():
    """Dr. GRPO: advantage r - mean(group) (no std), loss sum_i sum_t l_it / (G x L_max)."""
    rng = np.random.default_rng(5)
    lengths, limit, group = [4, 2, 6, 1, 3, 5], 6, 3
    scores = torch.tensor(rng.normal(size=6), dtype=torch.float64)
    per_sequence = grpo_advantages(scores, group, scale=False)
    logp, old, _, mask = ragged(rng, lengths)
    adv = per_sequence[:, None] * mask
    loss, _, _ = policy_loss(logp, old, adv)
    total, units = aggregate(loss, mask, "constant", limit)
    expected = 0.0
    for i, n in enumerate(lengths):
        baseline = float(scores[(i // group) * group : (i // group + 1) * group].mean())
        a = float(scores[i]) - baseline
        for t in range(n):
            r = math.exp(float(logp[i, t] - old[i, t]))
            expected += max(-a * r, -a * min(max(r, 0.8), 1.2))
    assert float(total / units) == pytest.approx(expected / (len(lengths) * limit), rel=1e-12)


def test_truncated_importance_sampling_weights():
    rng = np.random.default_rng(7)
    old, rollout, _, mask = ragged(rng, [3, 5, 1], scale=1.0)
    weights, capped = truncated_is_weights(old, rollout, mask, cap=2.0)
    raw = torch.exp(old - rollout) * mask
    assert torch.allclose(weights, raw.clamp(max=2.0))
    assert torch.equal(capped.bool(), (raw > 2.0) & mask.bool()) and capped.any()
    # cap infinity (None) is the untruncated ratio; equal log-probs weigh every token 1
    assert torch.allclose(truncated_is_weights(old, rollout, mask, None)[0], raw)
    assert torch.allclose(truncated_is_weights(old, rollout, mask, math.inf)[0], raw)
    ones, none_capped = truncated_is_weights(old, old, mask, 2.0)
    assert torch.equal(ones, mask) and not none_capped.any()


def test_tis_with_equal_logprobs_leaves_the_loss_unchanged_and_infinite_cap_is_plain_importance_sampling():
    rng = np.random.default_rng(9)
    logp, old, adv, mask = ragged(rng, [4, 2, 6])
    loss, _, _ = policy_loss(logp, old, adv)
    weights, _ = truncated_is_weights(old, old, mask, 2.0)
    assert torch.equal(aggregate(loss * weights, mask, "token")[0], aggregate(loss, mask, "token")[0])
    rollout = old + torch.tensor(rng.normal(0, 0.4, old.shape), dtype=torch.float64) * mask
    weights, _ = truncated_is_weights(old, rollout, mask, math.inf)
    expected = sum(float(loss[i, t]) * math.exp(float(old[i, t] - rollout[i, t]))
                   for i, n in enumerate([4, 2, 6]) for t in range(n))
    assert float(aggregate(loss * weights, mask, "token")[0]) == pytest.approx(expected, rel=1e-12)


def test_mismatch_mask_keeps_sequences_within_the_threshold():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    old = torch.zeros(3, 3)
    # mean log-ratios: 0.1, -log(3) (ratio 1/3), +1.0 (ratio e)
    rollout = torch.tensor([[-0.1, -0.1, 9.0], [math.log(3)] * 3, [-1.0, 0.0, 0.0]])
    assert mismatch_sequence_mask(old, rollout, mask, 2.0).tolist() == [1.0, 0.0, 0.0]
    assert mismatch_sequence_mask(old, rollout, mask, 3.01).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="> 1"):
        mismatch_sequence_mask(old, rollout, mask, 1.0)
