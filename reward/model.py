"""Reward models: load a scalar-head model saved by `align rm` and score (prompt, response) pairs in batches.

``RewardScorer`` works in any process; ``RewardServer`` is the same as a Ray actor class, used by
PPO and checkpoint comparison::

    server = RewardServer.remote("runs/rm/final")
    scores = ray.get(server.score.remote(prompts, responses))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import torch

Prompt = str | list[dict[str, Any]]


def reward_head_model(path: str | Path, dtype: torch.dtype, pad_token_id: int) -> torch.nn.Module:
    """The reward architecture on the model in ``path``: sequence classification with one output (a new
    head on a causal LM, the trained one on a reward model), reading the last token before ``pad_token_id``."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=dtype)
    model.config.pad_token_id = pad_token_id
    return model


def load_reward_model(path: str | Path, dtype: torch.dtype = torch.float32, chat_template: str | None = None):
    """A trained reward model and its tokenizer.

    The tokenizer keeps the chat template the model was trained with; ``chat_template`` fills in
    only where it has none."""
    from alignment.chat_templates import has_chat_template
    from alignment.models import load_tokenizer

    tokenizer = load_tokenizer(path, None if has_chat_template(path) else chat_template)
    return reward_head_model(path, dtype, tokenizer.pad_token_id), tokenizer


def save_reward_model(state_dict: dict[str, torch.Tensor], model_config, tokenizer, out_dir: Path) -> None:
    """Write weights, the reward model's own config (architecture, num_labels, pad id) and tokenizer."""
    from huggingface_hub import save_torch_state_dict

    out_dir.mkdir(parents=True, exist_ok=True)
    model_config.save_pretrained(str(out_dir))
    save_torch_state_dict({k: v.contiguous() for k, v in state_dict.items()}, str(out_dir), max_shard_size="5GB")
    tokenizer.save_pretrained(str(out_dir))


def conversation(prompt: list[dict[str, Any]], response: str) -> list[dict[str, Any]]:
    """A chat prompt and a response as chat messages."""
    return [*prompt, {"role": "assistant", "content": response}]


class RewardScorer:
    """Scores responses with a trained reward model, ``batch_size`` sequences per forward."""

    def __init__(self, path: str | Path, batch_size: int = 32, max_length: int = 256, threads: int | None = None,
                 chat_template: str | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model, self.tokenizer = load_reward_model(path, chat_template=chat_template)
        self.model.eval()
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        ids = encode_conversations(self.tokenizer, prompts, responses, self.max_length)
        scores: list[float] = []
        for start in range(0, len(ids), self.batch_size):
            scores.extend(score_token_ids(self.model, ids[start : start + self.batch_size], self.tokenizer.pad_token_id))
        return scores


def encode_conversations(tokenizer, prompts: Sequence[Prompt], responses: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each (prompt, response), truncated to ``max_length``, as the reward model was trained:
    a chat prompt as a conversation under the chat template, a text prompt as text + response + EOS
    (TRL's standard format, no template; :func:`alignment.data.tokenize_standard`)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    from alignment.data import render_chat, tokenize_standard

    return [tokenize_standard(tokenizer, p, r, max_length).input_ids if isinstance(p, str)
            else render_chat(tokenizer, conversation(p, r), add_generation_prompt=False)[:max_length]
            for p, r in zip(prompts, responses)]


def score_token_ids(model: torch.nn.Module, batch: list[list[int]], pad_id: int,
                    device: torch.device | str = "cpu") -> list[float]:
    """Rewards of right-padded sequences in one forward (the head reads each sequence's last real token)."""
    from alignment.data import right_pad

    input_ids = right_pad(batch, pad_id, torch.long)
    mask = right_pad([[1] * len(sequence) for sequence in batch], 0, torch.long)
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
    return logits[:, 0].float().tolist()


@ray.remote
class RewardServer(RewardScorer):
    """:class:`RewardScorer` as a Ray actor."""
