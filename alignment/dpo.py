"""DPO trainer (DPO, cDPO, IPO, SimPO): policy and frozen reference as DeepSpeed engines in the same actors.

Chosen and rejected go through one forward: by default one row per pair with their shared prefix
computed once (``data.share_prefix``, see :mod:`alignment.pair_packing`), else one concatenated padded
batch. The reference's log-probs are computed on the fly, or once before training
(``dpo.precompute_ref_logps``), after which the reference is freed. With LoRA the reference is the
policy with its adapters disabled: no second copy of the weights (docs/lora.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignment.config import DPOConfig
from alignment.logprobs import sequence_logps
from alignment.losses import preference_loss
from alignment.models import load_causal_lm
from alignment.pair_packing import packed_logps
from alignment.preference_data import PreferencePair, check_preference_rows
from alignment.trainer import PairWorker, ReferenceWorker, check_inputs, run_training


class DPOWorker(PairWorker, ReferenceWorker):
    config_class = DPOConfig

    def build_model(self) -> torch.nn.Module:
        return load_causal_lm(self.config.model, self.strategy.dtype)

    def prepare(self, total_steps: int) -> int:
        parameters = super().prepare(total_steps)
        self.reference = None
        if self.config.dpo.loss_type != "simpo":
            self.load_reference(self.config.dpo.reference)
            if self.config.dpo.precompute_ref_logps:
                pairs = self.train_examples + self.eval_examples
                for pair, (chosen, rejected) in zip(pairs, self.per_example(pairs, self._reference_logps)):
                    pair.ref_chosen, pair.ref_rejected = chosen, rejected
                self.free_reference()
        return parameters

    def _logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and labelled-token counts of the chosen sequences, then the rejected ones."""
        return packed_logps(model, batch) if self.config.data.share_prefix else sequence_logps(model, batch)

    def _reference_logps(self, pairs: list[PreferencePair],
                         batch: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if pairs[0].ref_chosen is not None:
            return (torch.tensor([p.ref_chosen for p in pairs], device=self.strategy.device),
                    torch.tensor([p.ref_rejected for p in pairs], device=self.strategy.device))
        batch = batch if batch is not None else self.pair_inputs(pairs)
        logps, _ = self.reference_forward(lambda model: self._logps(model, batch))
        return logps[: len(pairs)], logps[len(pairs) :]

    def batch_loss(self, examples: list[PreferencePair]):
        settings, n = self.config.dpo, len(examples)
        batch = self.pair_inputs(examples)
        logps, lengths = self._logps(self.engine, batch)
        ref_chosen, ref_rejected = self._reference_logps(examples, batch) if settings.loss_type != "simpo" else (None, None)
        losses, chosen_rewards, rejected_rewards = preference_loss(
            settings.loss_type, logps[:n], logps[n:], ref_chosen, ref_rejected, lengths[:n], lengths[n:],
            settings.beta, settings.label_smoothing, settings.simpo_gamma)
        if settings.nll_coef:
            losses = losses - settings.nll_coef * logps[:n] / lengths[:n].clamp(min=1)
        metrics = {
            "rewards/chosen_sum": float(chosen_rewards.sum()),
            "rewards/rejected_sum": float(rejected_rewards.sum()),
            "rewards/accuracies_sum": float((chosen_rewards > rejected_rewards).float().sum()),
            "rewards/margins_sum": float((chosen_rewards - rejected_rewards).sum()),
            "logps/chosen_sum": float(logps[:n].detach().sum()),
            "logps/rejected_sum": float(logps[n:].detach().sum()),
        }
        return losses.sum(), float(n), metrics


def run_dpo(config: DPOConfig, resume: bool = False) -> Path:
    """Run `align dpo`; returns the final HF model directory."""
    check_inputs(config, check_preference_rows, models=[(config.dpo.reference, "model")])
    return run_training(config, DPOWorker, resume=resume)
