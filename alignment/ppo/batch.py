"""RolloutBatch: the one typed batch that crosses between the PPO driver and its workers.

Shapes, with B samples, T the longest prompt + response and R the longest response:

    input_ids         [B, T] long   prompt then response tokens, right-padded with the pad id
    attention_mask    [B, T] long   1 on real tokens
    prompt_lengths    [B]    long
    response_mask     [B, R] float  1 on real response tokens
    loss_mask         [B, R] float  response tokens the losses count (a subset of response_mask:
                                    multi-turn rollouts zero the tokens a tool wrote)
    rollout_logprobs  [B, R] float  the engine's log-probs of the sampled tokens
    finished          [B]    bool   ended with EOS (or a stop string), not cut at max_tokens
    scores            [B]    float  each response's reward (set by the driver once scored)
    old_logprobs, advantages, ref_logprobs, old_values, returns: [B, R] float, set by the driver
                                    after the experience phase (None until then, or when unused)
    is_weights        [B, R] float  per-token loss weights correcting the engine/trainer mismatch (None: 1)
    prompts, texts    B-long lists  the prompts as given (text or messages) and the response texts
    rows              B-long list   each prompt's row in its data file (where reward functions read columns)
    messages          B-long list   multi-turn episodes: the turns as chat messages (empty for single turns)

Response token j of sample i is predicted by the logits at position ``prompt_lengths[i] - 1 + j``
(:attr:`positions`). The batch travels through Ray's object store as tensors; workers return
tensors of shape [b, R] for their share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from alignment.data import right_pad

PER_TOKEN = ("response_mask", "loss_mask", "rollout_logprobs", "old_logprobs", "advantages", "ref_logprobs",
             "old_values", "returns", "is_weights")


def equal_shares(count: int, parts: int) -> list[list[int]]:
    """Indices of ``count`` items in ``parts`` contiguous shares of equal size, the last ones padded with
    index 0 (every rank of a group must run the same number of forwards: ZeRO-3 gathers are collective)."""
    per_part = max(1, -(-count // parts))
    order = list(range(count)) + [0] * (per_part * parts - count)
    return [order[p * per_part : (p + 1) * per_part] for p in range(parts)]


@dataclass
class RolloutBatch:
    """Padded tensors of one rollout batch (see the module docstring for every field's shape)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    response_mask: torch.Tensor
    loss_mask: torch.Tensor
    rollout_logprobs: torch.Tensor
    finished: torch.Tensor
    prompts: list[Any] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    messages: list[list[dict[str, str]]] = field(default_factory=list)
    scores: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None

    @classmethod
    def from_samples(cls, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                     rollout_logprobs: Sequence[Sequence[float]], finished: Sequence[bool], pad_id: int,
                     prompts: Sequence[Any] = (), texts: Sequence[str] = (), rows: Sequence[int] = (),
                     policy_mask: Sequence[Sequence[float]] | None = None,
                     messages: Sequence[list[dict[str, str]]] = ()) -> RolloutBatch:
        """Pad per-sample token lists into a batch; every response needs at least one token.
        ``policy_mask`` (multi-turn) marks the tokens the policy wrote: the loss mask starts as it."""
        if any(len(r) == 0 for r in response_ids):
            raise ValueError("every response needs at least one token (give an empty one its EOS)")
        sequences = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
        response_mask = right_pad([[1.0] * len(r) for r in response_ids])
        return cls(
            input_ids=right_pad(sequences, pad_id, torch.long),
            attention_mask=right_pad([[1] * len(s) for s in sequences], 0, torch.long),
            prompt_lengths=torch.tensor([len(p) for p in prompt_ids], dtype=torch.long),
            response_mask=response_mask,
            loss_mask=response_mask.clone() if policy_mask is None else right_pad(policy_mask, width=response_mask.shape[1]),
            rollout_logprobs=right_pad(rollout_logprobs, width=response_mask.shape[1]),
            finished=torch.tensor(list(finished), dtype=torch.bool),
            prompts=list(prompts),
            texts=list(texts),
            rows=list(rows),
            messages=list(messages),
        )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1).long()

    @property
    def lengths(self) -> torch.Tensor:
        """Prompt + response tokens of each sample."""
        return self.attention_mask.sum(dim=1)

    @property
    def positions(self) -> torch.Tensor:
        """[B, R] logits position predicting each response token (clamped inside the row for padding)."""
        offsets = torch.arange(self.response_mask.shape[1])
        return (self.prompt_lengths[:, None] - 1 + offsets[None, :]).clamp(max=self.input_ids.shape[1] - 2)

    def select(self, indices: Sequence[int] | torch.Tensor, trim: bool = True) -> RolloutBatch:
        """The samples at ``indices`` in that order; ``trim`` cuts T and R to the selection's longest."""
        index = torch.as_tensor(indices, dtype=torch.long)
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                picked[f.name] = value.index_select(0, index)
            elif isinstance(value, list):
                picked[f.name] = [value[i] for i in index.tolist()] if value else []
        batch = replace(self, **picked)
        return batch.trimmed() if trim else batch

    def trimmed(self) -> RolloutBatch:
        """The same samples with the padding columns no sample uses cut off."""
        width = int(self.lengths.max())
        response_width = int(self.response_lengths.max())
        cut = {"input_ids": self.input_ids[:, :width], "attention_mask": self.attention_mask[:, :width]}
        for name in PER_TOKEN:
            value = getattr(self, name)
            if value is not None:
                cut[name] = value[:, :response_width]
        return replace(self, **cut)

    def split(self, parts: int) -> list[RolloutBatch]:
        """``parts`` equal contiguous shares (one per rank), padded with repeats of sample 0 when uneven;
        columns are not trimmed, so per-token results of the shares stack back into [B, R]."""
        return [self.select(share, trim=False) for share in equal_shares(len(self), parts)]

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)
