"""KTO trainer: the policy learns from single answers judged desirable or undesirable (no pairs needed).

Kahneman-Tversky optimisation (Ethayarajh et al. 2024): each answer's implicit reward
r = log pi(y|x) - log pi_ref(y|x) is pushed above (desirable) or below (undesirable) a reference point
z0, the policy's KL from the reference, estimated on mismatched (prompt, completion) pairs
(:mod:`alignment.feedback_data`). z0 is estimated once per optimizer step over the whole global batch,
on every rank alike, so the step does not depend on how the batch is split over ranks and
micro-batches; with the batch in one micro-batch on one rank it is TRL's ``KTOTrainer`` step.
The reference is a frozen engine in the same actors, or with LoRA the policy with its adapters disabled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignment.config import KTOConfig
from alignment.data import pad_batch
from alignment.feedback_data import FeedbackExample, check_feedback_rows
from alignment.logprobs import sequence_logps
from alignment.losses import kto_loss, kto_reference_point
from alignment.models import load_causal_lm
from alignment.trainer import ReferenceWorker, check_inputs, run_training


class KTOWorker(ReferenceWorker):
    config_class = KTOConfig

    def load_data(self) -> tuple[list, list]:
        from alignment.feedback_data import load_train_eval
        from alignment.models import load_tokenizer

        self.tokenizer = load_tokenizer(self.config.tokenizer or self.config.model, self.config.chat_template)
        return load_train_eval(self.config.data, self.tokenizer, self.config.train.seed)

    def build_model(self) -> torch.nn.Module:
        return load_causal_lm(self.config.model, self.strategy.dtype)

    def example_length(self, example: FeedbackExample) -> int:
        return len(example.example.input_ids) + len(example.mismatched.input_ids) * self.uses_kl

    @property
    def uses_kl(self) -> bool:
        return self.config.kto.loss_type == "kto"

    def prepare(self, total_steps: int) -> int:
        parameters = super().prepare(total_steps)
        self.load_reference(self.config.kto.reference)
        self.z0 = 0.0
        if self.config.kto.precompute_ref_logps:
            examples = self.train_examples + self.eval_examples
            for example, (ref, ref_mismatched) in zip(examples, self.per_example(examples, self._precomputed)):
                example.ref, example.ref_mismatched = ref, ref_mismatched
            self.free_reference()
        return parameters

    def _inputs(self, sequences: list) -> dict[str, torch.Tensor]:
        return {k: v.to(self.strategy.device) for k, v in pad_batch(sequences, self.tokenizer.pad_token_id).items()}

    def _reference_logps(self, examples: list[FeedbackExample], mismatched: bool = False) -> torch.Tensor:
        """Reference log-probs of the judged sequences, or of the mismatched ones."""
        cached = [e.ref_mismatched if mismatched else e.ref for e in examples]
        if cached[0] is not None:
            return torch.tensor(cached, device=self.strategy.device)
        batch = self._inputs([e.mismatched if mismatched else e.example for e in examples])
        return self.reference_forward(lambda model: sequence_logps(model, batch))[0]

    def _precomputed(self, examples: list[FeedbackExample]) -> tuple[torch.Tensor, ...]:
        judged = self._reference_logps(examples)
        return judged, self._reference_logps(examples, mismatched=True) if self.uses_kl else torch.zeros_like(judged)

    def _set_reference_point(self, examples: list[FeedbackExample]) -> None:
        """z0 over the mismatched pairs of ``examples`` (this step's global batch, or the held-out set),
        the ranks sharing the forwards."""
        if not self.uses_kl:
            return

        def kl_logratios(batch: list[FeedbackExample]) -> tuple[torch.Tensor]:
            policy, _ = sequence_logps(self.engine, self._inputs([e.mismatched for e in batch]))
            return (policy - self._reference_logps(batch, mismatched=True),)

        values = self.per_example(examples, kl_logratios)
        self.z0 = float(kto_reference_point(torch.tensor([v for (v,) in values], dtype=torch.float64)))

    def train_step(self, indices: list[int]) -> dict[str, float]:
        self.engine.train()
        self._set_reference_point([self.train_examples[i] for i in indices])
        return super().train_step(indices)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.engine.eval()
        self._set_reference_point(self.eval_examples)
        return super().evaluate()

    def batch_loss(self, examples: list[FeedbackExample]):
        settings, n = self.config.kto, len(examples)
        logps, _ = sequence_logps(self.engine, self._inputs([e.example for e in examples]))
        ref = self._reference_logps(examples)
        desirable = torch.tensor([e.desirable for e in examples], device=logps.device)
        logratios = logps - ref
        losses = kto_loss(logratios, desirable, self.z0, settings.beta, settings.desirable_weight,
                          settings.undesirable_weight, settings.loss_type)
        rewards = settings.beta * logratios.detach()
        signed = torch.where(desirable, rewards, -rewards)
        metrics = {
            "kl_sum": self.z0 * n,
            "rewards/signed_sum": float(signed.sum()),  # > 0: desirable answers up, undesirable down
            "rewards/accuracies_sum": float((signed > 0).float().sum()),
            "desirable_sum": float(desirable.float().sum()),
        }
        return losses.sum(), float(n), metrics


def run_kto(config: KTOConfig, resume: bool = False) -> Path:
    """Run `align kto`; returns the final HF model directory."""
    check_inputs(config, check_feedback_rows, models=[(config.kto.reference, "model")])
    return run_training(config, KTOWorker, resume=resume)
