"""LoRA adapters through PEFT: add them, check the settings before any work, run the base without them,
and turn a trained adapter into plain Hugging Face weights.

With ``lora:`` set, a trainer wraps its model in a ``peft.PeftModel`` (only the adapters, and a reward
model's score head, train); DPO's reference is the same model with its adapters disabled; checkpoints
keep DeepSpeed's state of the trainable tensors only, and ``hf/`` holds the merged weights
(W + (alpha / rank) B A, computed by PEFT's ``get_delta_weight``) with the adapter in PEFT format in
``hf/adapter/``. See docs/lora.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from alignment.config import LoRAConfig
from alignment.errors import AlignError

ADAPTER_DIR = "adapter"  # inside hf/ (and so final/): the adapter in PEFT format


def task_type(model: torch.nn.Module) -> str:
    """PEFT's task of ``model``: a reward model (``*ForSequenceClassification``) or a PPO critic
    (``*ForTokenClassification``) has a ``score`` head that trains whole beside the adapters."""
    name = type(model).__name__
    return "SEQ_CLS" if name.endswith("ForSequenceClassification") else \
        "TOKEN_CLS" if name.endswith("ForTokenClassification") else "CAUSAL_LM"


def peft_config(lora: LoRAConfig, task: str = "CAUSAL_LM"):
    """The ``peft.LoraConfig`` of our settings (a ``score`` head, if any, saved and trained whole)."""
    from peft import LoraConfig

    head = task != "CAUSAL_LM"
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, bias="none", task_type=task,
                      modules_to_save=["score"] if head else None)


def add_adapters(model: torch.nn.Module, lora: LoRAConfig, seed: int) -> torch.nn.Module:
    """``model`` with LoRA adapters (a ``PeftModel``): base weights frozen, B = 0 so it starts as the base.

    The adapters' random A matrices come from ``seed`` alone (the global RNG is left as it was), so
    every rank, and a single-process run with the same seed, starts from the same adapters."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, peft_config(lora, task_type(model)))


def trainable_model(model: torch.nn.Module, lora: LoRAConfig | None, seed: int,
                    gradient_checkpointing: bool) -> torch.nn.Module:
    """``model`` ready for a trainer's engine: LoRA adapters when ``lora`` is set, activation checkpointing
    when asked (with a frozen embedding, its output then requires grad so checkpointed blocks get gradients)."""
    if lora is not None:
        model = add_adapters(model, lora, seed)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if lora is not None:
            model.enable_input_require_grads()
    return model


