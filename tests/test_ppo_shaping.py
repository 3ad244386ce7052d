"""DAPO's overlong penalty and dynamic-sampling filter, and the recipe presets of `align ppo`."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from alignment.ppo.advantages import grpo_advantages
from alignment.ppo.config import PPOConfig
from alignment.ppo.shaping import fill_groups, informative_groups, overlong_penalty


def test_overlong_penalty_is_zero_then_linear_then_minus_one():
    # L_max 10, buffer 4: no penalty up to 6 tokens, -(|y| - 6) / 4 up to 10, -1 beyond
    lengths = torch.tensor([1, 6, 7, 8, 10, 12])
    assert overlong_penalty(lengths, 10, 4).tolist() == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    assert overlong_penalty(lengths, 10, 4, factor=0.5).tolist() == pytest.approx([0, 0, -0.125, -0.25, -0.5, -0.5])
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 10, 11)


def test_informative_groups_are_those_with_unequal_rewards():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5 + 1e-3, 0.2, 0.2, 0.2 + 1e-8])
    # groups of 3: all 1 | 0 0 0 | one differs by 1e-3 | equal within the tolerance
    assert informative_groups(scores, 3).tolist() == [False, False, True, False]
    assert informative_groups(scores, 4).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="groups of 5"):
        informative_groups(scores, 5)


def test_dynamic_sampling_never_keeps_a_zero_advantage_group():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        scores = torch.randint(0, 2, (8 * 4,), generator=generator).float()  # 0/1 rewards, groups of 4
        kept = informative_groups(scores, 4).nonzero().flatten().tolist()
        batch = torch.cat([scores[g * 4 : (g + 1) * 4] for g in fill_groups(kept, 8)]) if kept else torch.zeros(0)
        if kept:
            advantages = grpo_advantages(batch, 4).view(-1, 4)
            assert (advantages.abs().sum(dim=1) > 0).all()  # every trained group carries a signal
            assert len(batch) == 32
        all_equal = [g for g in range(8) if scores[g * 4 : (g + 1) * 4].unique().numel() == 1]
        assert not set(all_equal) & set(kept)


def test_fill_groups_repeats_kept_groups_to_the_batch_size():
    assert fill_groups([3, 5, 6, 7], 3) == [3, 5, 6]
    assert fill_groups([3, 5], 5) == [3, 5, 3, 5, 3]
    assert fill_groups([], 4) == []


BASE = {"model": "m", "output_dir": "o", "data": {"train": "t"}, "reward": {"functions": ["math_answer"]},
        "sampling": {"n": 4, "max_tokens": 48}}


def config(**extra) -> PPOConfig:
    merged = {**BASE, **extra}
    for key in ("reward", "sampling"):
        if key in extra:
            merged[key] = {**BASE[key], **extra[key]}
    return PPOConfig.model_validate(merged)


def test_dapo_preset_fills_in_the_recipe_and_explicit_keys_win():
    c = config(preset="dapo")
    a = c.algorithm
    assert (a.advantage, a.clip_low, a.clip_high, a.loss_aggregation, a.dynamic_sampling) == ("grpo", 0.2, 0.28, "token", True)
    assert c.reward.overlong_buffer == 12 and c.kl.coef == 0.0 and c.roles == ["actor"]
    c = config(preset="dapo", algorithm={"clip_high": 0.3}, kl={"coef": 0.01}, reward={"overlong_buffer": 4})
    assert (c.algorithm.clip_high, c.algorithm.dynamic_sampling, c.kl.coef, c.reward.overlong_buffer) == (0.3, True, 0.01, 4)


def test_dr_grpo_and_gspo_presets():
    a = config(preset="dr_grpo").algorithm
    assert (a.advantage, a.grpo_scale, a.loss_aggregation) == ("grpo", False, "constant")
    a = config(preset="gspo").algorithm
    assert (a.importance_ratio, a.loss_aggregation, a.clip_low, a.clip_high) == ("sequence", "sequence", 3e-4, 4e-4)


@pytest.mark.parametrize(("extra", "message"), [
    ({"preset": "ppo2"}, "preset"),
    ({"algorithm": {"importance_ratio": "sequence"}}, "importance_ratio=sequence"),
    ({"algorithm": {"advantage": "gae", "dynamic_sampling": True}}, "dynamic_sampling"),
    ({"reward": {"overlong_buffer": 64}}, "overlong_buffer"),
    ({"algorithm": {"mismatch_mask": 0.5}}, "mismatch_mask"),
])
def test_inconsistent_recipes_name_the_key(extra, message):
    with pytest.raises(ValidationError, match=message):
        config(**extra)
