"""Datasets: reading records, tokenisation with response-only labels, batching.

Rows come in TRL's two formats. *Standard*: every field plain text (``prompt``/``completion``,
``prompt``/``chosen``/``rejected``, a text ``prompt``); prompt and response are joined as text, no
chat template (:func:`tokenize_standard`). *Conversational*: ``messages``, or any field a list of
{role, content} messages; the conversation is rendered by the chat template, and text fields of such
a row become one user (prompt) or assistant (response) turn (:func:`tokenize_sft`).

Records come from JSONL, JSON, Parquet or a local ``datasets`` directory. A malformed row
stops with the file and line (JSONL) or row number, before any training starts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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


def shared_columns(rows: Sequence[Any]) -> list[str]:
    """The columns every row has (what reward functions may read), sorted; none unless all rows are dicts."""
    keys = [set(row) for row in rows if isinstance(row, dict)]
    return sorted(set.intersection(*keys)) if keys and len(keys) == len(rows) else []


def columns_of(rows: Sequence[dict[str, Any]], indices: Sequence[int]) -> dict[str, list[Any]]:
    """Each shared column's values at the rows ``indices`` (one value per index, in order)."""
    return {key: [rows[i][key] for i in indices] for key in shared_columns(rows)}


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


def is_prompt(value: Any) -> bool:
    """Text, a conversation, or a list of token ids."""
    return ((isinstance(value, str) and bool(value)) or is_messages(value)
            or (isinstance(value, list) and bool(value) and all(isinstance(t, int) for t in value)))


def read_prompts(path: str | Path, field: str = "prompt", limit: int | None = None) -> list[Any]:
    """The ``field`` of every row (the first ``limit``): text (TRL's standard format), messages
    (conversational) or token ids; a row without one names its file and line."""
    records = read_records(path)[:limit]
    for index, row in enumerate(records):
        if not isinstance(row, dict) or not is_prompt(row.get(field)):
            raise AlignError(f"{row_location(path, index)}: no prompt under {field!r} "
                             "(text, [{role, content}, ...] or token ids)")
    return [row[field] for row in records]


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken (prompt, padding)


def is_messages(value: Any) -> bool:
    """Whether ``value`` is a conversation: a non-empty list of {role, content} dicts (TRL's conversational format)."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


@dataclass
class TextPair:
    """A row in TRL's *standard* format: a prompt and a response, both plain text, joined with no template."""

    prompt: str
    completion: str


def as_messages(value: Any, role: str, field: str) -> list[dict[str, Any]]:
    """A field of a conversational row as messages: text becomes one ``role`` turn, a message list is kept."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if is_messages(value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f"field {field!r} must be text or a non-empty list of {{role, content}} messages")


def sft_row(row: dict[str, Any], messages_field: str, prompt_field: str,
            completion_field: str) -> list[dict[str, Any]] | TextPair:
    """One SFT row as a conversation (``messages``, or a prompt/completion where either is a message list)
    or as a :class:`TextPair` (prompt and completion both text: TRL's standard format); ValueError if malformed."""
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
    if isinstance(prompt, list) or isinstance(completion, list):  # conversational prompt and/or completion
        return [*as_messages(prompt, "user", prompt_field), *as_messages(completion, "assistant", completion_field)]
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError(f"fields {prompt_field!r} and {completion_field!r} must be text or lists of {{role, content}} messages")
    return TextPair(prompt, completion)


def _require_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat template to render "
                         "chat messages: set chat_template (e.g. chatml or a Jinja file), or give plain-text rows")


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> list[int]:
    """Token ids of ``messages`` under the tokenizer's chat template (``tools``: JSON schemas the template
    advertises, for templates that take them)."""
    _require_template(tokenizer)
    extra = {"tools": tools} if tools else {}
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt, **extra)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    """Leading tokens two sequences share."""
    count = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        count += 1
    return count


