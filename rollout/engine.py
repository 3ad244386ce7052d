"""The rollout interface: ``RolloutEngines.generate(prompts, sampling)`` and ``update_weights(state_dict)``.

The driver holds a :class:`RolloutEngines`; it starts ``num_engines`` Ray actors of one backend
(:class:`rollout.vllm_engine.VLLMEngine` by default, :class:`rollout.hf_engine.HFEngine` on request),
tokenizes and checks prompts itself (so bad input fails here, before any engine), splits them into
contiguous chunks, one per engine, and returns one :class:`Generation` per sample in prompt order::

    engines = RolloutEngines("base/", RolloutConfig(num_engines=2))
    samples = engines.generate(prompts, {"n": 4, "temperature": 0.7, "max_tokens": 64})
    engines.update_weights(strategy.full_state_dict())   # no restart; prefix cache reset

Every call to an engine has a bounded timeout; an engine that dies or stalls raises AlignError naming it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.errors import AlignError
from alignment.logs import actor_log_file
from rollout.config import RolloutConfig, SamplingConfig, sampling_config

log = logging.getLogger(__name__)

# A prompt is text (TRL's standard format: tokenised as is, with the tokenizer's special tokens, no
# template), chat messages [{"role", "content"}, ...] (the chat template is applied), or token ids.
Prompt = str | list[dict[str, str]] | list[int]


@dataclass
class Generation:
    """One sample: which prompt it answers, its tokens, text, per-token log-probabilities and why it ended."""

    prompt_index: int
    sample_index: int
    token_ids: list[int]
    text: str
    logprobs: list[float] | None
    finish_reason: str


def encode_prompt(tokenizer: Any, prompt: Prompt, tools: list[dict] | None = None) -> list[int]:
    """Token ids of one prompt: text with the tokenizer's special tokens, messages through the chat
    template (with the generation prompt, and ``tools`` advertised where the template takes them),
    token ids as they are; ValueError for anything else."""
    from alignment.data import render_chat

    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if isinstance(prompt, list) and all(isinstance(token, int) for token in prompt):
        return list(prompt)
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"it is a chat, but the tokenizer of {tokenizer.name_or_path} has no chat template: "
                             "set chat_template (e.g. chatml or a Jinja file), or give text prompts")
        return render_chat(tokenizer, prompt, add_generation_prompt=True, tools=tools)
    raise ValueError(f"it is neither text, chat messages nor token ids: {str(prompt)[:80]!r}")


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt], max_model_len: int, room: int | None = None,
                   where: Callable[[int], str] = "prompt {}".format, tools: list[dict] | None = None) -> list[list[int]]:
    """Token ids of every prompt; AlignError for an empty list, an empty prompt or one that leaves no
    room to generate (fewer than ``room`` tokens of the context, when given: ``sampling.max_tokens``);
    ``where(i)`` names prompt i in errors."""
    if not prompts:
        raise AlignError("no prompts to generate from (the prompt list is empty)")
    encoded = []
    for index, prompt in enumerate(prompts):
        try:
            ids = encode_prompt(tokenizer, prompt, tools)
        except ValueError as error:
            raise AlignError(f"{where(index)}: {error}") from None
        if not ids:
            raise AlignError(f"{where(index)} is empty")
        if len(ids) + (room or 1) > max_model_len:
            raise AlignError(
                f"{where(index)} has {len(ids)} tokens; " + (
                    f"with sampling.max_tokens={room} it exceeds rollout.max_model_len={max_model_len}" if room else
                    f"the context window (rollout.max_model_len) is {max_model_len}, leaving no room to generate")
                + ": shorten the prompt or raise max_model_len")
        encoded.append(ids)
    return encoded


def split_contiguous(count: int, parts: int) -> list[range]:
    """``count`` items in ``parts`` contiguous ranges whose sizes differ by at most one."""
    size, extra = divmod(count, parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + size + (part < extra))
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


# Files that must agree for two checkpoints to share running engines. JSON files are compared as
# data, without the keys that only record where from and by what they were written.
SHARED_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "chat_template.jinja")
BOOKKEEPING_KEYS = {"_name_or_path", "name_or_path", "transformers_version", "is_local", "local_files_only",
                    "_commit_hash"}


def same_model_files(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Same architecture, shapes, dtype, tokenizer and generation defaults: only the weights may differ."""
    import json

    def content(path: Path) -> object:
        if not path.exists():
            return None
        data = path.read_bytes()
        if path.suffix != ".json":
            return data
        try:
            parsed = json.loads(data)
        except ValueError:
            return data
        return {k: v for k, v in parsed.items() if k not in BOOKKEEPING_KEYS} if isinstance(parsed, dict) else parsed

    a, b = Path(a), Path(b)
    return (a / "config.json").is_file() and all(content(a / n) == content(b / n) for n in SHARED_MODEL_FILES)


