"""Log-probabilities of given tokens under a model's logits: the one formula SFT, DPO, packed pairs,
PPO and compare's KL share.

    log p(y | context) = z[y] - logsumexp(z),   z = logits / temperature   (float32)

``logsumexp`` reads the logits once; no ``[batch, positions, vocab]`` log-softmax is materialised.
"""

from __future__ import annotations

import torch

from alignment.data import IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None,
                   positions: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of ``targets`` read at ``logits[rows, positions]``, shaped like ``targets``.

    ``logits`` is [B, T, V]. By default target [i, t] is read at row i, position t (the caller has
    already shifted: position t predicts token t + 1). Targets below 0 (``IGNORE_INDEX``) give 0.
    """
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    if rows is None:
        rows = torch.arange(targets.shape[0], device=z.device)[:, None]
    if positions is None:
        positions = torch.arange(targets.shape[1], device=z.device)[None, :]
    picked = z[rows, positions, targets.clamp(min=0)] - torch.logsumexp(z, dim=-1)[rows, positions]
    return picked.masked_fill(targets < 0, 0.0)


def entropies(logits: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy -sum p log p of softmax(logits / temperature) at ``logits[rows, positions]``."""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    log_p = torch.log_softmax(z, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)[rows, positions]


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's labelled (response) tokens, and how many there are.

    Logits are computed only from the first labelled position on (``logits_to_keep``): the prompt
    positions before it would be a ``[batch, prompt, vocab]`` tensor that nothing uses.
    """
    labels = batch["labels"][:, 1:]
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    first = int(labelled[0]) if len(labelled) else labels.shape[1] - 1  # first position whose next token counts
    keep = labels.shape[1] - first + 1  # positions first .. T-1 (the last one predicts past the end)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    labels = labels[:, first:]
    return token_logprobs(logits[:, :-1], labels).sum(-1), (labels != IGNORE_INDEX).sum(-1).float()
