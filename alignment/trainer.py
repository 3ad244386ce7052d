"""The training loop shared by SFT, reward-model and DPO jobs.

A driver (plain Python) owns the loop, the data order, metrics and checkpoints; an
ActorGroup of :class:`TrainWorker` ranks owns model shards and does the math. Losses are
normalised by the *global* count of units (tokens for SFT, pairs for DPO) in the optimizer
step, so the result is independent of how the batch is split over ranks and micro-batches.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from alignment.cluster.group import ActorGroup, DistributedWorker
from alignment.data import RowCheck
from alignment.job import TrainingRun
from alignment.strategy import DeepSpeedStrategy


class TrainWorker(DistributedWorker):
    """One rank of a trained model. Subclasses say how to load data and compute a batch loss."""

    config_class: type[BaseModel]

    # ---- to implement ------------------------------------------------------------------------
    def load_data(self) -> tuple[list, list]:
        """(train examples, eval examples), identical on every rank."""
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def batch_loss(self, examples: list) -> tuple[torch.Tensor, float, dict[str, float]]:
        """(summed loss over units, number of units, summed extra metrics) of one micro-batch."""
        raise NotImplementedError

    # ---- provided ------------------------------------------------------------------------------
    def setup(self, config: dict) -> dict[str, int]:
        self.config = self.config_class.model_validate(config)
        torch.manual_seed(self.config.train.seed)
        train = self.config.train
        self.micro_batch_size = train.micro_batch_size
        self.accumulation = train.global_batch_size // (train.micro_batch_size * self.world_size)
        self.strategy = DeepSpeedStrategy(self.config.strategy, train.micro_batch_size, self.accumulation)
        self.train_examples, self.eval_examples = self.load_data()
        return {"train": len(self.train_examples), "eval": len(self.eval_examples)}

    def prepare(self, total_steps: int) -> int:
        """Build the model and its DeepSpeed engine; returns the trainable parameter count."""
        self.strategy.before_model_load(train=True)
        from alignment.lora import trainable_model

        model = trainable_model(self.build_model(), getattr(self.config, "lora", None), self.config.train.seed,
                                self.config.train.gradient_checkpointing)
        self.engine = self.strategy.prepare(model, self.config.optim, total_steps)
        return self.strategy.parameter_count()

    def trainable(self) -> int:
        """Parameters the optimizer updates (all of them, or LoRA's adapters and a reward head)."""
        return self.strategy.parameter_count(trainable=True)

    def train_step(self, indices: list[int]) -> dict[str, float]:
        """One optimizer step over this rank's share of the global batch ``indices``."""
        from alignment.data import length_balanced_micro_batches

        self.engine.train()
        lengths = [self.example_length(self.train_examples[i]) for i in indices]
        chunks = length_balanced_micro_batches(indices, lengths, self.rank, self.world_size, self.micro_batch_size)
        batches = [[self.train_examples[i] for i in chunk] for chunk in chunks]
        return optimizer_step(self.strategy, batches, self.batch_loss, self.count_units)

    def example_length(self, example) -> int:
        """Tokens one example puts into a forward (micro-batches group examples of similar length)."""
        return len(example.input_ids)

    def count_units(self, batch: list) -> float:
        return float(len(batch))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Summed loss and metrics over this rank's share of the held-out set.

        Every rank runs the same number of forward passes (ZeRO-3 gathers are collective);
        ranks with fewer examples repeat one example with weight 0.
        """
        self.engine.eval()
        mine = sorted(self.eval_examples[self.rank :: self.world_size], key=self.example_length)  # less padding
        per_rank = math.ceil(len(self.eval_examples) / self.world_size)
        totals: dict[str, float] = {"loss_sum": 0.0, "units": 0.0}
        for start in range(0, per_rank, self.micro_batch_size):
            batch = mine[start : start + self.micro_batch_size]
            weight = 1.0 if batch else 0.0
            loss_sum, units, extra = self.batch_loss(batch or self.eval_examples[:1])
            totals["loss_sum"] += weight * float(loss_sum)
            totals["units"] += weight * units
            for key, value in extra.items():
                totals[key] = totals.get(key, 0.0) + weight * value
        return totals

    @torch.no_grad()
    def per_example(self, examples: list, compute: Callable[[list], Sequence[torch.Tensor]]) -> list[tuple[float, ...]]:
        """``compute(micro_batch)`` (tensors of shape ``(len(micro_batch),)``) for every example, the ranks
        sharing the work; every rank gets all the values, in order. Every rank runs the same number of
        forwards (ZeRO-3 gathers are collective): a rank short of examples repeats one and drops it."""
        import torch.distributed as dist

        mine = list(range(self.rank, len(examples), self.world_size))
        results: dict[int, tuple[float, ...]] = {}
        for start in range(0, math.ceil(len(examples) / self.world_size), self.micro_batch_size):
            indices = mine[start : start + self.micro_batch_size]
            values = compute([examples[i] for i in indices or [0]])
            results.update({i: tuple(float(v[k]) for v in values) for k, i in enumerate(indices)})
        gathered: list = [results]
        if self.world_size > 1:
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, results)
        merged = {index: value for part in gathered for index, value in part.items()}
        return [merged[i] for i in range(len(examples))]

    def save(self, directory: str) -> None:
        self.strategy.save_checkpoint(Path(directory))

    def load(self, directory: str) -> None:
        self.strategy.load_checkpoint(Path(directory))

    def export_hf(self, directory: str) -> None:
        """Plain HF weights + tokenizer into ``directory`` (LoRA: merged, and the adapter in ``adapter/``)."""
        from alignment.models import save_hf_model

        self.strategy.export_hf(Path(directory), lambda state, out: save_hf_model(state, self.config.model, self.tokenizer, out))


class PairWorker(TrainWorker):
    """A rank that trains on preference pairs (DPO, reward models)."""

    def load_data(self) -> tuple[list, list]:
        from alignment.models import load_tokenizer
        from alignment.preference_data import load_train_eval

        self.tokenizer = load_tokenizer(self.config.tokenizer or self.config.model, self.config.chat_template)
        return load_train_eval(self.config.data, self.tokenizer, self.config.train.seed)

    def example_length(self, example) -> int:
        from alignment.pair_packing import packed_length

        if self.config.data.share_prefix:
            return packed_length(example.chosen, example.rejected)
        return 2 * max(len(example.chosen.input_ids), len(example.rejected.input_ids))

    def pair_inputs(self, pairs: list) -> dict[str, torch.Tensor]:
        """A micro-batch on this rank's device: prefix-shared rows (``data.share_prefix``, see
        :mod:`alignment.pair_packing`), else one padded row per sequence, all chosen then all rejected."""
        from alignment.pair_packing import pack_pairs
        from alignment.preference_data import pair_batch

        pad_id = self.tokenizer.pad_token_id
        if self.config.data.share_prefix:
            batch = pack_pairs([(p.chosen, p.rejected) for p in pairs], pad_id, self.strategy.dtype)
        else:
            batch = pair_batch(pairs, pad_id)
        return {k: v.to(self.strategy.device) for k, v in batch.items()}


class ReferenceWorker(TrainWorker):
    """A rank whose loss compares the policy with a frozen reference (DPO, KTO).

    The reference is a second inference engine on the same ranks, or, with LoRA and no other reference
    named, the policy itself with its adapters disabled: no second copy of the weights (docs/lora.md).
    """

    def load_reference(self, reference: str | None) -> None:
        from alignment.models import load_causal_lm

        self.reference = None
        if self.config.lora is None or reference is not None:
            self.reference = DeepSpeedStrategy(self.config.strategy, self.micro_batch_size, self.accumulation)
            self.reference.before_model_load(train=False)
            self.reference.prepare_inference(load_causal_lm(reference or self.config.model, self.strategy.dtype))

    def reference_forward(self, forward: Callable[[torch.nn.Module], Any]) -> Any:
        """``forward(model)`` on the reference, without gradients."""
        from alignment.lora import adapters_disabled

        with torch.no_grad():
            if self.reference is not None:
                return forward(self.reference.engine)
            with adapters_disabled(self.engine):
                return forward(self.engine)

    def free_reference(self) -> None:
        """Drop a separate reference engine (its log-probs are precomputed)."""
        if self.reference is not None:
            self.reference.engine.destroy() if hasattr(self.reference.engine, "destroy") else None
            self.reference = None
            gc.collect()


def optimizer_step(strategy: DeepSpeedStrategy, batches: list[list],
                   batch_loss: Callable[[list], tuple[torch.Tensor, float, dict[str, float]]],
                   count_units: Callable[[list], float]) -> dict[str, float]:
    """One optimizer step over this rank's micro-batches, the loss normalised by the global unit count.

    Returns this rank's sums (``loss_sum``, extra metrics), its ``units``, the grad norm and the LR.
    """
    world_size, accumulation = strategy.world_size, strategy.accumulation_steps
    local_units = sum(count_units(batch) for batch in batches)
    (global_units,) = strategy.all_reduce_sum([local_units])
    # DeepSpeed divides by accumulation steps and averages over ranks; undo both so the
    # gradient is that of (sum of unit losses) / (units in the global batch).
    scale = world_size * accumulation / max(global_units, 1.0)
    totals: dict[str, float] = {"loss_sum": 0.0, "units": local_units}
    for batch in batches:
        loss_sum, _, extra = batch_loss(batch)
        strategy.backward(loss_sum * scale)
        strategy.step()
        totals["loss_sum"] += float(loss_sum.detach())
        for key, value in extra.items():
            totals[key] = totals.get(key, 0.0) + value
    totals["grad_norm"] = strategy.grad_norm()
    totals["lr"] = strategy.current_lr()
    return totals


def reduce_metrics(results: list[dict[str, float]], prefix: str) -> dict[str, float]:
    """Sum rank results and turn sums into means per unit: loss_sum/units -> loss, x_sum -> x."""
    units = sum(r["units"] for r in results)
    merged: dict[str, float] = {}
    for key in results[0]:
        if key in ("units", "grad_norm", "lr"):
            continue
        total = sum(r[key] for r in results)
        merged[f"{prefix}/{key.removesuffix('_sum')}"] = total / max(units, 1.0)
    for key in ("grad_norm", "lr"):
        if key in results[0]:
            merged[f"{prefix}/{key}"] = results[0][key]
    return merged


def check_inputs(config: Any, check_rows: Callable[[str, Any], RowCheck],
                 models: Sequence[tuple[str | None, str]] = ()) -> None:
    """The file-system checks a training job makes before any cluster starts: model and tokenizer
    directories (plus ``models``: (path, what) pairs), the structure of every data row, and a chat
    template wherever rows are conversational (``chat_template`` or the tokenizer's own)."""
    from alignment.chat_templates import require_chat_template
    from alignment.models import check_model_dir

    check_model_dir(config.model)
    if getattr(config, "lora", None) is not None:
        from alignment.lora import check_lora

        check_lora(config.lora, config.model)
    for path, what in ((config.tokenizer, "tokenizer"), *models):
        if path:
            check_model_dir(path, what)
    for path in (config.data.train, config.data.eval):
        if path:
            found = check_rows(path, config.data)
            if found.conversational:
                require_chat_template(config.tokenizer or config.model, config.chat_template,
                                      f"{path} ({found.conversational} of {found.rows} rows)")


def run_training(config: Any, worker_cls: type[TrainWorker], resume: bool = False) -> Path:
    """Drive a training job end to end; returns the directory of the final HF model."""
    from alignment.cluster.runtime import start_ray
    from alignment.data import StepSampler

    run = TrainingRun(config, resume)
    timer = run.timer
    with timer.phase("startup"):
        start_ray(config.cluster)
        group = ActorGroup(worker_cls, config.cluster, name=worker_cls.__name__.lower(),
                           timeout_minutes=config.strategy.timeout_minutes)
    try:
        with timer.phase("startup"):
            sizes = group.call("setup", config.model_dump(mode="json"))[0]
            sampler = StepSampler(sizes["train"], config.train.global_batch_size, config.train.seed, config.data.shuffle)
            total_steps = config.train.max_steps or sampler.steps_per_epoch * config.train.epochs
            parameters = group.call("prepare", total_steps)[0]
            lora = getattr(config, "lora", None)
            if lora is not None:
                print(f"LoRA rank {lora.rank}, alpha {lora.alpha:g} on {lora.target_modules}: "
                      f"{group.call('trainable')[0] / 1e6:.3f}M of {parameters / 1e6:.2f}M parameters train")
        start_step, state = 0, run.resume_state()
        if run.resume_from is not None:
            with timer.phase("resume"):
                group.call("load", str(run.resume_from))
                start_step = state["step"]
            print(f"resumed from {run.resume_from} at step {start_step}")
        print(
            f"{worker_cls.__name__}: {parameters / 1e6:.2f}M parameters, {sizes['train']} train / {sizes['eval']} eval rows, "
            f"{total_steps} steps of {config.train.global_batch_size} on {config.cluster.num_workers} ranks, "
            f"ZeRO-{config.strategy.zero_stage}; startup {timer.pop()['time/startup_s']:.1f} s"
        )
        run.open_tracker(start_step, state)

        def train_step(step: int) -> dict[str, Any]:
            with timer.phase("train"):
                metrics = reduce_metrics(group.call("train_step", sampler.indices(step - 1)), "train")
            metrics["train/epoch"] = (step - 1) / sampler.steps_per_epoch
            return metrics

        def write(staging: Path) -> None:
            group.call("save", str(staging))
            group.call("export_hf", str(staging / "hf"))

        final = run.loop(start_step, total_steps, train_step, write,
                         evaluate=(lambda: reduce_metrics(group.call("evaluate"), "eval")) if sizes["eval"] else None,
                         postfix=lambda m: {"loss": f"{m['train/loss']:.4f}"})
        print(f"final model: {final}\nmetrics: {run.tracker.path}\nTensorBoard: tensorboard --logdir {run.output_dir}")
        return final
    finally:
        group.shutdown()
