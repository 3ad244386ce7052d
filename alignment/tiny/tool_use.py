"""A seeded generator of calculator problems, and how a model does on them: the tiny tool-use task.

A problem multiplies a number in [10, left_max] by one in [10, right_max], sometimes adding or
subtracting a term in [1, term_max] ("Compute 58 * 41 + 17."): too hard for a 2M-parameter model's
mental arithmetic, easy with a calculator. A conversation that uses the tool is four messages, the call
written as Hermes / Qwen chat templates write it (what :mod:`rollout.tools` parses)::

    user       What is 347 * 86?
    assistant  <tool_call>{"name": "calculator", "arguments": {"expression": "347 * 86"}}</tool_call>
    tool       29842
    assistant  <answer>29842</answer>

one that does not is two: the question, then ``<answer>N</answer>`` straight away. Problems are told
apart by their expression: a held-out problem's expression occurs in no training split, in any wording.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from alignment.tiny.arithmetic import QUESTION_FORMS
from rollout.tools import TOOL_CALL  # the pattern the tools environment parses

TOOL_NAME = "calculator"
EXPRESSION = re.compile(r"\d{1,6}(?: *[-+*] *\d{1,6}){0,3}")  # what :func:`calculate` evaluates


def make_expression(rng: random.Random, left_max: int = 999, right_max: int = 99, term_max: int = 99,
                    term_fraction: float = 0.5) -> str:
    """``a * b``, or ``a * b + c`` / ``a * b - c`` (a share ``term_fraction``); never negative while term_max < 100."""
    text = f"{rng.randint(10, left_max)} * {rng.randint(10, right_max)}"
    if term_max and rng.random() < term_fraction:
        text += f" {rng.choice('+-')} {rng.randint(1, term_max)}"
    return text


def calculate(expression: Any) -> str:
    """The calculator: the exact value of integers joined by + - * as a decimal string, else an error text."""
    if not isinstance(expression, str) or not EXPRESSION.fullmatch(expression.strip()):
        return "error: the calculator takes integers joined by +, - and *"
    plain = re.sub(r"\d+", lambda number: str(int(number[0])), expression)  # "007" is 7, as a calculator reads it
    return str(eval(plain))  # noqa: S307 (at most four 6-digit integers and + - *, checked above)


def tool_call(expression: str) -> str:
    """The assistant turn that asks the calculator for ``expression``."""
    return f"<tool_call>{json.dumps({'name': TOOL_NAME, 'arguments': {'expression': expression}})}</tool_call>"


def parse_tool_call(text: str) -> str | None:
    """The expression of a turn that is a calculator call (``<tool_call>`` first), else None; a call
    that is not JSON or not the calculator's gives the expression ``""`` (the calculator rejects it)."""
    text = text.strip()
    if not text.startswith("<tool_call>"):
        return None
    found = TOOL_CALL.match(text)
    try:
        call = json.loads(found[1]) if found else None
    except ValueError:
        return ""
    if not isinstance(call, dict) or call.get("name") != TOOL_NAME or not isinstance(call.get("arguments"), dict):
        return ""
    expression = call["arguments"].get("expression")
    return expression if isinstance(expression, str) else ""


def make_rows(seed: int, count: int, exclude: set[str] = frozenset(), **ranges: Any) -> list[dict]:
    """``count`` distinct problems none of whose expression is in ``exclude``: ``{question, expression,
    answer}``; ``ranges`` are :func:`make_expression`'s keywords."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < count:
        text = make_expression(rng, **ranges)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"question": rng.choice(QUESTION_FORMS).format(expr=text), "expression": text,
                     "answer": calculate(text)})
    return rows


def sft_row(row: dict, use_tool: bool) -> dict:
    """A chat row: with the tool, the call, its result and the answer; without, the answer directly."""
    question = {"role": "user", "content": row["question"]}
    answer = {"role": "assistant", "content": f"<answer>{row['answer']}</answer>"}
    if not use_tool:
        return {"messages": [question, answer]}
    return {"messages": [question, {"role": "assistant", "content": tool_call(row["expression"])},
                         {"role": "tool", "content": row["answer"]}, answer]}


def sft_rows(rows: list[dict], tool_fraction: float, seed: int) -> list[dict]:
    """Chat rows of which ``round(tool_fraction * len(rows))``, chosen by ``seed``, use the tool."""
    with_tool = set(random.Random(seed).sample(range(len(rows)), round(tool_fraction * len(rows))))
    return [sft_row(row, index in with_tool) for index, row in enumerate(rows)]


def prompt_row(row: dict) -> dict:
    """A conversational prompt with its answer column (read by the ``math_answer`` verifier)."""
    return {"prompt": [{"role": "user", "content": row["question"]}], "answer": row["answer"]}


# ---- how a model does: tool use, and accuracy with and without it --------------------------------

def play(model_dir: str | Path, prompts: list[dict], temperature: float, samples: int = 1, seed: int = 0,
         max_tokens: int = 48) -> list[dict]:
    """Episodes on prompt rows with transformers ``generate`` (:class:`rollout.hf_engine.HFEngine` in this
    process): the first assistant turn; if it is a calculator call, the calculator's result as a tool turn
    and one more assistant turn. Returns ``{prompt, turns, tool, correct}`` per sample."""
    from alignment.data import render_chat
    from reward.verifiers import math_answer_verdict
    from rollout.hf_engine import HFEngine

    engine = HFEngine(str(model_dir), str(model_dir), {"backend": "hf", "cpus_per_engine": 2}, 0)
    tokenizer = engine.tokenizer
    sampling = {"n": samples, "temperature": temperature, "max_tokens": max_tokens, "seed": seed, "logprobs": False}
    contexts = [render_chat(tokenizer, row["prompt"], add_generation_prompt=True) for row in prompts]
    episodes = [{"row": row, "context": ids + turn["token_ids"], "turns": [turn["text"]]}
                for row, ids, outputs in zip(prompts, contexts, engine.generate(contexts, sampling))
                for turn in outputs]
    calls = [e for e in episodes if parse_tool_call(e["turns"][0]) is not None]
    for episode in calls:
        result = calculate(parse_tool_call(episode["turns"][0]))
        episode["turns"].append(result)
        episode["context"] += render_chat(tokenizer, [{"role": "tool", "content": result}], add_generation_prompt=True)
    if calls:
        second = engine.generate([e["context"] for e in calls], {**sampling, "n": 1, "seed": seed + 1})
        for episode, (turn,) in zip(calls, second):
            episode["turns"].append(turn["text"])
    return [{"prompt": e["row"]["prompt"][0]["content"], "turns": e["turns"], "tool": len(e["turns"]) > 1,
             "correct": math_answer_verdict(e["turns"][-1], e["row"]["answer"]).score == 1.0} for e in episodes]


def summarize(episodes: list[dict]) -> dict[str, float]:
    """Tool-call rate, accuracy with the tool, accuracy answering directly, and overall success."""
    def rate(values: list[bool]) -> float:
        return sum(values) / len(values) if values else float("nan")

    tool = [e["correct"] for e in episodes if e["tool"]]
    direct = [e["correct"] for e in episodes if not e["tool"]]
    return {"episodes": len(episodes), "tool_rate": rate([e["tool"] for e in episodes]), "tool_accuracy": rate(tool),
            "direct_accuracy": rate(direct), "success": rate([e["correct"] for e in episodes])}
