"""Quality on the tiny task (slow): GRPO with the learned reward model raises the gold judge's score.

PPO with a reward model trained on annotated rankings is checked end to end by tests/test_demo.py.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ALIGN, REPO, read_metrics, subprocess_env

STEPS = 12


@pytest.mark.slow
@pytest.mark.parametrize("config", ["grpo_tiny"])
def test_rl_raises_the_gold_judge_on_held_out_prompts(config, tiny_task, tiny_reward_model, tmp_path):
    output = tmp_path / config
    overrides = [f"model={tiny_task / 'base'}", f"output_dir={output}", f"reward.model={tiny_reward_model}",
                 f"data.train={tiny_task / 'data' / 'prompts_train.jsonl'}",
                 f"data.eval={tiny_task / 'data' / 'prompts_eval.jsonl'}",
                 f"train.max_steps={STEPS}", f"train.eval_every={STEPS}", f"train.save_every={STEPS}",
                 "tracking.progress=false", "tracking.tensorboard=false"]
    result = subprocess.run([*ALIGN, "ppo", "--config", str(REPO / "configs" / f"{config}.yaml"), *overrides],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(output)
    base, tuned = rows[0], rows[-1]
    kl = [r["kl/sequence"] for r in rows[1:]]
    print(f"{config}: held-out gold judge {base['eval/gold']:.3f} -> {tuned['eval/gold']:.3f} "
          f"(reward model {base['eval/score']:.3f} -> {tuned['eval/score']:.3f}); KL per sequence max {max(kl):.2f}, "
          f"final {kl[-1]:.2f}; {sum(r['time/step_s'] for r in rows[1:]):.0f} s for {STEPS} steps")
    assert tuned["step"] == STEPS
    assert tuned["eval/gold"] >= base["eval/gold"] + 0.2
    assert tuned["eval/score"] > base["eval/score"]
    assert max(kl) < 8.0
