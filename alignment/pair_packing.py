"""Prefix-shared pair batches: chosen and rejected of a pair in one row, their common prefix computed once.

A pair's row holds the chosen sequence, then the rejected tokens after the prefix the two share
(the prompt, and any identical opening of the responses). Rejected tokens keep their own positions
and attend to the shared prefix and to themselves, never to chosen's own tokens, so every token
sees exactly the context it has in its own sequence: log-probabilities equal those of two separate
rows, with the prefix's forward (and backward) done once. On the tiny task's pairs a micro-batch of
8 pairs computes about a quarter fewer tokens than one padded row per sequence (a third with
length-grouped micro-batches).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignment.data import IGNORE_INDEX, TokenizedExample
from alignment.logprobs import token_logprobs


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[G, 1, W, W] attention mask for the model from [G, W, W] "query may attend key": 0 where allowed,
    the dtype's minimum elsewhere (what every attention implementation reads, eager included)."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def shared_prefix_length(chosen: Sequence[int], rejected: Sequence[int]) -> int:
    """Tokens the two sequences share at the start, leaving each at least one token of its own."""
    limit = min(len(chosen), len(rejected)) - 1
    shared = 0
    while shared < limit and chosen[shared] == rejected[shared]:
        shared += 1
    return shared


def packed_length(chosen: TokenizedExample, rejected: TokenizedExample) -> int:
    """Length of the pair's row: chosen plus rejected's tokens after the shared prefix."""
    return len(chosen.input_ids) + len(rejected.input_ids) - shared_prefix_length(chosen.input_ids, rejected.input_ids)


def pack_pairs(pairs: Sequence[tuple[TokenizedExample, TokenizedExample]], pad_id: int,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """One right-padded row per pair, with an additive 4D attention mask.

    ``input_ids``/``position_ids`` ``[P, T]``; ``attention_mask`` ``[P, 1, T, T]`` (0 where a token
    may attend, the dtype's minimum elsewhere; padding attends to itself only); ``rows`` ``[2P, L]``:
    for each chosen sequence, then each rejected one, the row position holding its token ``t``;
    ``labels`` ``[2P, L]`` as in a plain padded batch; ``last`` ``[2P]``: the row position of each
    sequence's last token.
    """
    count, width = len(pairs), max(packed_length(c, r) for c, r in pairs)
    length = max(max(len(c.input_ids), len(r.input_ids)) for c, r in pairs)
    input_ids = torch.full((count, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((count, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(count, 1, 1)
    rows = torch.zeros((2 * count, length), dtype=torch.long)
    last = torch.zeros(2 * count, dtype=torch.long)
    labels = torch.full((2 * count, length), IGNORE_INDEX, dtype=torch.long)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for index, (chosen, rejected) in enumerate(pairs):
        shared = shared_prefix_length(chosen.input_ids, rejected.input_ids)
        n_chosen, n_own = len(chosen.input_ids), len(rejected.input_ids) - shared
        end = n_chosen + n_own
        input_ids[index, :n_chosen] = torch.tensor(chosen.input_ids)
        input_ids[index, n_chosen:end] = torch.tensor(rejected.input_ids[shared:])
        position_ids[index, :n_chosen] = torch.arange(n_chosen)
        position_ids[index, n_chosen:end] = torch.arange(shared, shared + n_own)
        allowed[index, :n_chosen, :n_chosen] = causal[:n_chosen, :n_chosen]
        allowed[index, n_chosen:end, :shared] = True
        allowed[index, n_chosen:end, n_chosen:end] = causal[:n_own, :n_own]
        rows[index, :n_chosen] = torch.arange(n_chosen)
        rows[count + index, :shared] = torch.arange(shared)
        rows[count + index, shared : shared + n_own] = torch.arange(n_chosen, end)
        last[index], last[count + index] = n_chosen - 1, end - 1
        labels[index, :n_chosen] = torch.tensor(chosen.labels)
        labels[count + index, : shared + n_own] = torch.tensor(rejected.labels)
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": additive_mask(allowed, dtype),
            "rows": rows, "labels": labels, "last": last}


def packed_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's labelled tokens (chosen ones, then rejected ones) and their counts.

    Logits are computed only from the first row position that predicts a labelled token on.
    """
    count, width = batch["input_ids"].shape
    targets = batch["labels"][:, 1:]
    labelled = targets != IGNORE_INDEX
    sources = batch["rows"][:, :-1]  # the row position whose logits predict token t + 1
    first = int(sources[labelled].min()) if labelled.any() else width - 1
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   attention_mask=batch["attention_mask"], logits_to_keep=width - first).logits
    owner = torch.arange(2 * count, device=logits.device).remainder(count).unsqueeze(1)
    token_logps = token_logprobs(logits, targets, owner, (sources - first).clamp(min=0))
    return token_logps.sum(-1), labelled.sum(-1).float()
