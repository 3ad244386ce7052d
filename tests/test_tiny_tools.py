"""The tiny tool-use task (products a calculator answers): the generator, the tokenizer with its tool role,
and the built base model, which calls the tool only sometimes and is right only part of the time."""

from __future__ import annotations

import json
import re

import pytest

from alignment.tiny.tool_use import (
    TOOL_CALL,
    calculate,
    make_rows,
    parse_tool_call,
    play,
    sft_rows,
    summarize,
    tool_call,
)
from tests.test_tiny_reasoning import read_jsonl

RANGES = {"left_max": 999, "right_max": 99, "term_max": 99, "term_fraction": 0.5}


def expression_in(question: str) -> str:
    return re.search(r"\d+ \* \d+(?: [+-] \d+)?", question)[0]


def test_problems_are_seeded_distinct_and_exact():
    held_out = make_rows(3, 200, **RANGES)
    rows = make_rows(0, 4000, {r["expression"] for r in held_out}, **RANGES)
    assert make_rows(0, 50, **RANGES) == make_rows(0, 50, **RANGES)  # seeded
    assert len({r["expression"] for r in rows}) == 4000
    assert not {r["expression"] for r in rows} & {r["expression"] for r in held_out}
    for row in rows + held_out:
        assert row["expression"] in row["question"]
        assert row["answer"] == str(eval(row["expression"])) and int(row["answer"]) > 0  # noqa: S307 (digits, + - *)
    with_term = sum(len(r["expression"].split()) == 5 for r in rows) / len(rows)
    assert 0.4 < with_term < 0.6


def test_tool_traces_are_well_formed():
    rows = make_rows(0, 500, **RANGES)
    conversations = sft_rows(rows, 0.3, seed=0)
    with_tool = [c["messages"] for c in conversations if len(c["messages"]) == 4]
    assert len(with_tool) == 150
    assert sft_rows(rows, 0.3, seed=0) == conversations
    for row, conversation in zip(rows, conversations):
        messages = conversation["messages"]
        assert messages[0] == {"role": "user", "content": row["question"]}
        assert messages[-1] == {"role": "assistant", "content": f"<answer>{row['answer']}</answer>"}
        if len(messages) == 2:
            continue
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
        call = messages[1]["content"]
        body = json.loads(TOOL_CALL.fullmatch(call)[1])
        assert call == f"<tool_call>{json.dumps(body)}</tool_call>"  # json.dumps with default separators
        assert body == {"name": "calculator", "arguments": {"expression": row["expression"]}}
        assert messages[2]["content"] == str(eval(body["arguments"]["expression"])) == row["answer"]  # noqa: S307


def test_the_calculator_and_the_call_parser():
    assert tool_call("347 * 86") == '<tool_call>{"name": "calculator", "arguments": {"expression": "347 * 86"}}</tool_call>'
    assert calculate("347 * 86") == "29842" and calculate("58 * 41 + 17") == "2395" and calculate("007 * 3") == "21"
    for bad in ("__import__('os')", "2 ** 999999", "", None, "1 * " * 10 + "1"):
        assert calculate(bad).startswith("error")
    assert parse_tool_call(tool_call("58 * 41 - 17")) == "58 * 41 - 17"
    assert parse_tool_call("<answer>5</answer>") is None
    assert parse_tool_call('<tool_call>{"name": "calculator", "arguments": {"expression": "1 + ') == ""
    assert parse_tool_call('<tool_call>{"name": "search", "arguments": {"q": "1"}}</tool_call>') == ""
    episodes = [{"tool": True, "correct": True}, {"tool": True, "correct": False}, {"tool": False, "correct": False}]
    assert summarize(episodes) == {"episodes": 3, "tool_rate": 2 / 3, "tool_accuracy": 0.5, "direct_accuracy": 0.0,
                                   "success": 1 / 3}


