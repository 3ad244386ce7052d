"""`align generate`: batch generation from one or more checkpoints over a prompt file, to JSONL."""

from __future__ import annotations

from pydantic import Field

from alignment.config import CHAT_TEMPLATE_HELP, ClusterConfig, Section
from alignment.jobs import config_job
from rollout.config import RolloutConfig, SamplingConfig


class GenerateConfig(Section):
    """Generate completions for every prompt of a file with each checkpoint; one JSONL row per sample."""

    checkpoints: list[str] = Field(..., min_length=1, description="Local Hugging Face model directories, generated from one after another.")
    prompts: str = Field(..., description="JSONL file of prompts: text, chat messages or token ids under `prompt_field`.")
    prompt_field: str = Field("prompt", description="Column holding each row's prompt.")
    chat_template: str | None = Field(None, description=CHAT_TEMPLATE_HELP)
    max_prompts: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    output: str = Field(..., description="JSONL file to write (one row per prompt, checkpoint and sample).")
    batch_size: int = Field(64, ge=1, description="Prompts per generate call (the progress bar advances per batch).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Backend, engines, context window and memory.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling parameters.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray cluster to run the engines in.")
    progress: bool = Field(True, description="Show a progress bar with tokens/s.")


def register(subparsers) -> None:
    config_job(
        subparsers, "generate", help="Batch generation from checkpoints over a prompt file to JSONL",
        description="Generate completions with vLLM (or transformers) engines in Ray actors.",
        schema="alignment.jobs.generate:GenerateConfig", runner="alignment.jobs.generate:run_generate", resumable=False,
    )
def read_prompts(config: GenerateConfig) -> list:
    import json
    from pathlib import Path

    from alignment.errors import AlignError

    path = Path(config.prompts)
    if not path.is_file():
        raise AlignError(f"prompt file {path} does not exist")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompts.append(json.loads(line)[config.prompt_field])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise AlignError(f"{path}:{number}: not a JSON object with a {config.prompt_field!r} field") from None
        if config.max_prompts and len(prompts) == config.max_prompts:
            break
    return prompts


def check_prompt_templates(prompts: list, checkpoints: list[str], chat_template: str | None, source: str) -> None:
    """Chat prompts need a chat template in every checkpoint (or ``chat_template``): checked before any engine starts."""
    from alignment.chat_templates import require_chat_template

    chats = sum(isinstance(p, list) and bool(p) and all(isinstance(m, dict) for m in p) for p in prompts)
    if chats:
        for checkpoint in checkpoints:
            require_chat_template(checkpoint, chat_template, f"{source} ({chats} of {len(prompts)} prompts)")


def run_generate(config: GenerateConfig) -> dict[str, float]:
    """`align generate`: the libraries log next to the output file; then :func:`generate_to_file`."""
    from pathlib import Path

    from alignment.logs import open_job_log

    open_job_log(Path(config.output).expanduser().parent)
    return generate_to_file(config)


def generate_to_file(config: GenerateConfig) -> dict[str, float]:
    """Run every checkpoint over the prompts; returns tokens/s per checkpoint."""
    import json
    import logging
    import time
    from pathlib import Path

    from tqdm import tqdm

    from alignment.cluster.runtime import start_ray
    from rollout.engine import RolloutEngines

    log = logging.getLogger("align.generate")
    prompts = read_prompts(config)
    check_prompt_templates(prompts, config.checkpoints, config.chat_template, config.prompts)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    start_ray(config.cluster, cpus=config.rollout.num_engines * config.rollout.cpus_per_engine)
    speeds = {}
    engines = None
    try:
        with output.open("w") as sink:
            for checkpoint in config.checkpoints:
                if engines is not None and engines.can_load(checkpoint):
                    previous, seconds = engines.model, engines.load_checkpoint(checkpoint)
                    log.info("generate: %s: same model files as %s; weights swapped into the running engine(s) "
                             "in %.1f s", checkpoint, previous, seconds)
                else:
                    if engines is not None:
                        engines.shutdown()
                    engines = RolloutEngines(checkpoint, config.rollout, chat_template=config.chat_template)
                tokens, started = 0, time.perf_counter()
                bar = tqdm(total=len(prompts), desc=Path(checkpoint).name, unit="prompt", disable=not config.progress)
                for offset in range(0, len(prompts), config.batch_size):
                    batch = prompts[offset : offset + config.batch_size]
                    for g in engines.generate(batch, config.sampling):
                        index = offset + g.prompt_index
                        sink.write(json.dumps({
                            "checkpoint": checkpoint, "prompt_index": index, "sample_index": g.sample_index,
                            "prompt": prompts[index], "completion": g.text, "token_ids": g.token_ids,
                            "logprobs": g.logprobs, "finish_reason": g.finish_reason,
                        }) + "\n")
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
    log.info("generate: wrote %s", output)
    return speeds
