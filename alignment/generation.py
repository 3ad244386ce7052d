"""Generation from checkpoints over a prompt file: samples in memory (``generate``) or as JSONL.

``align generate`` writes the records to a file; ``align compare`` and ``align label generate`` take
them in memory, with the prompt token ids the engines generated from (nothing is tokenised twice).
One engine set serves every checkpoint whose model files match (the weights are swapped in).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from alignment.config import CHAT_TEMPLATE_HELP, ClusterConfig, Section
from alignment.data import read_prompts
from rollout.config import RolloutConfig, SamplingConfig

log = logging.getLogger("align.generate")


class GenerateConfig(Section):
    """Generate completions for every prompt of a file with each checkpoint; one JSONL row per sample."""

    checkpoints: list[str] = Field(..., min_length=1, description="Local Hugging Face model directories, generated from one after another.")
    prompts: str = Field(..., description="JSONL file of prompts: text, chat messages or token ids under `prompt_field`.")
    prompt_field: str = Field("prompt", description="Column holding each row's prompt.")
    chat_template: str | None = Field(None, description=CHAT_TEMPLATE_HELP)
    max_prompts: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    output: str | None = Field(None, description="JSONL file to write (one row per prompt, checkpoint and sample); `align generate` needs it.")
    batch_size: int = Field(64, ge=1, description="Prompts per generate call (the progress bar advances per batch).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Backend, engines, context window and memory.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling parameters.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray cluster to run the engines in.")
    progress: bool = Field(True, description="Show a progress bar with tokens/s.")

    def read_prompts(self) -> list:
        return read_prompts(self.prompts, self.prompt_field, self.max_prompts)


def check_prompt_templates(prompts: list, checkpoints: list[str], chat_template: str | None, source: str) -> None:
    """Chat prompts need a chat template in every checkpoint (or ``chat_template``): checked before any engine starts."""
    from alignment.chat_templates import require_chat_template
    from alignment.data import is_messages

    chats = sum(is_messages(p) for p in prompts)
    if chats:
        for checkpoint in checkpoints:
            require_chat_template(checkpoint, chat_template, f"{source} ({chats} of {len(prompts)} prompts)")


def generate(config: GenerateConfig) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every checkpoint's samples for every prompt, and tokens/s per checkpoint.

    A record: ``checkpoint``, ``prompt_index``, ``sample_index``, ``prompt`` (as given), ``prompt_ids`` (what
    the engines generated from), ``completion``, ``token_ids``, ``logprobs``, ``finish_reason``.
    """
    from tqdm import tqdm

    from alignment.cluster.runtime import start_ray
    from alignment.lora import plain_model_dir
    from rollout.engine import RolloutEngines, encode_prompts

    prompts = config.read_prompts()
    directories = {checkpoint: plain_model_dir(checkpoint) for checkpoint in config.checkpoints}  # adapters merged
    check_prompt_templates(prompts, list(directories.values()), config.chat_template, config.prompts)
    start_ray(config.cluster, cpus=config.rollout.num_engines * config.rollout.cpus_per_engine)
    records: list[dict[str, Any]] = []
    speeds: dict[str, float] = {}
    engines = None
    try:
        for checkpoint in config.checkpoints:
            directory = directories[checkpoint]
            if engines is not None and engines.can_load(directory):
                previous, seconds = engines.model, engines.load_checkpoint(directory)
                log.info("generate: %s: same model files as %s; weights swapped into the running engine(s) "
                         "in %.1f s", checkpoint, previous, seconds)
            else:
                if engines is not None:
                    engines.shutdown()
                engines = RolloutEngines(directory, config.rollout, chat_template=config.chat_template)
            prompt_ids = encode_prompts(engines.tokenizer, prompts, config.rollout.max_model_len)
            tokens, started = 0, time.perf_counter()
            bar = tqdm(total=len(prompts), desc=Path(checkpoint).name, unit="prompt", disable=not config.progress)
            for offset in range(0, len(prompts), config.batch_size):
                batch = prompt_ids[offset : offset + config.batch_size]
                for g in engines.generate(batch, config.sampling):
                    index = offset + g.prompt_index
                    records.append({
                        "checkpoint": checkpoint, "prompt_index": index, "sample_index": g.sample_index,
                        "prompt": prompts[index], "prompt_ids": prompt_ids[index], "completion": g.text,
                        "token_ids": g.token_ids, "logprobs": g.logprobs, "finish_reason": g.finish_reason,
                    })
                    tokens += len(g.token_ids)
                bar.update(len(batch))
                bar.set_postfix(tokens_per_s=f"{tokens / (time.perf_counter() - started):.0f}")
            bar.close()
            speeds[checkpoint] = tokens / (time.perf_counter() - started)
            log.info("generate: %s: %d prompts, %d new tokens, %.0f tokens/s (%s backend)",
                     checkpoint, len(prompts), tokens, speeds[checkpoint], config.rollout.backend)
    finally:
        if engines is not None:
            engines.shutdown()
    return records, speeds


def generate_to_file(config: GenerateConfig) -> dict[str, float]:
    """:func:`generate`, the records written to ``config.output`` as JSONL; returns tokens/s per checkpoint."""
    from alignment.errors import AlignError

    if not config.output:
        raise AlignError("output: set the JSONL file to write the samples to")
    records, speeds = generate(config)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as sink:
        for record in records:
            sink.write(json.dumps({k: v for k, v in record.items() if k != "prompt_ids"}) + "\n")
    log.info("generate: wrote %s", output)
    return speeds