def test_the_tokenizer_has_a_tool_role_and_splits_digits(tmp_path):
    from alignment.data import tokenize_sft
    from alignment.tiny.tokenizer import SPECIAL_TOKENS, train_tokenizer

    conversations = sft_rows(make_rows(0, 300, **RANGES), 0.5, seed=0)
    texts = [m["content"] for c in conversations for m in c["messages"]]
    tokenizer = train_tokenizer(texts, 384, tmp_path, split_digits=True, extra_special_tokens=["<|tool|>"])
    assert "<|tool|>" not in SPECIAL_TOKENS  # the other tasks' tokenizers are unchanged
    assert tokenizer.tokenize("<|tool|>29842<|end|>") == ["<|tool|>", "2", "9", "8", "4", "2", "<|end|>"]
    assert tokenizer.added_tokens_decoder[tokenizer.convert_tokens_to_ids("<|tool|>")].special
    messages = next(c["messages"] for c in conversations if len(c["messages"]) == 4)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert f"<|tool|>{messages[2]['content']}<|end|><|assistant|><answer>" in text
    example = tokenize_sft(tokenizer, messages, 128)
    assert len(example.input_ids) < 100  # the whole tool trajectory fits the 128 positions easily


def test_the_built_task_holds_out_its_prompts_and_uses_the_tool_sometimes(tiny_tools):
    from transformers import AutoTokenizer

    data = tiny_tools / "data"
    held_out = read_jsonl(data / "prompts_eval.jsonl")
    config = json.loads((tiny_tools / "manifest.json").read_text())["config"]
    assert len(held_out) == config["eval_prompts"]
    for row in held_out:
        assert set(row) == {"prompt", "answer"} and row["answer"] == calculate(expression_in(row["prompt"][0]["content"]))
    unseen = {expression_in(row["prompt"][0]["content"]) for row in held_out}
    for name in ("sft_train", "sft_eval"):
        assert not unseen & {expression_in(r["messages"][0]["content"]) for r in read_jsonl(data / f"{name}.jsonl")}
    assert not unseen & {expression_in(r["prompt"][0]["content"]) for r in read_jsonl(data / "prompts_train.jsonl")}
    tokenizer = AutoTokenizer.from_pretrained(tiny_tools / "base")
    assert tokenizer.tokenize("<|tool|>125") == ["<|tool|>", "1", "2", "5"]

    base = summarize(play(tiny_tools / "base", held_out, temperature=1.0))
    print("base at temperature 1:", base)
    assert 0.1 <= base["tool_rate"] <= 0.7, "the base calls the calculator only sometimes"
    assert base["success"] < 0.6, "and is right only part of the time"
    assert base["tool_accuracy"] > base["direct_accuracy"], "the tool helps"


STEPS = 20


@pytest.mark.slow
def test_grpo_teaches_the_base_to_use_the_calculator(tiny_tools, tmp_path):
    """configs/grpo_tools_tiny.yaml for a few steps: held-out success and the rate of tool use rise,
    no episode fails, KL stays bounded (a sign error, a broken policy mask or a broken sync breaks it)."""
    import subprocess

    from tests.conftest import ALIGN, REPO, read_metrics, subprocess_env

    data, output = tiny_tools / "data", tmp_path / "grpo_tools"
    overrides = [f"model={tiny_tools / 'base'}", f"output_dir={output}", f"data.train={data / 'prompts_train.jsonl'}",
                 f"data.eval={data / 'prompts_eval.jsonl'}", "data.max_eval_prompts=100", f"train.max_steps={STEPS}",
                 f"train.eval_every={STEPS}", f"train.save_every={STEPS}", "tracking.progress=false",
                 "tracking.tensorboard=false"]
    result = subprocess.run([*ALIGN, "ppo", "--config", str(REPO / "configs" / "grpo_tools_tiny.yaml"), *overrides],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(output)
    base, tuned = rows[0], rows[-1]
    print("grpo tools:", {k: (round(base[k], 3), round(tuned[k], 3))
                          for k in ("eval/accuracy", "eval/env_tool_use", "eval/greedy_accuracy", "eval/pass@4")})
    assert tuned["step"] == STEPS
    assert tuned["eval/env_tool_use"] >= base["eval/env_tool_use"] + 0.05, "the policy calls the tool more often"
    assert tuned["eval/accuracy"] >= base["eval/accuracy"] + 0.05, "and is right more often"
    assert all(r["env/failed"] < 0.05 and r["env/turns"] > 1 for r in rows[1:])  # a bad expression fails one now and then
    assert all(r["env/tool_calls"] > 0 and r["env/env_tokens"] > 0 for r in rows[1:])
    assert max(r["kl/sequence"] for r in rows[1:]) < 5.0
    assert all(r["rollout/mismatch"] < 1.05 for r in rows[1:])
    assert "[tool] " in (output / "samples.log").read_text()
