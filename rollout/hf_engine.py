"""The same engine interface over transformers ``generate``, in a Ray actor.

For models vLLM cannot load, and for users who measure it faster on their CPU. Log-probabilities
come from ``output_scores``: the logits after temperature, top-k and top-p, log-softmaxed, which is
what vLLM's ``processed_logprobs`` mode reports.
"""

from __future__ import annotations

import os
import time
from typing import Any

from alignment.logs import redirect_actor_output
from rollout.config import RolloutConfig, SamplingConfig, prompt_seed
from rollout.weight_broadcast import BroadcastReceiver


class HFEngine(BroadcastReceiver):
    """One transformers causal LM answering token-id prompts (one left-padded batch per call)."""

    def __init__(self, model: str, tokenizer: str, config: dict[str, Any], engine_index: int,
                 log_file: str | None = None) -> None:
        redirect_actor_output(log_file)
        import torch
        from transformers import AutoModelForCausalLM

        from alignment.models import load_tokenizer

        cfg = RolloutConfig.model_validate(config)
        self.threads = max(1, int(cfg.cpus_per_engine))
        torch.set_num_threads(self.threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, cfg.dtype)).to(self.device).eval()
        self.tokenizer = load_tokenizer(tokenizer)
        self.generator_seed = cfg.seed + engine_index
        self.calls = 0

    def info(self) -> dict[str, Any]:
        import rollout

        return {"backend": "hf", "module": rollout.__file__, "pid": os.getpid(), "cores": f"{self.threads} threads", "cuda": self.device == "cuda"}

    def generate(self, prompt_token_ids: list[list[int]], sampling: dict[str, Any], first_index: int = 0) -> list[list[dict[str, Any]]]:
        import torch
        from transformers import GenerationConfig

        s = SamplingConfig.model_validate(sampling)
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(len(ids) for ids in prompt_token_ids)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_token_ids], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_token_ids], device=self.device)
        sample = s.temperature > 0
        generation_config = GenerationConfig(
            do_sample=sample, temperature=s.temperature if sample else None, top_p=s.top_p if sample else None,
            top_k=s.top_k if sample else None, max_new_tokens=s.max_tokens, num_return_sequences=s.n,
            pad_token_id=pad, eos_token_id=None if s.ignore_eos else eos, stop_strings=s.stop or None,
            output_scores=True, return_dict_in_generate=True,
        )
        self.calls += 1
        # One generator for the whole left-padded batch: its rows draw independent noise.
        torch.manual_seed(prompt_seed(s.seed, first_index) if s.seed is not None else self.generator_seed * 1_000_003 + self.calls)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config,
                tokenizer=self.tokenizer if s.stop else None,
            )
        new_tokens = out.sequences[:, width:]
        logprobs = torch.log_softmax(torch.stack(out.scores, dim=1).float(), dim=-1)
        token_logprobs = logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        results: list[list[dict[str, Any]]] = [[] for _ in prompt_token_ids]
        for row in range(new_tokens.shape[0]):
            tokens = new_tokens[row].tolist()
            length, reason = len(tokens), "length"
            if not s.ignore_eos and eos in tokens:
                length, reason = tokens.index(eos) + 1, "stop"
            elif s.stop and tokens[-1] == pad:  # a stop string ended this row; generate padded the rest
                while length and tokens[length - 1] == pad:
                    length -= 1
                reason = "stop"
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
            for stop in s.stop:
                if stop in text:
                    text, reason = text[: text.index(stop)], "stop"
            results[row // s.n].append({
                "token_ids": tokens[:length],
                "text": text,
                "logprobs": token_logprobs[row, :length].tolist() if s.logprobs else None,
                "finish_reason": reason,
            })
        return results

    def update_weights(self, state_dict: dict[str, Any], reset_prefix_cache: bool = True) -> float:
        """Copy a full state dict into the model (tied weights may be absent); returns seconds."""
        started = time.perf_counter()
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
        if unexpected or set(missing) - tied - {"lm_head.weight"}:
            raise ValueError(f"state dict does not fit the model: missing {missing}, unexpected {unexpected}")
        return time.perf_counter() - started
