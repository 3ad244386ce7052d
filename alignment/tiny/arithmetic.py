"""A seeded generator of multi-step arithmetic problems with exact answers: the tiny reasoning task.

A problem chains ``steps`` additions and subtractions of numbers in [1, operand_max] ("What is 17 + 8 - 19?");
its solution works one operation per sentence and ends in a tagged answer::

    17 + 8 = 25. 25 - 19 = 6. <answer>6</answer>

Every intermediate result stays in [0, value_max], so the model needs no signs. Problems are told apart by
their expression: a held-out problem's numbers and operators occur in no training split, in any wording.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

QUESTION_FORMS = ["What is {expr}?", "Compute {expr}.", "Calculate {expr}.", "{expr} = ?", "Work out {expr}."]


def make_problem(rng: random.Random, steps: int, operand_max: int = 25, value_max: int = 60) -> tuple[list[int], list[str]]:
    """Operands and operators of a ``steps``-operation chain whose running value stays in [0, value_max]."""
    numbers, ops = [rng.randint(1, operand_max)], []
    value = numbers[0]
    while len(ops) < steps:
        op, operand = rng.choice("+-"), rng.randint(1, operand_max)
        result = value + operand if op == "+" else value - operand
        if 0 <= result <= value_max:
            numbers.append(operand)
            ops.append(op)
            value = result
    return numbers, ops


def expression(numbers: list[int], ops: list[str]) -> str:
    return " ".join([str(numbers[0])] + [f"{op} {n}" for op, n in zip(ops, numbers[1:])])


def solve(numbers: list[int], ops: list[str]) -> tuple[str, int]:
    """The step-by-step solution text and the exact answer."""
    value, sentences = numbers[0], []
    for op, operand in zip(ops, numbers[1:]):
        result = value + operand if op == "+" else value - operand
        sentences.append(f"{value} {op} {operand} = {result}.")
        value = result
    return " ".join(sentences + [f"<answer>{value}</answer>"]), value


def make_rows(seed: int, count: int, steps: Iterable[int], exclude: set[str] = frozenset(),
              operand_max: int = 25, value_max: int = 60) -> list[dict]:
    """``count`` distinct problems with a number of operations drawn uniformly from ``steps``, none of
    whose expression is in ``exclude``: ``{question, expression, solution, answer, steps}``."""
    rng = random.Random(seed)
    choices, rows, seen = list(steps), [], set(exclude)
    while len(rows) < count:
        numbers, ops = make_problem(rng, rng.choice(choices), operand_max, value_max)
        text = expression(numbers, ops)
        if text in seen:
            continue
        seen.add(text)
        question = rng.choice(QUESTION_FORMS).format(expr=text)
        solution, answer = solve(numbers, ops)
        rows.append({"question": question, "expression": text, "solution": solution, "answer": str(answer),
                     "steps": len(ops)})
    return rows


def sft_row(row: dict) -> dict:
    """A chat row: the question from the user, the worked solution from the assistant."""
    return {"messages": [{"role": "user", "content": row["question"]},
                         {"role": "assistant", "content": row["solution"]}]}


def prompt_row(row: dict) -> dict:
    """A conversational prompt with its answer column (read by the ``math_answer`` verifier)."""
    return {"prompt": [{"role": "user", "content": row["question"]}], "answer": row["answer"], "steps": row["steps"]}
