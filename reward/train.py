"""Bradley-Terry reward-model trainer on the shared Ray + DeepSpeed core."""

from __future__ import annotations

from pathlib import Path

import torch

from alignment.config import RMConfig
from alignment.errors import AlignError
from alignment.losses import bradley_terry_loss
from alignment.preference_data import PreferencePair, check_preference_rows
from alignment.trainer import PairWorker, check_inputs, run_training
from reward.model import reward_head_model


def pair_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor], pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar rewards of the chosen and the rejected sequences of one batch.

    The batch is either one padded row per sequence (:func:`pair_batch`) or one prefix-shared row per
    pair (:func:`alignment.pair_packing.pack_pairs`): then the head's score at each sequence's last
    token is read from the per-position scores it computes for the whole row.
    """
    if "last" not in batch:
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
        return rewards[:pairs], rewards[pairs:]
    scores: list[torch.Tensor] = []
    hook = getattr(model, "module", model).score.register_forward_hook(lambda _m, _i, output: scores.append(output))
    try:
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=batch["attention_mask"])
    finally:
        hook.remove()
    owner = torch.arange(2 * pairs, device=batch["last"].device).remainder(pairs)
    rewards = scores[0][owner, batch["last"], 0].float()
    return rewards[:pairs], rewards[pairs:]


class RMWorker(PairWorker):
    config_class = RMConfig

    def build_model(self) -> torch.nn.Module:
        model = reward_head_model(self.config.model, self.strategy.dtype, self.tokenizer.pad_token_id)
        if self.config.data.share_prefix and not isinstance(getattr(model, "score", None), torch.nn.Linear):
            raise AlignError(f"{type(model).__name__} has no `score` head to read per-token rewards from; "
                             "set data.share_prefix=false")
        return model

    def batch_loss(self, examples: list[PreferencePair]):
        n = len(examples)
        chosen, rejected = pair_rewards(self.engine, self.pair_inputs(examples), n)
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
        """The reward model with its own config (sequence classification, one label), loadable by reward.model
        (LoRA: merged, and the adapter with the trained head in ``adapter/``)."""
        from reward.model import save_reward_model

        config = self.engine.module.config
        self.strategy.export_hf(Path(directory), lambda state, out: save_reward_model(state, config, self.tokenizer, out))


def run_rm(config: RMConfig, resume: bool = False) -> Path:
    """Run `align rm`; returns the final reward-model directory."""
    check_inputs(config, check_preference_rows)
    return run_training(config, RMWorker, resume=resume)