def check_lora(lora: LoRAConfig, model_dir: str | Path) -> None:
    """Refuse settings that cannot run, before any cluster starts: QLoRA without CUDA and bitsandbytes,
    target modules the model does not have (matched by PEFT on an empty, meta-device copy)."""
    if lora.load_in_4bit:
        if not torch.cuda.is_available():
            raise AlignError("lora.load_in_4bit: QLoRA (a 4-bit base) needs a CUDA GPU and bitsandbytes; this "
                             "machine has no CUDA device. Remove lora.load_in_4bit to train plain LoRA adapters here.")
        raise AlignError("lora.load_in_4bit: QLoRA is not wired into align's trainers yet (issue 18); "
                         "remove lora.load_in_4bit to train plain LoRA adapters.")
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)))
    names = sorted({name.rsplit(".", 1)[-1] for name, module in skeleton.named_modules()
                    if isinstance(module, torch.nn.Linear) and module is not skeleton.get_output_embeddings()})
    where = f"The linear layers of {type(skeleton).__name__} are: {', '.join(names)} (or use all-linear)"
    if isinstance(lora.target_modules, list):  # PEFT's rule: a name matches a module named so, or ending in ".name"
        modules = [name for name, _ in skeleton.named_modules()]
        missing = [target for target in lora.target_modules
                   if not any(name == target or name.endswith("." + target) for name in modules)]
        if missing:
            raise AlignError(f"lora.target_modules: {', '.join(missing)} names no module of the model. {where}")
    try:
        get_peft_model(skeleton, peft_config(lora))
    except (ValueError, TypeError) as error:
        raise AlignError(f"lora.target_modules: {error} {where}") from None


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The base model, exactly: adapters off (a reward head's original copy in use) and eval mode, as a
    separate frozen reference would run. ``model`` is a ``PeftModel`` or a DeepSpeed engine around one."""
    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    try:
        with module.disable_adapter():
            yield
    finally:
        module.train(was_training)


def is_peft_model(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def plain_name(name: str) -> str | None:
    """The Hugging Face name of a ``PeftModel.get_base_model()`` tensor once merged, or None when it merges
    away (adapter matrices, a trained module's original copy)."""
    if ".lora_" in name or ".original_module." in name:
        return None
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


def merged_weights(model: torch.nn.Module, gathered: Callable[[list], contextlib.AbstractContextManager],
                   keep: bool) -> Iterator[tuple[str, torch.Tensor | None]]:
    """Every parameter of the ``PeftModel`` ``model`` under its plain HF name, with each adapted weight merged
    (W + PEFT's ``get_delta_weight``). ``gathered(params)`` makes the given parameters whole (ZeRO-3);
    the tensor is yielded where ``keep`` (None elsewhere) and is valid until the next item."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapter = model.active_adapter
    for name, param in base.named_parameters():
        plain = plain_name(name)
        if plain is None:
            continue
        owner = base.get_submodule(name.rsplit(".base_layer.", 1)[0]) if ".base_layer." in name else None
        if isinstance(owner, LoraLayer) and name.endswith(".base_layer.weight") and adapter in owner.lora_A:
            parts = [param, owner.lora_A[adapter].weight, owner.lora_B[adapter].weight]
            with gathered(parts):
                yield plain, (param.data + owner.get_delta_weight(adapter)) if keep else None
        else:
            with gathered([param]):
                yield plain, param.data if keep else None


def adapter_files(model: torch.nn.Module, gathered: Callable[[list], contextlib.AbstractContextManager],
                  keep: bool) -> dict[str, bytes] | None:
    """The ``PeftModel`` ``model``'s active adapter as the files ``save_pretrained`` writes (name -> bytes),
    for a vLLM engine's LoRA support; where ``keep`` (None elsewhere). ``gathered`` as in :func:`merged_weights`."""
    import tempfile

    from peft import get_peft_model_state_dict

    with gathered([param for name, param in model.named_parameters() if ".lora_" in name]):
        if not keep:
            return None
        state = {name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(model).items()}
    with tempfile.TemporaryDirectory() as directory:
        save_adapter(model, state, Path(directory))
        return {path.name: path.read_bytes() for path in Path(directory).iterdir() if path.is_file()}


def save_adapter(model: torch.nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """The adapter (and a reward model's trained score head) in PEFT format: ``PeftModel.from_pretrained(base,
    directory)`` loads it. ``state`` holds the trainable tensors under the ``PeftModel``'s own names."""
    model.save_pretrained(str(directory), state_dict=state, save_embedding_layers=False)


def plain_model_dir(path: str | Path) -> str:
    """``path`` itself, or, for a PEFT adapter directory (``adapter_config.json``, no ``config.json``), a plain
    HF model of base + adapter merged, made once and cached under ``$ALIGN_HOME/merged`` (keyed by the
    adapter's files and the base's path). The tokenizer is the adapter directory's, its parent's (align's
    ``final/adapter``) or the base's. A causal-LM adapter only: a reward model's ``final/`` is merged already."""
    import hashlib
    import json
    import shutil

    from alignment.config import align_home
    from alignment.models import check_model_dir, load_causal_lm, load_tokenizer

    directory = Path(path).expanduser()
    if not (directory / "adapter_config.json").is_file() or (directory / "config.json").is_file():
        return str(path)
    settings = json.loads((directory / "adapter_config.json").read_text())
    if settings.get("task_type") not in (None, "CAUSAL_LM"):
        raise AlignError(f"{directory}: a {settings['task_type']} adapter; only causal-LM adapters load here "
                         "(use the job's final/ directory, where the adapter is merged)")
    base = check_model_dir(settings.get("base_model_name_or_path") or "", f"base model of the adapter {directory}")
    digest = hashlib.sha256(str(base.resolve()).encode())
    for file in sorted(directory.glob("adapter_*")):
        digest.update(file.read_bytes())
    merged = align_home() / "merged" / f"{directory.parent.name}-{directory.name}-{digest.hexdigest()[:12]}"
    if (merged / "config.json").is_file():
        return str(merged)
    from peft import PeftModel

    staging = merged.with_name(merged.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    PeftModel.from_pretrained(load_causal_lm(base), str(directory)).merge_and_unload().save_pretrained(str(staging))
    tokenizer_dir = next((d for d in (directory, directory.parent) if (d / "tokenizer_config.json").is_file()), base)
    load_tokenizer(tokenizer_dir).save_pretrained(str(staging))
    staging.rename(merged)
    return str(merged)
