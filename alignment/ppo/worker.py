"""One rank of a PPO model group: hosts any of actor, critic, reference and reward as DeepSpeed engines.

Which roles a process hosts is the ``colocate`` setting: colocated models share the process
(and its devices) and take turns. Every method is called on all ranks of the group at once,
each with its own equal share of the samples (ZeRO-3 gathers are collective).

What a rank receives is its share of one :class:`alignment.ppo.batch.RolloutBatch` (padded tensors
with documented shapes); what it returns is a tensor of per-response-token outputs, [b, R].
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from alignment.cluster.group import DistributedWorker
from alignment.data import length_balanced_micro_batches
from alignment.logprobs import entropies, token_logprobs
from alignment.lora import adapters_disabled, trainable_model
from alignment.models import load_causal_lm, load_tokenizer, save_hf_model
from alignment.ppo.batch import RolloutBatch
from alignment.ppo.config import PPOConfig, Role
from alignment.ppo.kl import kl_estimate
from alignment.ppo.losses import aggregate, loss_units, policy_loss, sequence_ratio_loss, value_loss
from alignment.ppo.packing import ForwardRows, padded_rows, prompt_grouped_chunks, shared_rows
from alignment.strategy import DeepSpeedStrategy
from alignment.trainer import optimizer_step
from rollout.weight_broadcast import BroadcastSender

TRAINED: tuple[Role, ...] = ("actor", "critic")


def length_chunks(lengths: list[int], micro: int) -> list[list[int]]:
    """Sample indices in micro-batches of similar length (fewer padded positions per forward)."""
    return length_balanced_micro_batches(range(len(lengths)), lengths, 0, 1, micro)


def response_logprobs(model: torch.nn.Module, batch: RolloutBatch, temperature: float,
                      entropy: Literal["grad", "metric"] | None = "grad", rows: ForwardRows | None = None):
    """[b, R] log-probabilities of each response token under softmax(logits / temperature), and their
    entropies: differentiable ("grad", a loss term), without gradient ("metric") or not computed (None).
    ``rows``: how the model reads the batch (:mod:`alignment.ppo.packing`; default one padded row per sample)."""
    rows = rows or padded_rows(batch)
    logits = model(**rows.model_inputs()).logits
    targets = batch.input_ids.to(logits.device).gather(1, batch.positions.to(logits.device) + 1)
    logprobs = token_logprobs(logits, targets, rows.rows, rows.positions, temperature)
    if entropy is None:
        return logprobs, None
    with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
        return logprobs, entropies(logits, rows.rows, rows.positions, temperature)


def response_values(model: torch.nn.Module, batch: RolloutBatch, rows: ForwardRows | None = None) -> torch.Tensor:
    """[b, R] the critic's value of the state before each response token."""
    rows = rows or padded_rows(batch)
    values = model(**rows.model_inputs()).logits[..., 0].float()
    return values[rows.rows, rows.positions]


