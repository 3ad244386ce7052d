"""DeepSpeed ZeRO behind one small interface: prepare, backward/step, checkpoints, full weights.

The strategy knows nothing of Ray: given an initialised torch.distributed group it runs the
same under ``torchrun`` as inside ActorGroup actors.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from alignment.config import OptimConfig, StrategyConfig


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` is bf16 on CUDA and fp32 elsewhere (bf16 is slow on CPUs without native support)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def lr_lambda(optim: OptimConfig, total_steps: int):
    """LR multiplier per optimizer step: linear warm-up, then constant, linear or cosine decay."""
    warmup = int(optim.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if optim.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        shape = 1.0 - progress if optim.scheduler == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * shape

    return factor


class DeepSpeedStrategy:
    """One model's DeepSpeed engine on this rank."""

    def __init__(self, config: StrategyConfig, micro_batch_size: int = 1, accumulation_steps: int = 1) -> None:
        self.config = config
        self.dtype = resolve_dtype(config.dtype)
        self.micro_batch_size = micro_batch_size
        self.accumulation_steps = accumulation_steps
        self.engine = None
        self._hf_ds_config = None  # keeps transformers' ZeRO-3 hook alive while loading
        self._unsharded_norm = float("nan")

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_initialized() else 1

    @property
    def device(self) -> torch.device:
        from deepspeed.accelerator import get_accelerator

        name = get_accelerator().device_name()
        return torch.device(name, get_accelerator().current_device()) if name == "cuda" else torch.device(name)

    def ds_config(self, train: bool = True) -> dict[str, Any]:
        # Stages 1-2 shard optimizer state and gradients, which a frozen (inference) model has none of;
        # DeepSpeed refuses them without an optimizer, so inference engines use stage 0 unless stage 3.
        stage = self.config.zero_stage if train or self.config.zero_stage == 3 else 0
        zero: dict[str, Any] = {"stage": stage}
        if self.config.zero_stage == 3:
            zero["stage3_param_persistence_threshold"] = self.config.param_persistence_threshold
            zero["stage3_gather_16bit_weights_on_model_save"] = False
        if self.config.offload_optimizer and train:
            zero["offload_optimizer"] = {"device": "cpu"}
        if self.config.offload_params:
            zero["offload_param"] = {"device": "cpu"}
        config = {
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": self.accumulation_steps,
            "train_batch_size": self.micro_batch_size * self.accumulation_steps * self.world_size,
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": self.dtype == torch.bfloat16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if train and self.config.grad_clip > 0:
            config["gradient_clipping"] = self.config.grad_clip
        return config

    def before_model_load(self, train: bool = True) -> None:
        """Under ZeRO-3, make transformers' from_pretrained partition weights as it loads them."""
        if self.config.zero_stage == 3:
            import torch._dynamo  # noqa: F401  (must be imported before zero.Init patches tensors)
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config(train))

    def prepare(self, model: torch.nn.Module, optim: OptimConfig, total_steps: int):
        """Wrap ``model`` for training with AdamW and the LR schedule; returns the engine."""
        import deepspeed

        trainable = [param for param in model.parameters() if param.requires_grad]  # LoRA: the adapters only
        if self.config.offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(
                trainable, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(
                trainable, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, total_steps))
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config(train=True)
        )
        self._drop_tied_frozen_weights(model)
        return self.engine

    def _drop_tied_frozen_weights(self, model: torch.nn.Module) -> None:
        """Keep frozen weights out of checkpoints also under a second name: DeepSpeed's
        ``exclude_frozen_parameters`` drops the names of ``named_parameters()``, which lists a tied weight
        (an LM head sharing the embedding) once, so a LoRA checkpoint still held the embedding (113 MB of
        SmolLM2-135M's 117 MB). The engine's state-dict method is wrapped to drop every frozen name."""
        frozen = {name for name, param in model.named_parameters(remove_duplicate=False) if not param.requires_grad}
        if not frozen:
            return
        module_state_dict = self.engine.module_state_dict

        def without_frozen(*args, exclude_frozen_parameters: bool = False, **kwargs):
            state = module_state_dict(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
            for name in frozen & state.keys() if exclude_frozen_parameters else ():
                del state[name]
            return state

        self.engine.module_state_dict = without_frozen

    def prepare_inference(self, model: torch.nn.Module):
        """Wrap a frozen model (reference, reward): sharded under ZeRO-3, no optimizer state."""
        import deepspeed

        model.requires_grad_(False)
        self.engine, *_ = deepspeed.initialize(model=model, config=self.ds_config(train=False))
        self.engine.eval()
        return self.engine

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        """Optimizer step at the accumulation boundary; True when the weights changed."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        if boundary and not hasattr(self.engine.optimizer, "_global_grad_norm"):
            # ZeRO-0 with a torch optimizer: DeepSpeed clips without keeping the norm; the gradients are
            # averaged over ranks by now, so every rank computes the same global norm
            self._unsharded_norm = float(torch.nn.utils.get_total_norm(
                [p.grad for p in self.engine.module.parameters() if p.grad is not None]))
        self.engine.step()
        return boundary

    def grad_norm(self) -> float:
        """The global gradient norm before clipping, of the last optimizer step (nan before the first)."""
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else self._unsharded_norm

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum floats across ranks (float64 on the wire)."""
        tensor = torch.tensor(values, dtype=torch.float64)
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    # ---- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self, directory: Path) -> None:
        """Write model, optimizer, scheduler (DeepSpeed) and this rank's RNG states into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        # Frozen weights (a LoRA base) are loaded again from the model directory: not copied into every checkpoint.
        self.engine.save_checkpoint(str(directory), tag="deepspeed", exclude_frozen_parameters=self._has_frozen())
        torch.save(
            {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            directory / f"rng_rank{self.rank}.pt",
        )

    def load_checkpoint(self, directory: Path) -> None:
        """Restore what :meth:`save_checkpoint` wrote (same world size)."""
        load_path, _ = self.engine.load_checkpoint(
            str(directory), tag="deepspeed", load_optimizer_states=True, load_lr_scheduler_states=True,
            load_module_strict=not self._has_frozen(),
        )
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        state = torch.load(directory / f"rng_rank{self.rank}.pt", weights_only=False)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def parameter_count(self, trainable: bool = False) -> int:
        """Parameters of the model (whole, also under ZeRO-3); only those the optimizer updates if ``trainable``."""
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters()
                   if p.requires_grad or not trainable)

    def _has_frozen(self) -> bool:
        return any(not param.requires_grad for param in self.engine.module.parameters())

    def full_weight_layout(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """Name, whole shape and dtype of every tensor :meth:`full_weights` yields, in its order (no gathering)."""
        from alignment.lora import is_peft_model, plain_name

        module = self.engine.module
        if is_peft_model(module):
            named = [(plain_name(name), param) for name, param in module.get_base_model().named_parameters()]
            named = [(name, param) for name, param in named if name is not None]
        else:
            named = list(module.named_parameters())
        layout = [(name, tuple(getattr(param, "ds_shape", param.shape)), param.dtype) for name, param in named]
        return layout + [(name, tuple(buffer.shape), buffer.dtype) for name, buffer in self._persistent_buffers()]

    def full_weights(self) -> Iterator[tuple[str, torch.Tensor | None]]:
        """Every parameter and persistent buffer, whole, one at a time; the tensor is rank 0's only
        (None elsewhere) and valid until the next item. Collective under ZeRO-3: every rank must iterate.
        A LoRA model yields its plain Hugging Face weights with the adapters merged in."""
        from alignment.lora import is_peft_model, merged_weights

        module = self.engine.module
        if is_peft_model(module):
            yield from merged_weights(module, self._gathered, self.rank == 0)
        else:
            for name, param in module.named_parameters():
                with self._gathered([param]):
                    yield name, param.data if self.rank == 0 else None
        for name, buffer in self._persistent_buffers():
            yield name, buffer if self.rank == 0 else None

    def adapter_files(self) -> dict[str, bytes] | None:
        """A LoRA model's adapter as PEFT files (name -> bytes); rank 0's, None elsewhere. Collective under ZeRO-3."""
        from alignment.lora import adapter_files

        return adapter_files(self.engine.module, self._gathered, self.rank == 0)

    @staticmethod
    def _gathered(params: list[torch.nn.Parameter]):
        """Whole ZeRO-3 parameters inside the block (a no-op for parameters that are not partitioned)."""
        import contextlib

        import deepspeed

        partitioned = [param for param in params if hasattr(param, "ds_id")]
        return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None) if partitioned else contextlib.nullcontext()

    def _persistent_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        from alignment.lora import is_peft_model, plain_name

        module = self.engine.module
        peft = is_peft_model(module)
        for prefix, submodule in (module.get_base_model() if peft else module).named_modules():
            for name, buffer in submodule.named_buffers(recurse=False):
                if name not in submodule._non_persistent_buffers_set:
                    full = f"{prefix}.{name}" if prefix else name
                    full = plain_name(full) if peft else full
                    if full is not None:
                        yield full, buffer

    def trainable_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The trainable tensors (LoRA: the adapters, a reward head) under the model's own names, whole, on CPU
        on rank 0 (None elsewhere). Collective under ZeRO-3."""
        state = {}
        for name, param in self.engine.module.named_parameters():
            if param.requires_grad:
                with self._gathered([param]):
                    if self.rank == 0:
                        state[name] = param.data.detach().to("cpu", copy=True)
        return state if self.rank == 0 else None

    def export_hf(self, directory: Path, write: Callable[[dict[str, torch.Tensor], Path], None]) -> None:
        """The model as a plain HF directory: ``write(state_dict, directory)`` on rank 0 (a LoRA model merged,
        its adapter in PEFT format in ``directory/adapter``). Collective: every rank calls it (ZeRO-3 gathers)."""
        from alignment.lora import ADAPTER_DIR, is_peft_model, save_adapter

        state = self.full_state_dict()
        if self.rank == 0:
            write(state, directory)
        if is_peft_model(self.engine.module):
            adapter = self.trainable_state_dict()
            if self.rank == 0:
                save_adapter(self.engine.module, adapter, directory / ADAPTER_DIR)
        self.barrier()

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights, copied to CPU on rank 0 (None elsewhere). Every rank must call
        this: under ZeRO-3 the gathering is collective."""
        state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in self.full_weights() if tensor is not None}
        return state if self.rank == 0 else None
