"""Loading and saving Hugging Face models and tokenizers from local directories only."""

from __future__ import annotations

from pathlib import Path

import torch

from alignment.errors import AlignError


def check_model_dir(path: str | Path, what: str = "model") -> Path:
    """Fail early, before any cluster starts, if ``path`` is not a loadable local HF directory."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise AlignError(f"{what} path {path} does not exist (align loads local directories only, never a hub)")
    if what == "model" and not (path / "config.json").is_file():
        raise AlignError(f"{what} path {path} has no config.json: not a Hugging Face model directory")
    return path


def load_tokenizer(path: str | Path, chat_template: str | None = None):
    """The tokenizer saved in ``path``, with pad = eos when it has no pad token.

    ``chat_template`` (a built-in name or a Jinja file, see :mod:`alignment.chat_templates`) replaces
    the tokenizer's own template; saving the tokenizer (checkpoints, final model) writes it along.
    """
    from transformers import AutoTokenizer

    from alignment.chat_templates import resolve_chat_template

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if chat_template is not None:
        tokenizer.chat_template = resolve_chat_template(chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32):
    """A causal LM from a local directory, in ``dtype``, with dropout as configured by the model."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def save_hf_model(state_dict: dict[str, torch.Tensor], source_dir: str | Path, tokenizer, out_dir: Path) -> None:
    """Write ``state_dict`` as a plain HF model (config from ``source_dir``) plus tokenizer into ``out_dir``.

    No model is instantiated (under ZeRO-3 that would be partitioned again): config, sharded
    safetensors and tokenizer are written directly, in the layout ``from_pretrained`` reads.
    """
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoConfig, GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    AutoConfig.from_pretrained(str(source_dir)).save_pretrained(str(out_dir))
    if (Path(source_dir) / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(str(source_dir)).save_pretrained(str(out_dir))
    save_torch_state_dict({k: v.contiguous() for k, v in state_dict.items()}, str(out_dir), max_shard_size="5GB")
    tokenizer.save_pretrained(str(out_dir))