def engine_class(backend: str) -> type:
    if backend == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine
    from rollout.hf_engine import HFEngine

    return HFEngine


class RolloutEngines:
    """Driver-side handle on ``config.num_engines`` engine actors of one backend."""

    def __init__(self, model: str, config: RolloutConfig, tokenizer: str | None = None, wait: bool = True,
                 chat_template: str | None = None, lora_rank: int | None = None) -> None:
        """Start the engine actors; with ``wait=False`` return at once and call :meth:`wait_ready` later
        (the PPO job starts its model groups meanwhile). Chat prompts are rendered here, by the tokenizer's
        template or ``chat_template`` (a built-in name or a Jinja file); engines receive token ids.
        ``lora_rank``: vLLM engines serve LoRA adapters up to this rank (:meth:`load_adapter`)."""
        import ray

        from alignment.models import load_tokenizer

        if not os.path.isdir(model):
            raise AlignError(f"model directory {model} does not exist")
        if not ray.is_initialized():
            raise AlignError("RolloutEngines needs a running Ray runtime: call alignment.cluster.runtime.start_ray first")
        self.config = config
        self.model = model
        self.tokenizer = load_tokenizer(tokenizer or model, chat_template)
        remote_cls = ray.remote(engine_class(config.backend))
        self.names = [f"rollout-{config.backend}-{i}-{os.getpid()}-{id(self) % 10000}" for i in range(config.num_engines)]
        self.started = time.perf_counter()
        self.engines = [
            remote_cls.options(
                name=name, num_cpus=config.cpus_per_engine, num_gpus=config.gpus_per_engine, max_restarts=0
            ).remote(model, tokenizer or model, config.model_dump(), index, actor_log_file(),
                     **({} if lora_rank is None else {"lora_rank": lora_rank}))
            for index, name in enumerate(self.names)
        ]
        self.info: list[dict[str, Any]] = []
        self.last_stats: dict[str, float] = {}
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until every engine answers (``rollout.start_timeout_s`` from the start); errors name the engine."""
        import ray

        if self.info:
            return
        remaining = self.config.start_timeout_s - (time.perf_counter() - self.started)
        try:
            self.info = self._get([engine.info.remote() for engine in self.engines], max(remaining, 1.0), "start")
        except AlignError as error:
            self.shutdown()
            raise AlignError(
                f"{error} (each engine needs {self.config.cpus_per_engine} CPU and {self.config.gpus_per_engine} GPU; "
                f"Ray has {ray.available_resources()} free: lower rollout.num_engines or rollout.cpus_per_engine)"
            ) from None
        log.info(
            "rollout: %d %s engine(s) ready in %.1f s (backend=%s, chosen by rollout.backend; cores %s)",
            len(self.engines), self.config.backend, time.perf_counter() - self.started, self.config.backend,
            [info.get("cores") for info in self.info],
        )

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig | dict | None = None) -> list[Generation]:
        """Samples for every prompt, in prompt order then sample order (``n`` per prompt)."""
        self.wait_ready()
        sampling = sampling_config(sampling)
        token_ids = encode_prompts(self.tokenizer, prompts, self.config.max_model_len)
        chunks = [c for c in split_contiguous(len(token_ids), len(self.engines))]
        started = time.perf_counter()
        refs, names = [], []
        for engine, name, chunk in zip(self.engines, self.names, chunks):
            if len(chunk):
                refs.append(engine.generate.remote([token_ids[i] for i in chunk], sampling.model_dump(), chunk.start))
                names.append(name)
        results = self._get(refs, self.config.call_timeout_s, "generate", self._labels(names))
        generations = []
        offsets = [c.start for c in chunks if len(c)]
        for offset, per_prompt in zip(offsets, results):
            for local_index, samples in enumerate(per_prompt):
                for sample_index, sample in enumerate(samples):
                    generations.append(Generation(prompt_index=offset + local_index, sample_index=sample_index, **sample))
        seconds = time.perf_counter() - started
        new_tokens = sum(len(g.token_ids) for g in generations)
        self.last_stats = {"seconds": seconds, "new_tokens": new_tokens, "tokens_per_s": new_tokens / max(seconds, 1e-9)}
        return generations

    def update_weights(self, weights: dict[str, Any] | Any, reset_prefix_cache: bool = True) -> float:
        """Load full weights into every running engine; returns seconds.

        ``weights`` is a state dict (put once into Ray's object store) or an ObjectRef to one that
        a trainer rank already put there (no copy through the driver).
        """
        sizes = {}
        if isinstance(weights, dict):
            sizes = {"params": sum(t.numel() for t in weights.values()),
                     "mib": sum(t.numel() * t.element_size() for t in weights.values()) / 2**20}
        return self._send("update_weights", weights, sizes, reset_prefix_cache)

    def load_adapter(self, files: dict[str, bytes]) -> float:
        """Serve a PEFT adapter (its files' contents by name) on every engine from now on; returns seconds."""
        return self._send("load_adapter", files, {"mib": sum(len(data) for data in files.values()) / 2**20})

    def _send(self, method: str, payload: Any, sizes: dict[str, float], *args: Any) -> float:
        """Put ``payload`` once into Ray's object store (unless it is a reference already), call ``method``
        with it on every engine, and record the timings and ``sizes`` in ``last_sync``; returns seconds."""
        import ray

        self.wait_ready()
        started = time.perf_counter()
        ref = payload if isinstance(payload, ray.ObjectRef) else ray.put(payload)
        put_s = time.perf_counter() - started
        load_s = self._get([getattr(engine, method).remote(ref, *args) for engine in self.engines],
                           self.config.call_timeout_s, method)
        del ref
        seconds = time.perf_counter() - started
        self.last_sync = {"seconds": seconds, "put_s": put_s, "load_s": max(load_s), **sizes}
        log.info("rollout: %s on %d engine(s) in %.3f s (%s)", method, len(self.engines), seconds,
                 ", ".join(f"{k} {v:.3f}" for k, v in self.last_sync.items() if k != "seconds"))
        return seconds

    def can_load(self, checkpoint: str) -> bool:
        """Whether ``checkpoint`` fits the running engines: same model config, tokenizer and generation
        settings as the model they started with, weights in safetensors (see :meth:`load_checkpoint`)."""
        return same_model_files(self.model, checkpoint) and any(Path(checkpoint).glob("*.safetensors"))

    def load_checkpoint(self, checkpoint: str) -> float:
        """Swap a compatible checkpoint's weights into the running engines (no restart); returns seconds."""
        from safetensors.torch import load_file

        if not self.can_load(checkpoint):
            raise AlignError(f"checkpoint {checkpoint} does not fit the engines started from {self.model}")
        started = time.perf_counter()
        weights = {}
        for shard in sorted(Path(checkpoint).glob("*.safetensors")):
            weights.update(load_file(shard))
        self.update_weights(weights)
        self.model = checkpoint
        return time.perf_counter() - started

    def _labels(self, names: list[str]) -> list[str]:
        return [f"rollout engine {name!r}" for name in names]

    def _get(self, refs: list, timeout_s: float, what: str, labels: list[str] | None = None) -> list[Any]:
        """Results of one call per engine (``labels`` name the callee in errors, every engine by default)."""
        from alignment.cluster.group import wait_all

        return wait_all(refs, labels or self._labels(self.names), what, timeout_s, wrap=True)

    # ---- weight sync by broadcast from trainer rank 0 (see rollout.weight_broadcast) ----------

    def join_weight_broadcast(self, host: str, port: int, backend: str, sender: list, sender_name: str = "trainer") -> None:
        """Every engine joins the broadcast group that the trainer's rank 0 hosts at ``host:port`` for
        ``num_engines + 1`` ranks; ``sender`` is that rank's join call, in flight: both sides are waited on."""
        self.wait_ready()
        world = len(self.engines) + 1
        refs = [engine.join_weight_broadcast.remote(host, port, index + 1, world, backend, self.config.call_timeout_s)
                for index, engine in enumerate(self.engines)]
        self._get(list(sender) + refs, self.config.start_timeout_s, "joining the weight broadcast",
                  [sender_name] * len(sender) + self._labels(self.names))

    def receive_weight_broadcast(self, sender: list, sender_name: str = "trainer", reset_prefix_cache: bool = True) -> float:
        """Every engine receives and loads the weights the trainer broadcasts (its calls ``sender`` are
        in flight); waits on both sides, so a failure on either is reported at once. Returns seconds."""
        started = time.perf_counter()
        refs = [engine.receive_weights.remote(reset_prefix_cache) for engine in self.engines]
        results = self._get(list(sender) + refs, self.config.call_timeout_s, "the weight broadcast",
                            [sender_name] * len(sender) + self._labels(self.names))
        seconds = time.perf_counter() - started
        self.last_sync = {"seconds": seconds, "load_s": max(results[len(sender):])}
        log.debug("rollout: weight broadcast to %d engine(s) in %.3f s (load %.3f)", len(self.engines), seconds,
                 self.last_sync["load_s"])
        return seconds

    def shutdown(self) -> None:
        import ray

        for engine in self.engines:
            ray.kill(engine)
        self.engines = []
