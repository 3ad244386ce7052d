"""`align tiny build`: corpus, tokenizer and a small Llama trained by our own SFT trainer.

Everything is made here from a seed; nothing is downloaded. The result is cached: a second
build with the same settings reuses it. The directory appears only when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from alignment.config import ClusterConfig, Section, align_home


class TinyBuildConfig(Section):
    """How the tiny task is made (defaults: a ~2M-parameter model in a few minutes on 2 cores)."""

    out: str | None = Field(None, description="Output directory; None is $ALIGN_HOME/tiny.")
    seed: int = Field(0, description="Seed for the corpus, the tokenizer order, initialisation and training.")
    sft_rows: int = Field(8000, ge=64, description="Generated SFT conversations for training.")
    eval_rows: int = Field(256, ge=8, description="Generated SFT conversations held out (unseen titles).")
    vocab_size: int = Field(1024, ge=300, description="BPE vocabulary size.")
    hidden_size: int = Field(192, ge=16, description="Model width.")
    layers: int = Field(4, ge=1, description="Transformer blocks.")
    heads: int = Field(3, ge=1, description="Attention heads (head size = hidden_size / heads).")
    intermediate_size: int = Field(512, ge=16, description="MLP width.")
    max_positions: int = Field(256, ge=64, description="Context length of the model.")
    steps: int = Field(500, ge=1, description="SFT optimizer steps.")
    batch_size: int = Field(32, ge=2, description="SFT global batch size.")
    lr: float = Field(2e-3, gt=0, description="SFT peak learning rate (cosine, 5% warm-up).")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray workers for the SFT run.")

    def output_path(self) -> Path:
        return Path(self.out).expanduser() if self.out else align_home() / "tiny"

    def fingerprint(self) -> str:
        """Changes with any setting or with the code that generates the task."""
        settings = json.dumps(self.model_dump(mode="json", exclude={"out", "cluster"}), sort_keys=True)
        digest = hashlib.sha256(settings.encode())
        for source in ("corpus.py", "tokenizer.py", "build.py", *self.sources):
            digest.update((Path(__file__).parent / source).read_bytes())
        return digest.hexdigest()[:16]

    sources: ClassVar[tuple[str, ...]] = ()
    split_digits: ClassVar[bool] = False
    extra_special_tokens: ClassVar[tuple[str, ...]] = ()


class TinyReasoningConfig(TinyBuildConfig):
    """The tiny reasoning task: multi-step arithmetic with exact answers (defaults: about 5 minutes on 2 cores).

    The base model learns from worked solutions of ``sft_steps``-operation problems; RL prompts and
    held-out problems have ``rl_steps`` / ``eval_steps`` operations; no held-out question occurs in
    any training split.
    """

    out: str | None = Field(None, description="Output directory; None is $ALIGN_HOME/tiny-reasoning.")
    sft_rows: int = Field(8000, ge=64, description="Worked solutions for SFT.")
    eval_rows: int = Field(256, ge=8, description="Held-out worked solutions (SFT eval loss).")
    rl_rows: int = Field(2000, ge=8, description="RL training prompts (with answers).")
    eval_prompts: int = Field(200, ge=8, description="Held-out RL prompts (with answers), none seen in any training split.")
    sft_steps: list[int] = Field([1, 2, 3], min_length=1, description="Operations per SFT problem (drawn uniformly).")
    rl_steps: list[int] = Field([2, 3], min_length=1, description="Operations per RL training prompt.")
    eval_steps: list[int] = Field([2, 3], min_length=1, description="Operations per held-out prompt.")
    operand_max: int = Field(25, ge=2, description="Operands are drawn from 1..operand_max.")
    value_max: int = Field(60, ge=2, description="Every running value stays in 0..value_max.")
    vocab_size: int = Field(384, ge=300, description="BPE vocabulary size (digits are single tokens).")
    max_positions: int = Field(128, ge=64, description="Context length of the model.")
    steps: int = Field(800, ge=1, description="SFT optimizer steps (few enough that the base is often wrong: ~28% held-out).")

    sources: ClassVar[tuple[str, ...]] = ("arithmetic.py",)
    split_digits: ClassVar[bool] = True

    def output_path(self) -> Path:
        return Path(self.out).expanduser() if self.out else align_home() / "tiny-reasoning"


class TinyToolsConfig(TinyBuildConfig):
    """The tiny tool-use task: products too hard to work out, easy with a calculator (defaults: about 4 minutes on 2 cores).

    A share ``tool_fraction`` of the SFT conversations calls the calculator and copies its result into
    the answer; the others answer straight away (and the model, which cannot multiply, is mostly wrong
    there), so the base model calls the tool only sometimes. No held-out expression occurs in any training split.
    """

    out: str | None = Field(None, description="Output directory; None is $ALIGN_HOME/tiny-tools.")
    sft_rows: int = Field(8000, ge=64, description="SFT conversations (with the tool or answering directly).")
    eval_rows: int = Field(256, ge=8, description="Held-out SFT conversations (SFT eval loss).")
    rl_rows: int = Field(2000, ge=8, description="RL training prompts (with answers).")
    eval_prompts: int = Field(200, ge=8, description="Held-out RL prompts (with answers), none seen in any training split.")
    tool_fraction: float = Field(0.45, ge=0, le=1, description="Share of SFT conversations that call the calculator.")
    left_max: int = Field(999, ge=10, description="The first factor is drawn from 10..left_max.")
    right_max: int = Field(99, ge=10, description="The second factor is drawn from 10..right_max.")
    term_max: int = Field(99, ge=0, le=99, description="An added or subtracted term is drawn from 1..term_max (0: none).")
    term_fraction: float = Field(0.5, ge=0, le=1, description="Share of problems with that term.")
    vocab_size: int = Field(384, ge=300, description="BPE vocabulary size (digits are single tokens).")
    max_positions: int = Field(128, ge=64, description="Context length of the model.")
    hidden_size: int = Field(128, ge=16, description="Model width.")
    heads: int = Field(4, ge=1, description="Attention heads (4 heads learn to copy the tool's result; 2 do not).")
    intermediate_size: int = Field(384, ge=16, description="MLP width.")
    steps: int = Field(1300, ge=1, description="SFT optimizer steps (copying the tool's result into the answer emerges late).")

    sources: ClassVar[tuple[str, ...]] = ("arithmetic.py", "tool_use.py")
    split_digits: ClassVar[bool] = True
    extra_special_tokens: ClassVar[tuple[str, ...]] = ("<|tool|>",)

    def output_path(self) -> Path:
        return Path(self.out).expanduser() if self.out else align_home() / "tiny-tools"


def build_tiny(config: TinyBuildConfig, force: bool = False) -> Path:
    """Build (or reuse) the tiny task; returns its directory. See docs/tiny_task.md for the layout."""
    out = config.output_path()
    manifest = out / "manifest.json"
    if not force and manifest.is_file() and json.loads(manifest.read_text()).get("fingerprint") == config.fingerprint():
        print(f"tiny task already built at {out} (fingerprint {config.fingerprint()}); reusing it")
        return out
    from alignment.checkpoint import check_output_dir

    check_output_dir(out.parent)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    _write_data(config, staging / "data")
    tokenizer = _train_tokenizer(config, staging)
    _init_model(config, tokenizer, staging / "init")
    timings["data_tokenizer_init_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    _train_base(config, staging)
    timings["sft_s"] = round(time.perf_counter() - t, 2)

    (staging / "manifest.json").write_text(json.dumps({
        "fingerprint": config.fingerprint(),
        "config": config.model_dump(mode="json", exclude={"out"}),
        "timings": {**timings, "total_s": round(time.perf_counter() - started, 2)},
        "base_model": "base", "tokenizer": "tokenizer",
    }, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"tiny task built at {out} in {time.perf_counter() - started:.0f} s: base model {out / 'base'}")
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _write_data(config: TinyBuildConfig, data_dir: Path) -> None:
    if isinstance(config, TinyReasoningConfig):
        _write_reasoning_data(config, data_dir)
        return
    if isinstance(config, TinyToolsConfig):
        _write_tools_data(config, data_dir)
        return
    from alignment.tiny.corpus import make_prompt_rows, make_sft_rows, split_titles

    train_titles, eval_titles = split_titles(config.seed)
    _write_jsonl(data_dir / "sft_train.jsonl", make_sft_rows(config.seed, train_titles, config.sft_rows))
    _write_jsonl(data_dir / "sft_eval.jsonl", make_sft_rows(config.seed + 1, eval_titles, config.eval_rows))
    _write_jsonl(data_dir / "prompts_train.jsonl", make_prompt_rows(config.seed + 2, train_titles))
    _write_jsonl(data_dir / "prompts_eval.jsonl", make_prompt_rows(config.seed + 3, eval_titles))


def _write_reasoning_data(config: TinyReasoningConfig, data_dir: Path) -> None:
    """SFT solutions, RL prompts and held-out prompts; held-out expressions occur in no other split."""
    from alignment.tiny.arithmetic import make_rows, prompt_row, sft_row

    ranges = {"operand_max": config.operand_max, "value_max": config.value_max}
    held_out = make_rows(config.seed + 3, config.eval_prompts, config.eval_steps, **ranges)
    unseen = {row["expression"] for row in held_out}
    sft_eval = make_rows(config.seed + 1, config.eval_rows, config.sft_steps, unseen, **ranges)
    sft = make_rows(config.seed, config.sft_rows, config.sft_steps, unseen, **ranges)
    rl = make_rows(config.seed + 2, config.rl_rows, config.rl_steps, unseen, **ranges)
    _write_jsonl(data_dir / "sft_train.jsonl", [sft_row(r) for r in sft])
    _write_jsonl(data_dir / "sft_eval.jsonl", [sft_row(r) for r in sft_eval])
    _write_jsonl(data_dir / "prompts_train.jsonl", [prompt_row(r) for r in rl])
    _write_jsonl(data_dir / "prompts_eval.jsonl", [prompt_row(r) for r in held_out])


def _write_tools_data(config: TinyToolsConfig, data_dir: Path) -> None:
    """SFT conversations (a share with the tool), RL prompts and held-out prompts; held-out expressions
    occur in no other split."""
    from alignment.tiny.tool_use import make_rows, prompt_row, sft_rows

    ranges = {"left_max": config.left_max, "right_max": config.right_max, "term_max": config.term_max,
              "term_fraction": config.term_fraction}
    held_out = make_rows(config.seed + 3, config.eval_prompts, **ranges)
    unseen = {row["expression"] for row in held_out}
    sft_eval = make_rows(config.seed + 1, config.eval_rows, unseen, **ranges)
    sft = make_rows(config.seed, config.sft_rows, unseen, **ranges)
    rl = make_rows(config.seed + 2, config.rl_rows, unseen, **ranges)
    _write_jsonl(data_dir / "sft_train.jsonl", sft_rows(sft, config.tool_fraction, config.seed))
    _write_jsonl(data_dir / "sft_eval.jsonl", sft_rows(sft_eval, config.tool_fraction, config.seed + 1))
    _write_jsonl(data_dir / "prompts_train.jsonl", [prompt_row(r) for r in rl])
    _write_jsonl(data_dir / "prompts_eval.jsonl", [prompt_row(r) for r in held_out])


def _train_tokenizer(config: TinyBuildConfig, staging: Path):
    from alignment.tiny.tokenizer import train_tokenizer

    texts = []
    for line in (staging / "data" / "sft_train.jsonl").read_text().splitlines():
        texts.extend(message["content"] for message in json.loads(line)["messages"])
    return train_tokenizer(texts, config.vocab_size, staging / "tokenizer", split_digits=config.split_digits,
                           extra_special_tokens=config.extra_special_tokens)


def _init_model(config: TinyBuildConfig, tokenizer, out_dir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _train_base(config: TinyBuildConfig, staging: Path) -> None:
    from alignment.config import SFTConfig
    from alignment.sft import run_sft

    sft = SFTConfig.model_validate({
        "model": str(staging / "init"),
        "output_dir": str(staging / "sft_run"),
        "data": {"train": str(staging / "data" / "sft_train.jsonl"), "eval": str(staging / "data" / "sft_eval.jsonl"),
                 "max_length": config.max_positions},
        "train": {"micro_batch_size": config.batch_size // config.cluster.num_workers,
                  "global_batch_size": config.batch_size, "max_steps": config.steps,
                  "eval_every": max(1, config.steps // 5), "save_every": config.steps, "keep_checkpoints": 1,
                  "seed": config.seed},
        "optim": {"lr": config.lr, "scheduler": "cosine", "warmup_ratio": 0.05, "min_lr_ratio": 0.1,
                  "weight_decay": 0.01},
        "strategy": {"zero_stage": 0},
        "cluster": config.cluster.model_dump(),
    })
    final = run_sft(sft)
    shutil.copytree(final, staging / "base")
    shutil.rmtree(staging / "sft_run" / "checkpoints", ignore_errors=True)