def tokenize_standard(tokenizer, prompt: str, completion: str, max_length: int) -> TokenizedExample:
    """A standard-format (plain text) prompt and response, tokenised as TRL 1.16 does, no chat template.

    As TRL's SFTTrainer, DPOTrainer and RewardTrainer: the EOS token is appended to the response text
    unless it already ends with it; ``prompt`` and ``prompt + response`` are tokenised as text with the
    tokenizer's special tokens (``tokenizer(text)``: a BOS when the tokenizer adds one, as Llama's does);
    the response (the loss tokens) starts where the two id sequences diverge (TRL's
    ``common_prefix_length``), normally right after the prompt. One difference: TRL's DPOTrainer cuts
    both responses of a pair at the shorter of their two divergence points; here each response is cut
    at its own (they differ only when a token merges across the prompt/response boundary).
    """
    eos = tokenizer.eos_token
    if eos and not completion.endswith(eos):
        completion += eos
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    full = list(tokenizer(prompt + completion)["input_ids"])
    prompt_length = common_prefix_length(prompt_ids, full)
    labels = [IGNORE_INDEX] * prompt_length + full[prompt_length:]
    return TokenizedExample(full[:max_length], labels[:max_length])


def tokenize_row(tokenizer, parts: list[dict] | TextPair, max_length: int) -> TokenizedExample:
    """An SFT row from :func:`sft_row`: a conversation under the chat template, or a text pair without one."""
    if isinstance(parts, TextPair):
        return tokenize_standard(tokenizer, parts.prompt, parts.completion, max_length)
    return tokenize_sft(tokenizer, parts, max_length)


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


@dataclass
class RowCheck:
    """What the driver's pre-flight check learnt of a data file: its row (or pair) count and how many are chats."""

    rows: int
    conversational: int


def check_expanded_rows(path: str | Path, expand: Callable[[dict[str, Any]], list[tuple]], what: str) -> RowCheck:
    """Validate every row without tokenising: ``expand(row)`` gives the row's examples as tuples whose
    first part is the prompt (a message list in a conversational row) or raises ValueError; the first bad
    row stops with its location. Returns how many examples there are and how many are chats."""
    count = conversational = 0
    for index, row in enumerate(read_records(path)):
        try:
            examples = expand(row)
        except (ValueError, TypeError) as error:
            raise AlignError(f"{row_location(path, index)}: {error}") from None
        count += len(examples)
        conversational += sum(isinstance(prompt, list) for prompt, *_ in examples)
    if not count:
        raise AlignError(f"{path}: no {what}")
    return RowCheck(count, conversational)


def check_sft_rows(path: str | Path, data_config) -> RowCheck:
    """Validate every row's structure without tokenising (the driver does this before any cluster starts)."""
    records = read_records(path)
    conversational = 0
    for index, row in enumerate(records):
        try:
            parts = sft_row(row, data_config.messages_field, data_config.prompt_field, data_config.completion_field)
        except (ValueError, TypeError) as error:
            raise AlignError(f"{row_location(path, index)}: {error}") from None
        conversational += not isinstance(parts, TextPair)
    return RowCheck(len(records), conversational)


def load_sft_examples(path: str | Path, tokenizer, data_config) -> list[TokenizedExample]:
    """Read and tokenise an SFT file; any bad row stops with its location."""
    records = read_records(path)
    examples = []
    for index, row in enumerate(records):
        try:
            parts = sft_row(row, data_config.messages_field, data_config.prompt_field, data_config.completion_field)
            example = tokenize_row(tokenizer, parts, data_config.max_length)
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

    return {"input_ids": right_pad([e.input_ids for e in examples], pad_id, torch.long),
            "attention_mask": right_pad([[1] * len(e.input_ids) for e in examples], 0, torch.long),
            "labels": right_pad([e.labels for e in examples], IGNORE_INDEX, torch.long)}


def right_pad(rows: Sequence[Sequence[float]], value: float = 0.0, dtype: Any = None, width: int | None = None):
    """[len(rows), width or longest] tensor of ``rows`` right-padded with ``value`` (float32 by default)."""
    import torch

    dtype = dtype or torch.float32
    width = max(len(r) for r in rows) if width is None else width
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        if len(row):
            out[i, : len(row)] = torch.as_tensor(row, dtype=dtype)
    return out