class PPOWorker(BroadcastSender, DistributedWorker):
    """Actor / critic / reference / reward on one rank; each call gets this rank's share of a RolloutBatch."""

    def setup(self, config: dict, roles: list[Role], total_updates: int) -> dict[str, int]:
        """Load this rank's models; returns each one's parameter count."""
        cfg = self.config = PPOConfig.model_validate(config)
        torch.manual_seed(cfg.train.seed)
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, cfg.chat_template)
        self.micro = cfg.train.micro_batch_size
        accumulation = cfg.algorithm.mini_batch_size // (self.micro * self.world_size)
        self.models: dict[Role, DeepSpeedStrategy] = {}
        counts = {}
        for role in roles:
            if role == "reference" and cfg.reference_is_actor:
                continue  # the actor with its adapters disabled: no weights of its own
            strategy = DeepSpeedStrategy(cfg.strategy_for(role), self.micro, accumulation)
            trained = role in TRAINED
            strategy.before_model_load(train=trained)
            model = self._load(role, strategy.dtype)
            if trained:
                model = trainable_model(model, cfg.lora, cfg.train.seed, cfg.train.gradient_checkpointing)
                strategy.prepare(model, cfg.optim if role == "actor" else cfg.critic_optim, total_updates)
            else:
                strategy.prepare_inference(model)
            self.models[role] = strategy
            counts[role] = strategy.parameter_count()
            if trained and cfg.lora is not None:
                counts[f"{role} trainable"] = strategy.parameter_count(trainable=True)
        return counts

    def _load(self, role: Role, dtype: torch.dtype) -> torch.nn.Module:
        cfg = self.config
        if role == "actor":
            return load_causal_lm(cfg.model, dtype)
        if role == "reference":
            return load_causal_lm(cfg.reference or cfg.model, dtype)
        if role == "critic":
            from transformers import AutoConfig, AutoModelForTokenClassification

            # A token-value head on the backbone (from a reward model its head carries over); no dropout.
            config = AutoConfig.from_pretrained(cfg.critic_init(), num_labels=1)
            config.classifier_dropout = 0.0
            model = AutoModelForTokenClassification.from_pretrained(cfg.critic_init(), config=config, dtype=dtype)
            model.config.pad_token_id = self.tokenizer.pad_token_id
            return model
        from reward.model import load_reward_model

        model, self.reward_tokenizer = load_reward_model(cfg.reward.model, dtype, cfg.chat_template)
        return model

    @staticmethod
    def _in_sample_order(count: int, chunks: list[list[int]], outputs) -> list:
        """``outputs(indices)`` over the micro-batches ``chunks`` of ``count`` samples; results in sample order."""
        results: list = [None] * count
        for indices in chunks:
            for index, result in zip(indices, outputs(indices)):
                results[index] = result
        return results

    def _micro_batches(self, batch: RolloutBatch, indices: list[int]) -> list[list[int]]:
        """``indices`` in micro-batches: the samples of a prompt together (``train.share_prompts``),
        else of similar length."""
        if self.config.train.share_prompts:
            return prompt_grouped_chunks(batch, indices, self.micro)
        lengths = batch.lengths.tolist()
        return [[indices[i] for i in chunk] for chunk in length_chunks([lengths[i] for i in indices], self.micro)]

    def _rows(self, chunk: RolloutBatch, strategy: DeepSpeedStrategy) -> ForwardRows | None:
        """How the model reads ``chunk`` (on its device): prompt-shared rows, or None (padded rows)."""
        return shared_rows(chunk, strategy.dtype) if self.config.train.share_prompts else None

    # ---- experience ------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, role: Role, batch: RolloutBatch) -> torch.Tensor:
        """[b, R] per-response-token outputs: log-probs (actor, reference) or values (critic)."""
        base = role == "reference" and self.config.reference_is_actor
        strategy = self.models["actor" if base else role]
        strategy.engine.eval()
        out = torch.zeros(batch.response_mask.shape)

        def outputs(indices: list[int]) -> list[torch.Tensor]:
            chunk = batch.select(indices).to(strategy.device)
            rows = self._rows(chunk, strategy)
            if role == "critic":
                values = response_values(strategy.engine, chunk, rows)
            else:
                values, _ = response_logprobs(strategy.engine, chunk, self.config.sampling.temperature, None, rows)
            return list((values * chunk.response_mask).cpu())

        with adapters_disabled(strategy.engine) if base else contextlib.nullcontext():
            rows = self._in_sample_order(len(batch), self._micro_batches(batch, list(range(len(batch)))), outputs)
        for index, row in enumerate(rows):
            out[index, : row.shape[0]] = row
        return out

    @torch.no_grad()
    def score(self, prompts: list, texts: list[str]) -> torch.Tensor:
        """[b] the reward model's score of each (prompt, response text), read with its own tokenizer."""
        from reward.model import encode_conversations, score_token_ids

        strategy = self.models["reward"]
        ids = encode_conversations(self.reward_tokenizer, prompts, texts, self.config.reward.max_length)
        chunks = length_chunks([len(x) for x in ids], self.micro)
        scores = self._in_sample_order(len(ids), chunks, lambda indices: score_token_ids(
            strategy.engine, [ids[i] for i in indices], self.reward_tokenizer.pad_token_id, strategy.device))
        return torch.tensor(scores, dtype=torch.float32)

    # ---- training --------------------------------------------------------------------------

    def train(self, role: Role, batch: RolloutBatch, step: int, kl_coef: float = 0.0) -> dict[str, float]:
        """All PPO epochs over this rank's share in minibatches; returns summed metrics for the driver."""
        cfg = self.config.algorithm
        strategy = self.models[role]
        strategy.engine.train()
        per_rank = cfg.mini_batch_size // self.world_size
        loss = self._actor_loss if role == "actor" else self._critic_loss
        mode = cfg.loss_aggregation if role == "actor" else "token"
        totals: dict[str, float] = {"updates": 0.0}
        for epoch in range(cfg.ppo_epochs):
            order = np.random.default_rng([self.config.train.seed, step, epoch, self.rank]).permutation(len(batch))
            for start in range(0, len(batch), per_rank):
                minibatch = order[start : start + per_rank].tolist()
                chunks = [batch.select(indices) for indices in self._micro_batches(batch, minibatch)]
                result = optimizer_step(
                    strategy, chunks, lambda chunk: loss(chunk.to(strategy.device), mode, kl_coef),
                    lambda chunk: loss_units(chunk.loss_mask, mode, self.config.sampling.max_tokens),
                )
                for key, value in result.items():
                    totals[key] = value if key in ("grad_norm", "lr") else totals.get(key, 0.0) + value
                totals["updates"] += 1
        return totals

    def _actor_loss(self, batch: RolloutBatch, mode: str, kl_coef: float):
        cfg = self.config.algorithm
        mask = batch.loss_mask
        actor = self.models["actor"]
        logprobs, entropy = response_logprobs(actor.engine, batch, self.config.sampling.temperature,
                                              "grad" if cfg.entropy_coef else "metric", self._rows(batch, actor))
        old = batch.old_logprobs
        if cfg.importance_ratio == "sequence":
            token_loss, clipped, ratio = sequence_ratio_loss(logprobs, old, batch.advantages, mask, cfg.clip_low, cfg.clip_high)
        else:
            token_loss, clipped, ratio = policy_loss(logprobs, old, batch.advantages, cfg.clip_low, cfg.clip_high,
                                                     cfg.dual_clip)
        if batch.is_weights is not None:  # truncated importance sampling against the engine's log-probs
            token_loss = token_loss * batch.is_weights
        if cfg.entropy_coef:
            token_loss = token_loss - cfg.entropy_coef * entropy
        if self.config.kl_in_loss:
            token_loss = token_loss + kl_coef * kl_estimate(logprobs, batch.ref_logprobs, self.config.kl.estimator)
        loss_sum, units = aggregate(token_loss, mask, mode, self.config.sampling.max_tokens)
        log_ratio = (logprobs - old).detach()
        metrics = {
            "tokens": float(mask.sum()),
            "clip_frac_tsum": float((clipped * mask).sum()),
            "ratio_tsum": float((ratio.detach() * mask).sum()),
            "entropy_tsum": float((entropy.detach() * mask).sum()),
            "approx_kl_tsum": float((0.5 * log_ratio**2 * mask).sum()),
        }
        return loss_sum, units, metrics

    def _critic_loss(self, batch: RolloutBatch, mode: str, kl_coef: float):
        mask = batch.loss_mask
        critic = self.models["critic"]
        values = response_values(critic.engine, batch, self._rows(batch, critic))
        old = batch.old_values
        clip = self.config.algorithm.value_clip
        loss_sum, units = aggregate(value_loss(values, old, batch.returns, clip), mask, "token")
        clipped = ((values - old).abs() > clip).float() if clip is not None else torch.zeros_like(mask)
        metrics = {
            "tokens": float(mask.sum()),
            "clip_frac_tsum": float((clipped * mask).sum()),
            "values_tsum": float((values.detach() * mask).sum()),
        }
        return loss_sum, units, metrics

    # ---- weights and checkpoints -------------------------------------------------------------

    def broadcast_source(self) -> DeepSpeedStrategy:
        return self.models["actor"]

    def actor_weights(self) -> list | None:
        """Gather the actor's full weights (collective); rank 0 puts them in Ray's object store.

        Returns ``[ref]`` on rank 0 (a list, so Ray hands the reference over instead of the tensors).
        """
        import ray

        state = self.models["actor"].full_state_dict()
        return [ray.put(state)] if state is not None else None

    def actor_adapter(self) -> dict[str, bytes] | None:
        """The actor's LoRA adapter files (collective under ZeRO-3); rank 0's, None elsewhere."""
        return self.models["actor"].adapter_files()

    def save(self, directory: str) -> None:
        for role in TRAINED:
            if role in self.models:
                self.models[role].save_checkpoint(Path(directory) / role)

    def load(self, directory: str) -> None:
        for role in TRAINED:
            if role in self.models:
                self.models[role].load_checkpoint(Path(directory) / role)

    def export_hf(self, directory: str) -> None:
        """The actor as a plain HF model + tokenizer (LoRA: merged, and the adapter in ``adapter/``)."""
        self.models["actor"].export_hf(
            Path(directory), lambda state, out: save_hf_model(state, self.config.model, self.tokenizer, out))
