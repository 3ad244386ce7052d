"""Quality on the tiny task (slow): tiny prefs -> reward model accuracy; DPO accuracy and win rate over the base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignment.config import DPOConfig, load_config
from tests.conftest import REPO, read_metrics, tiny_overrides


def test_tiny_prefs_rank_by_judge_and_expand_into_pairs(tiny_prefs):
    rankings = [json.loads(line) for line in (tiny_prefs / "rankings_eval.jsonl").read_text().splitlines()]
    for row in rankings:  # the held-out split is ranked by the gold judge without noise
        by_rank = [score for _, score in sorted(zip(row["ranks"], row["judge_scores"]))]
        assert by_rank == sorted(by_rank, reverse=True)
    pairs = (tiny_prefs / "pairs_eval.jsonl").read_text().splitlines()
    ties = sum(len(r["ranks"]) - len(set(r["ranks"])) for r in rankings)
    assert len(pairs) <= 6 * len(rankings) and len(pairs) >= 6 * len(rankings) - 6 * ties


@pytest.mark.slow
def test_reward_model_reaches_85_percent_held_out_accuracy(tiny_reward_model):
    final = read_metrics(tiny_reward_model.parent)[-1]
    print(f"reward model held-out accuracy {final['eval/accuracy']:.3f}")
    assert final["eval/accuracy"] >= 0.85


def preference_accuracy(model_dir: Path, pairs_path: Path) -> float:
    """Share of held-out pairs where the model gives the chosen response the higher log-probability."""
    from alignment.config import PreferenceDataConfig
    from alignment.dpo import sequence_logps
    from alignment.models import load_causal_lm, load_tokenizer
    from alignment.preference_data import load_preference_pairs, pair_batch

    tokenizer = load_tokenizer(model_dir)
    pairs = load_preference_pairs(pairs_path, tokenizer, PreferenceDataConfig(train=str(pairs_path), max_length=128))
    model, wins = load_causal_lm(model_dir).eval(), 0
    with torch.no_grad():
        for start in range(0, len(pairs), 64):
            chunk = pairs[start : start + 64]
            logps, _ = sequence_logps(model, pair_batch(chunk, tokenizer.pad_token_id))
            wins += int((logps[: len(chunk)] > logps[len(chunk) :]).sum())
    return wins / len(pairs)


def mean_judge_scores(model_dir: Path, prompts: list, samples: int) -> list[float]:
    from alignment.tiny.prefs import TinyPrefsConfig, sample_responses
    from reward.functions import sentiment_judge

    responses = sample_responses(model_dir, prompts, samples, TinyPrefsConfig(seed=1234))
    return [sum(sentiment_judge(group)) / samples for group in responses]


@pytest.mark.slow
def test_dpo_raises_preference_accuracy_and_beats_base_on_the_judge(tiny_task, tiny_prefs, ray_runtime, tmp_path):
    from alignment.dpo import run_dpo

    overrides = [*tiny_overrides(tiny_task, tiny_prefs, tmp_path / "dpo"), "train.max_steps=40",
                 "train.eval_every=40", "train.save_every=40"]
    final = run_dpo(load_config(DPOConfig, REPO / "configs" / "dpo_tiny.yaml", overrides))
    held_out = tiny_prefs / "pairs_eval.jsonl"
    before, after = preference_accuracy(tiny_task / "base", held_out), preference_accuracy(final, held_out)
    prompts = [json.loads(line)["prompt"] for line in (tiny_task / "data" / "prompts_eval.jsonl").read_text().splitlines()]
    base, tuned = mean_judge_scores(tiny_task / "base", prompts, 4), mean_judge_scores(final, prompts, 4)
    win_rate = sum(t > b for t, b in zip(tuned, base)) / len(prompts)
    print(f"held-out preference accuracy {before:.3f} -> {after:.3f}; win rate vs base {win_rate:.3f} "
          f"over {len(prompts)} prompts; mean judge {sum(base) / len(base):.3f} -> {sum(tuned) / len(tuned):.3f}")
    assert after > before
    assert win_rate >= 0.70
