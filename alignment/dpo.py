"""DPO trainer (DPO, cDPO, IPO, SimPO): policy and frozen reference as DeepSpeed engines in the same actors.

Chosen and rejected go through one forward: by default one row per pair with their shared prefix
computed once (``data.share_prefix``, see :mod:`alignment.pair_packing`), else one concatenated padded
batch. The reference's log-probs are computed on the fly, or once before training
(``dpo.precompute_ref_logps``), after which the reference is freed. With LoRA the reference is the
policy with its adapters disabled: no second copy of the weights (docs/lora.md).
"""

from __future__ import annotations

import gc
import math
from pathlib import Path

import torch
import torch.distributed as dist

from alignment.config import DPOConfig
from alignment.logprobs import sequence_logps
from alignment.lora import adapters_disabled
from alignment.losses import preference_loss
from alignment.models import load_causal_lm
from alignment.pair_packing import packed_logps
from alignment.preference_data import PreferencePair, check_preference_rows
from alignment.strategy import DeepSpeedStrategy
from alignment.trainer import PairWorker, check_inputs, run_training


class DPOWorker(PairWorker):
    config_class = DPOConfig

    def build_model(self) -> torch.nn.Module:
        return load_causal_lm(self.config.model, self.strategy.dtype)

    def prepare(self, total_steps: int) -> int:
        parameters = super().prepare(total_steps)
        self.reference = None
        # With LoRA (and no other reference named) the reference is the policy with its adapters disabled.
        self.reference_is_base = self.config.lora is not None and self.config.dpo.reference is None
        if self.config.dpo.loss_type != "simpo" and not self.reference_is_base:
            self.reference = DeepSpeedStrategy(self.config.strategy, self.micro_batch_size, self.accumulation)
            self.reference.before_model_load(train=False)
            self.reference.prepare_inference(load_causal_lm(self.config.dpo.reference or self.config.model,
                                                            self.strategy.dtype))
        if self.config.dpo.loss_type != "simpo" and self.config.dpo.precompute_ref_logps:
            self._precompute_reference()
        return parameters

    @torch.no_grad()
    def _precompute_reference(self) -> None:
        """Reference log-probs of every train and eval pair (ranks share the work), then free the reference."""
        pairs = self.train_examples + self.eval_examples
        mine = list(range(self.rank, len(pairs), self.world_size))
        per_rank = math.ceil(len(pairs) / self.world_size)
        results: dict[int, tuple[float, float]] = {}
        for start in range(0, per_rank, self.micro_batch_size):  # same number of forwards on every rank (ZeRO-3)
            indices = mine[start : start + self.micro_batch_size]
            chosen, rejected = self._reference_logps([pairs[i] for i in indices or [0]])
            results.update({i: (float(c), float(r)) for i, c, r in zip(indices, chosen, rejected)})
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, results) if self.world_size > 1 else gathered.__setitem__(0, results)
        for part in gathered:
            for index, (chosen_logp, rejected_logp) in part.items():
                pairs[index].ref_chosen, pairs[index].ref_rejected = chosen_logp, rejected_logp
        if self.reference is not None:
            self.reference.engine.destroy() if hasattr(self.reference.engine, "destroy") else None
            self.reference = None
            gc.collect()

    def _logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and labelled-token counts of the chosen sequences, then the rejected ones."""
        return packed_logps(model, batch) if self.config.data.share_prefix else sequence_logps(model, batch)

    def _reference_logps(self, pairs: list[PreferencePair],
                         batch: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if pairs[0].ref_chosen is not None:
            return (torch.tensor([p.ref_chosen for p in pairs], device=self.strategy.device),
                    torch.tensor([p.ref_rejected for p in pairs], device=self.strategy.device))
        batch = batch if batch is not None else self.pair_inputs(pairs)
        with torch.no_grad():
            if self.reference is not None:
                logps, _ = self._logps(self.reference.engine, batch)
            else:  # LoRA: the same weights without the adapters
                with adapters_disabled(self.engine):
                    logps, _ = self._logps(self.engine, batch)
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
