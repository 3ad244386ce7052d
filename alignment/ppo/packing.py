"""Prompt-shared rows: the samples of one prompt in one row, the prompt computed once.

GRPO and RLOO draw n responses per prompt. One padded row per sample runs each prompt's forward (and
backward) n times and pads every row to the longest sample. A shared row holds a prompt, then the
responses of the samples with that prompt one after another. A response's tokens keep the positions
they have in their own sequence and attend to the prompt and to their own earlier tokens only, never
to another response, so every token sees exactly its own context: log-probs and values equal those of
one padded row per sample (``train.share_prompts``, off by default). Rows are cut at
``max(longest sample, ROW_TOKENS)`` tokens: attention is quadratic in the row and must stay small next
to the linear layers. On a micro-batch of the tiny reasoning task (8 prompts x 4 samples, 20 prompt
tokens, 25-50 response tokens) the rows hold 1408 positions instead of 2208, and one forward + backward
takes 0.31-0.34 s instead of 0.45-0.47 s on one core; inside the 2-rank job the training phase was
slower (docs/benchmarks.md), which is why it is not the default yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from alignment.pair_packing import additive_mask
from alignment.ppo.batch import RolloutBatch

ROW_TOKENS = 512


@dataclass
class ForwardRows:
    """What a model reads for a micro-batch, and where each response token's prediction is.

    ``input_ids`` [G, W]; ``attention_mask`` [G, W] (padded rows: 1 on real tokens) or [G, 1, W, W]
    (shared rows: additive, 0 where a token may attend, the dtype's minimum elsewhere; padding attends
    to itself); ``position_ids`` [G, W] or None (0, 1, ... per row); ``rows``/``positions`` [b, R]:
    the row, and the position in it, whose logits predict response token j of sample i (padding
    entries point inside the sample's row; the caller masks their outputs).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    rows: torch.Tensor
    positions: torch.Tensor

    def to(self, device: torch.device | str) -> ForwardRows:
        return replace(self, **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                                for f in fields(self)})

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        return inputs if self.position_ids is None else {**inputs, "position_ids": self.position_ids}


def padded_rows(batch: RolloutBatch) -> ForwardRows:
    """One right-padded row per sample, as the batch holds them."""
    return ForwardRows(batch.input_ids, batch.attention_mask, None,
                       torch.arange(len(batch), device=batch.input_ids.device)[:, None].expand_as(batch.response_mask),
                       batch.positions.to(batch.input_ids.device))


def prompt_groups(batch: RolloutBatch, indices: Sequence[int] | None = None) -> list[list[int]]:
    """``indices`` (default all samples) grouped by identical prompt tokens, groups in order of first appearance."""
    ids, prompt_lengths = batch.input_ids.tolist(), batch.prompt_lengths.tolist()
    groups: dict[tuple[int, ...], list[int]] = {}
    for index in range(len(batch)) if indices is None else indices:
        groups.setdefault(tuple(ids[index][: prompt_lengths[index]]), []).append(index)
    return list(groups.values())


def prompt_grouped_chunks(batch: RolloutBatch, indices: Sequence[int], micro: int) -> list[list[int]]:
    """``indices`` in micro-batches of ``micro`` samples, the samples of one prompt next to each other
    (longest groups first), so that a micro-batch holds few prompts; ``ceil(len(indices) / micro)``
    micro-batches, as many on every rank."""
    lengths = batch.lengths.tolist()
    groups = sorted(prompt_groups(batch, indices), key=lambda g: -sum(lengths[i] for i in g))
    order = [index for group in groups for index in group]
    return [order[start : start + micro] for start in range(0, len(order), micro)]


def shared_rows(batch: RolloutBatch, dtype: torch.dtype = torch.float32, row_tokens: int = ROW_TOKENS) -> ForwardRows:
    """``batch``'s samples in prompt-shared rows (see the module docstring), on the batch's device."""
    ids = batch.input_ids.cpu()
    prompt_lengths = batch.prompt_lengths.tolist()
    response_lengths = batch.response_lengths.tolist()
    budget = max(int(batch.lengths.max()), row_tokens)
    plan: list[list[int]] = []
    for group in prompt_groups(batch):
        row, width = [], prompt_lengths[group[0]]
        for index in group:
            if row and width + response_lengths[index] > budget:
                plan.append(row)
                row, width = [], prompt_lengths[group[0]]
            row.append(index)
            width += response_lengths[index]
        plan.append(row)
    width = max(prompt_lengths[row[0]] + sum(response_lengths[i] for i in row) for row in plan)
    input_ids = torch.zeros((len(plan), width), dtype=torch.long)  # padding: any id, nothing reads it
    position_ids = torch.zeros((len(plan), width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(plan), 1, 1)
    rows = torch.zeros(tuple(batch.response_mask.shape), dtype=torch.long)
    positions = torch.zeros(batch.response_mask.shape, dtype=torch.long)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for number, row in enumerate(plan):
        prompt = prompt_lengths[row[0]]
        input_ids[number, :prompt] = ids[row[0], :prompt]
        position_ids[number, :prompt] = torch.arange(prompt)
        allowed[number, :prompt, :prompt] = causal[:prompt, :prompt]
        start = prompt
        for index in row:
            length = response_lengths[index]
            end = start + length
            input_ids[number, start:end] = ids[index, prompt : prompt + length]
            position_ids[number, start:end] = torch.arange(prompt, prompt + length)
            allowed[number, start:end, :prompt] = True
            allowed[number, start:end, start:end] = causal[:length, :length]
            rows[index] = number
            # token 0 is predicted by the prompt's last position, token j by the response's token j - 1
            positions[index, 0] = prompt - 1
            positions[index, 1:length] = torch.arange(start, end - 1)
            positions[index, length:] = end - 1
            start = end
    return ForwardRows(input_ids, additive_mask(allowed, dtype), position_ids, rows, positions).to(batch.input_ids.device)
