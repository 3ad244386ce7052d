"""Supervised fine-tuning: next-token loss on response tokens only, on the shared training core."""

from __future__ import annotations

from pathlib import Path

import torch

from alignment.config import SFTConfig
from alignment.data import (
    IGNORE_INDEX,
    TokenizedExample,
    check_sft_rows,
    load_sft_examples,
    pad_batch,
    split_holdout,
)
from alignment.logprobs import token_logprobs
from alignment.models import load_causal_lm, load_tokenizer
from alignment.trainer import TrainWorker, check_inputs, run_training


def token_nll_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the labelled tokens, and how many there are."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    return -token_logprobs(logits[:, :-1], labels).sum(), int((labels != IGNORE_INDEX).sum())


class SFTWorker(TrainWorker):
    config_class = SFTConfig

    def load_data(self) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
        config = self.config
        self.tokenizer = load_tokenizer(config.tokenizer or config.model, config.chat_template)
        train = load_sft_examples(config.data.train, self.tokenizer, config.data)
        if config.data.eval:
            return train, load_sft_examples(config.data.eval, self.tokenizer, config.data)
        return split_holdout(train, config.data.eval_fraction, config.train.seed)

    def build_model(self) -> torch.nn.Module:
        return load_causal_lm(self.config.model, self.strategy.dtype)

    def count_units(self, batch: list[TokenizedExample]) -> float:
        return float(sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in batch))

    def batch_loss(self, examples: list[TokenizedExample]):
        batch = {k: v.to(self.strategy.device) for k, v in pad_batch(examples, self.tokenizer.pad_token_id).items()}
        loss_sum, tokens = token_nll_sum(self.engine, batch)
        return loss_sum, float(tokens), {}


def run_sft(config: SFTConfig, resume: bool = False) -> Path:
    """Run `align sft`; returns the final HF model directory."""
    check_inputs(config, check_sft_rows)
    return run_training(config, SFTWorker, resume=resume)
