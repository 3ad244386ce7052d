"""Unpaired feedback for KTO: answers judged one at a time, in TRL's unpaired format.

A row is ``{"prompt", "completion", "label"}`` with ``label`` true (desirable) or false (undesirable),
or a preference pair ``{"prompt", "chosen", "rejected"}``, which unpairs into a desirable and an
undesirable row as TRL's ``unpair_preference_dataset`` does. Text rows are TRL's standard format, rows
with message lists the conversational one (see :mod:`alignment.preference_data`).

KTO's KL reference point is estimated on mismatched pairs: each example's prompt with another
example's completion (:func:`add_mismatched`). Malformed rows stop with the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.data import (
    IGNORE_INDEX,
    RowCheck,
    TokenizedExample,
    check_expanded_rows,
    is_messages,
    read_records,
    row_location,
)
from alignment.errors import AlignError
from alignment.preference_data import Part, response_part, tokenize_response


@dataclass
class FeedbackExample:
    example: TokenizedExample  # prompt + the judged completion
    desirable: bool
    mismatched: TokenizedExample | None = None  # this prompt + another example's completion (KL estimate)
    ref: float | None = None  # precomputed reference log-probs of ``example`` and ``mismatched``
    ref_mismatched: float | None = None


def row_feedback(row: dict[str, Any], config) -> list[tuple[Part, Part, bool]]:
    """(prompt, completion, desirable) of one row (two for a pair row); raises ValueError when malformed."""
    paired = config.chosen_field in row or config.rejected_field in row
    fields = [config.chosen_field, config.rejected_field] if paired else [config.completion_field]
    required = [config.prompt_field, *fields] + ([] if paired else [config.label_field])
    missing = [f for f in required if f not in row]
    if missing:
        raise ValueError(f"row needs {required} (missing {missing}); a pair row has "
                         f"{config.chosen_field!r}/{config.rejected_field!r} instead of a label")
    chat = any(is_messages(row[f]) for f in (config.prompt_field, *fields))
    prompt = response_part(row[config.prompt_field], "user", config.prompt_field, chat)
    answers = [response_part(row[f], "assistant", f, chat) for f in fields]
    if paired:
        return [(prompt, answers[0], True), (prompt, answers[1], False)]
    label = row[config.label_field]
    if not isinstance(label, bool):
        raise ValueError(f"field {config.label_field!r} must be true or false, got {label!r}")
    return [(prompt, answers[0], label)]


def check_feedback_rows(path: str | Path, config) -> RowCheck:
    """Validate every row without tokenising; returns the number of examples and of conversational ones."""
    return check_expanded_rows(path, lambda row: row_feedback(row, config), "rows")


def load_feedback(path: str | Path, tokenizer, config) -> list[FeedbackExample]:
    """Read and tokenise feedback rows, not yet truncated (:func:`add_mismatched` does that); any bad row
    stops with its location."""
    examples = []
    for index, row in enumerate(read_records(path)):
        try:
            for prompt, completion, label in row_feedback(row, config):
                example = tokenize_response(tokenizer, prompt, completion, config.max_length, truncate=False)
                examples.append(FeedbackExample(example, label))
        except (ValueError, TypeError) as error:
            raise AlignError(f"{row_location(path, index)}: {error}") from None
    return examples


def prompt_length(example: TokenizedExample) -> int:
    """Tokens before the first labelled one (the prompt)."""
    return next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), len(example.labels))


def mismatch(prompt_of: TokenizedExample, completion_of: TokenizedExample, max_length: int) -> TokenizedExample:
    """One example's prompt ids followed by another's completion ids (TRL's KL sequences), labels on the latter."""
    prompt, start = prompt_of.input_ids[: prompt_length(prompt_of)], prompt_length(completion_of)
    completion = completion_of.input_ids[start:]
    return TokenizedExample((prompt + completion)[:max_length], ([IGNORE_INDEX] * len(prompt) + completion)[:max_length])


def add_mismatched(examples: list[FeedbackExample], max_length: int) -> None:
    """Give each example a mismatched sequence: its prompt with the whole completion of the nearest earlier
    example (cyclically) whose prompt differs, so that rows rating answers to the same prompt next to each
    other still pair across prompts; with distinct prompts this is TRL's rotation by one,
    (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}). Then both sequences are cut to ``max_length``, as TRL does."""
    prompts = [tuple(e.example.input_ids[: prompt_length(e.example)]) for e in examples]
    for i, example in enumerate(examples):
        partner = next((j % len(examples) for j in range(i - 1, i - len(examples), -1)
                        if prompts[j % len(examples)] != prompts[i]), (i - 1) % len(examples))
        example.mismatched = mismatch(example.example, examples[partner].example, max_length)
    for example in examples:
        example.example = TokenizedExample(example.example.input_ids[:max_length], example.example.labels[:max_length])


def load_train_eval(config, tokenizer, seed: int) -> tuple[list[FeedbackExample], list[FeedbackExample]]:
    """Train and held-out examples (``data.eval`` or split off train), each with its mismatched sequence."""
    from alignment.data import split_holdout

    train = load_feedback(config.train, tokenizer, config)
    train, held_out = ((train, load_feedback(config.eval, tokenizer, config)) if config.eval
                       else split_holdout(train, config.eval_fraction, seed))
    for part in (train, held_out):
        if part:
            add_mismatched(part, config.max_length)
    return train, held_out
