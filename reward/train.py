"""Bradley-Terry reward-model trainer on the shared Ray + DeepSpeed core."""

from __future__ import annotations

from pathlib import Path

import torch

from alignment.config import RMConfig
from alignment.losses import bradley_terry_loss
from alignment.models import load_tokenizer
from alignment.preference_data import PreferencePair, check_preference_rows, load_train_eval, pair_batch
from alignment.trainer import TrainWorker, check_inputs, run_training


def pair_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor], pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar rewards of the chosen and rejected halves of one concatenated batch."""
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
    return rewards[:pairs], rewards[pairs:]


class RMWorker(TrainWorker):
    config_class = RMConfig

    def load_data(self) -> tuple[list[PreferencePair], list[PreferencePair]]:
        self.tokenizer = load_tokenizer(self.config.tokenizer or self.config.model)
        return load_train_eval(self.config.data, self.tokenizer, self.config.train.seed)

    def build_model(self) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(self.config.model, num_labels=1,
                                                                   dtype=self.strategy.dtype)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def example_length(self, example: PreferencePair) -> int:
        return max(len(example.chosen.input_ids), len(example.rejected.input_ids))

    def batch_loss(self, examples: list[PreferencePair]):
        n = len(examples)
        batch = {k: v.to(self.strategy.device) for k, v in pair_batch(examples, self.tokenizer.pad_token_id).items()}
        chosen, rejected = pair_rewards(self.engine, batch, n)
        margin = None
        if self.config.reward.use_margin:
            margin = torch.tensor([p.margin for p in examples], device=chosen.device)
        losses = bradley_terry_loss(chosen, rejected, margin, self.config.reward.center_coef)
        metrics = {
            "accuracy_sum": float((chosen > rejected).float().sum()),
            "rewards/chosen_sum": float(chosen.detach().sum()),
            "rewards/rejected_sum": float(rejected.detach().sum()),
            "rewards/margins_sum": float((chosen - rejected).detach().sum()),
        }
        return losses.sum(), float(n), metrics

    def export_hf(self, directory: str) -> None:
        """The reward model with its own config (sequence classification, one label), loadable by reward.model."""
        from reward.model import save_reward_model

        state = self.strategy.full_state_dict()
        if self.rank == 0:
            save_reward_model(state, self.engine.module.config, self.tokenizer, Path(directory))
        self.strategy.barrier()


def run_rm(config: RMConfig, resume: bool = False) -> Path:
    """Run `align rm`; returns the final reward-model directory."""
    check_inputs(config, check_preference_rows)
    return run_training(config, RMWorker, resume=resume)
