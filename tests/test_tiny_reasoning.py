"""The tiny reasoning task (generated arithmetic with exact answers), and RL with a verifiable reward on it:
GRPO and DAPO (slow) through the real Ray/DeepSpeed/vLLM path, with held-out accuracy and pass@k."""

from __future__ import annotations

import json
import random
import re
import subprocess

import pytest

from alignment.tiny.arithmetic import expression, make_problem, make_rows, solve
from tests.conftest import ALIGN, REPO, read_metrics, subprocess_env


def expression_in(question: str) -> str:
    return re.search(r"\d+(?: [+-] \d+)+", question)[0]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_solutions_work_each_step_and_stay_in_range():
    rng = random.Random(4)
    for steps in (1, 2, 3, 4):
        for _ in range(200):
            numbers, ops = make_problem(rng, steps, operand_max=25, value_max=60)
            text, answer = solve(numbers, ops)
            assert answer == eval(expression(numbers, ops))  # noqa: S307 (digits and + - only)
            values = [int(sentence.rsplit("= ", 1)[1]) for sentence in text.split(". ")[:-1]]
            assert len(values) == steps and all(0 <= v <= 60 for v in values)
            assert text.endswith(f"<answer>{answer}</answer>")
    assert solve([17, 8, 19], ["+", "-"]) == ("17 + 8 = 25. 25 - 19 = 6. <answer>6</answer>", 6)


def test_rows_are_distinct_and_avoid_excluded_expressions():
    held_out = make_rows(3, 100, [2, 3])
    rows = make_rows(0, 2000, [1, 2, 3], {r["expression"] for r in held_out})
    assert len({r["expression"] for r in rows}) == 2000
    assert not {r["expression"] for r in rows} & {r["expression"] for r in held_out}
    assert make_rows(0, 50, [2]) == make_rows(0, 50, [2])  # seeded


def test_the_built_task_holds_out_its_eval_problems(tiny_reasoning):
    data = tiny_reasoning / "data"
    manifest = json.loads((tiny_reasoning / "manifest.json").read_text())
    config = manifest["config"]
    held_out = read_jsonl(data / "prompts_eval.jsonl")
    assert len(held_out) == config["eval_prompts"]
    assert {row["steps"] for row in held_out} <= set(config["eval_steps"])
    for row in held_out:
        assert row["answer"] == str(eval(expression_in(row["prompt"][0]["content"])))  # noqa: S307
    unseen = {expression_in(row["prompt"][0]["content"]) for row in held_out}
    for name in ("sft_train", "sft_eval"):
        assert not unseen & {expression_in(row["messages"][0]["content"]) for row in read_jsonl(data / f"{name}.jsonl")}
    assert not unseen & {expression_in(row["prompt"][0]["content"]) for row in read_jsonl(data / "prompts_train.jsonl")}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_reasoning / "base")
    assert tokenizer.tokenize("125") == ["1", "2", "5"]  # digits are single tokens


def run_rl(config: str, tiny_reasoning, output, steps: int, extra: list[str]) -> list[dict]:
    data = tiny_reasoning / "data"
    overrides = [f"model={tiny_reasoning / 'base'}", f"output_dir={output}", f"data.train={data / 'prompts_train.jsonl'}",
                 f"data.eval={data / 'prompts_eval.jsonl'}", f"train.max_steps={steps}", f"train.eval_every={steps}",
                 f"train.save_every={steps}", "tracking.progress=false", "tracking.tensorboard=false", *extra]
    result = subprocess.run([*ALIGN, "ppo", "--config", str(REPO / "configs" / f"{config}.yaml"), *overrides],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_metrics(output)


def summary(config: str, rows: list[dict]) -> str:
    base, tuned = rows[0], rows[-1]
    keys = ["eval/accuracy", "eval/greedy_accuracy", "eval/pass@8"]
    return f"{config}: " + ", ".join(f"{k} {base[k]:.3f} -> {tuned[k]:.3f}" for k in keys)


STEPS = 8


@pytest.mark.slow
def test_grpo_with_a_verifier_runs_end_to_end_and_keeps_the_base_skill(tiny_reasoning, tmp_path):
    rows = run_rl("grpo_reasoning_tiny", tiny_reasoning, tmp_path / "grpo", STEPS, [])
    print(summary("grpo", rows))
    base, tuned = rows[0], rows[-1]
    assert tuned["step"] == STEPS
    assert 0.1 <= base["eval/accuracy"] <= 0.6, "the base is right on part of the held-out problems"
    assert tuned["eval/accuracy"] >= base["eval/accuracy"] - 0.08  # a sign error or a broken sync collapses it
    assert tuned["eval/pass@1"] == pytest.approx(tuned["eval/accuracy"])
    assert tuned["eval/pass@8"] >= tuned["eval/pass@4"] >= tuned["eval/pass@2"] >= tuned["eval/pass@1"]
    assert max(r["kl/sequence"] for r in rows[1:]) < 5.0
    assert all(r["rollout/mismatch"] < 1.05 for r in rows[1:])  # the engines get the trained weights
    assert all("mismatch/capped_fraction" in r for r in rows[1:])  # TIS is on by default


@pytest.mark.slow
def test_dapo_drops_groups_without_signal(tiny_reasoning, tmp_path):
    rows = run_rl("dapo_reasoning_tiny", tiny_reasoning, tmp_path / "dapo", STEPS, [])
    print(summary("dapo", rows))
    base, tuned, steps = rows[0], rows[-1], rows[1:]
    assert tuned["step"] == STEPS
    assert tuned["eval/accuracy"] >= base["eval/accuracy"] - 0.08
    assert all(r["dynamic/prompts_sampled"] >= 16 for r in steps)
    assert all(r["dynamic/kept_groups"] == 16 or r["dynamic/repeated_groups"] > 0 for r in steps)
    assert any(r["dynamic/extra_rounds"] > 0 for r in steps), "some step needed more prompts"
    assert all("reward/overlong" in r and "kl/sequence" in r for r in steps)
