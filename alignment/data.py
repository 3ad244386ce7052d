"""Datasets: reading records, chat-template tokenisation with response-only labels, batching.

Records come from JSONL, JSON, Parquet or a local ``datasets`` directory. A malformed row
stops with the file and line (JSONL) or row number, before any training starts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alignment.errors import AlignError

IGNORE_INDEX = -100


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a data file or ``datasets`` directory as dicts; errors name the file and line."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AlignError(f"data path {path} does not exist")
    if path.is_dir():
        import datasets

        try:
            dataset = datasets.load_from_disk(str(path))
        except Exception as error:  # noqa: BLE001  (datasets raises many types)
            raise AlignError(f"{path} is not a `datasets` directory saved with save_to_disk: {error}") from error
        if isinstance(dataset, datasets.DatasetDict):
            if "train" not in dataset:
                raise AlignError(f"{path} holds splits {list(dataset)}; point at one split's directory")
            dataset = dataset["train"]
        records = list(dataset)
    elif path.suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise AlignError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise AlignError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                records.append(row)
    elif path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise AlignError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(records, list):
            raise AlignError(f"{path}: expected a JSON list of objects")
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    else:
        raise AlignError(f"{path}: unknown data format {path.suffix!r}; use .jsonl, .json, .parquet or a datasets dir")
    if not records:
        raise AlignError(f"{path} holds no rows")
    return records


def row_location(path: str | Path, index: int) -> str:
    """How to point a user at row ``index`` (0-based): ``file:line`` for JSONL, ``file row N`` otherwise."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            seen = -1
            for number, line in enumerate(handle, start=1):
                seen += bool(line.strip())
                if seen == index:
                    return f"{path}:{number}"
    return f"{path} row {index + 1}"


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken (prompt, padding)


def _as_messages(row: dict[str, Any], messages_field: str, prompt_field: str, completion_field: str):
    if messages_field in row:
        messages = row[messages_field]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"field {messages_field!r} must be a non-empty list of {{role, content}}")
        for message in messages:
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise ValueError(f"each message in {messages_field!r} needs 'role' and 'content'")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("the conversation has no assistant message to learn from")
        return messages
    missing = [f for f in (prompt_field, completion_field) if f not in row]
    if missing:
        raise ValueError(
            f"row has neither {messages_field!r} nor {prompt_field!r}/{completion_field!r} (missing {missing})"
        )
    prompt, completion = row[prompt_field], row[completion_field]
    if isinstance(prompt, list):  # conversational prompt
        return [*prompt, {"role": "assistant", "content": str(completion)}]
    return [{"role": "user", "content": str(prompt)}, {"role": "assistant", "content": str(completion)}]


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` under the tokenizer's chat template."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def tokenize_sft(tokenizer, messages: list[dict], max_length: int) -> TokenizedExample:
    """Ids of the whole conversation; labels only on assistant turns (the chat template's own tokens)."""
    input_ids: list[int] = []
    labels: list[int] = []
    for turn, message in enumerate(messages):
        if message["role"] == "assistant":
            prefix = render_chat(tokenizer, messages[:turn], add_generation_prompt=True)
        else:
            prefix = render_chat(tokenizer, messages[: turn + 1], add_generation_prompt=False)
        if prefix[: len(input_ids)] != input_ids:
            raise ValueError("the chat template does not render conversations prefix-consistently")
        labels += [IGNORE_INDEX] * (len(prefix) - len(input_ids))
        input_ids = prefix
        if message["role"] == "assistant":
            full = render_chat(tokenizer, messages[: turn + 1], add_generation_prompt=False)
            labels += full[len(input_ids) :]
            input_ids = full
    return TokenizedExample(input_ids[:max_length], labels[:max_length])


def check_sft_rows(path: str | Path, data_config) -> int:
    """Validate every row's structure without tokenising (the driver does this before any cluster starts)."""
    records = read_records(path)
    for index, row in enumerate(records):
        try:
            _as_messages(row, data_config.messages_field, data_config.prompt_field, data_config.completion_field)
        except (ValueError, TypeError) as error:
            raise AlignError(f"{row_location(path, index)}: {error}") from None
    return len(records)


def load_sft_examples(path: str | Path, tokenizer, data_config) -> list[TokenizedExample]:
    """Read and tokenise an SFT file; any bad row stops with its location."""
    records = read_records(path)
    examples = []
    for index, row in enumerate(records):
        try:
            messages = _as_messages(row, data_config.messages_field, data_config.prompt_field, data_config.completion_field)
            example = tokenize_sft(tokenizer, messages, data_config.max_length)
        except (ValueError, TypeError) as error:
            raise AlignError(f"{row_location(path, index)}: {error}") from None
        if not any(label != IGNORE_INDEX for label in example.labels):
            raise AlignError(
                f"{row_location(path, index)}: no response token survives max_length={data_config.max_length}"
            )
        examples.append(example)
    return examples


def split_holdout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split into (train, held-out); held-out gets at least one item when fraction > 0."""
    if fraction <= 0:
        return items, []
    order = np.random.default_rng(seed).permutation(len(items))
    count = max(1, int(round(fraction * len(items))))
    if count >= len(items):
        raise AlignError(f"eval_fraction={fraction} leaves no training rows out of {len(items)}")
    held = set(order[:count].tolist())
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


class StepSampler:
    """The indices of each optimizer step, a pure function of (seed, step): exact resume needs only the step.

    Each epoch is a fresh seeded permutation; the incomplete last global batch is dropped.
    """

    def __init__(self, num_examples: int, global_batch_size: int, seed: int, shuffle: bool = True) -> None:
        if num_examples < global_batch_size:
            raise AlignError(
                f"the training set has {num_examples} rows, fewer than train.global_batch_size={global_batch_size}"
            )
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.steps_per_epoch = num_examples // global_batch_size

    def indices(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            if self.shuffle
            else np.arange(self.num_examples)
        )
        start = position * self.global_batch_size
        return order[start : start + self.global_batch_size].tolist()


def length_balanced_micro_batches(indices: Sequence[int], lengths: Sequence[int], rank: int, world_size: int,
                                  micro_batch_size: int) -> list[list[int]]:
    """This rank's micro-batches of a global batch, grouped by length to cut padding.

    The batch's examples are sorted by length (ties by position) and cut into micro-batches, which
    are dealt to the ranks in snake order (0, 1, .., w-1, w-1, .., 0, ..) so every rank gets short
    and long ones alike. The step's gradient is the same sum over the same examples whatever the
    grouping; only the padding each forward computes changes.
    """
    order = sorted(range(len(indices)), key=lambda k: (lengths[k], k))
    chunks = [[indices[k] for k in order[i : i + micro_batch_size]] for i in range(0, len(order), micro_batch_size)]
    mine = []
    for number, chunk in enumerate(chunks):
        turn, seat = divmod(number, world_size)
        if (seat if turn % 2 == 0 else world_size - 1 - seat) == rank:
            mine.append(chunk)
    return mine


def pad_batch(examples: Sequence[TokenizedExample], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
