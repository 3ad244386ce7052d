"""Rollout throughput: the vLLM engine against transformers ``generate``, same model, prompts and sampling.

Both backends run behind the same interface (``RolloutEngines``), each as one Ray actor using both
cores, alive at the same time and called alternately (A/B, repeated; medians reported), so they see
the same machine. Workload: 64 chat prompts from the tiny task, n=4 samples each, temperature 1,
stopping at EOS (or max_tokens). Models: the tiny task's trained base model (answers end at EOS,
lengths vary) and a randomly initialised ~50M-parameter Llama with the tiny tokenizer (it rarely
emits EOS, so its samples mostly run to max_tokens). Also times weight sync per model size, both
ways: ``update_weights`` of a state dict through Ray's object store, and a broadcast from a sender
actor standing in for trainer rank 0 (gloo here).

    flock /tmp/align-heavy.lock python benchmarks/rollout_throughput.py      # ~4-5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from alignment.cluster.runtime import start_ray
from alignment.config import ClusterConfig
from alignment.runtime_env import configure_environment
from rollout.config import RolloutConfig
from rollout.engine import RolloutEngines
from rollout.weight_broadcast import BroadcastSender


class StateDictSource:
    """What a trainer's strategy offers the broadcast, over a plain state dict."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def full_weight_layout(self) -> list:
        return [(name, tuple(t.shape), t.dtype) for name, t in self.state.items()]

    def full_weights(self):
        return iter(self.state.items())


class StateSender(BroadcastSender):
    """A Ray actor standing in for trainer rank 0: holds a checkpoint's weights and broadcasts them."""

    def __init__(self, checkpoint: str) -> None:
        from safetensors.torch import load_file

        self.source = StateDictSource(load_file(checkpoint))

    def broadcast_source(self) -> StateDictSource:
        return self.source

    def address(self) -> tuple[str, int]:
        from alignment.cluster.group import free_address

        return free_address()


def time_broadcast(engines: RolloutEngines, checkpoint: str, repeats: int) -> tuple[float, float]:
    """Median seconds of a broadcast sync from a sender actor to ``engines``, and the engine's load share."""
    import ray

    sender = ray.remote(num_cpus=0)(StateSender).remote(checkpoint)
    try:
        host, port = ray.get(sender.address.remote())
        engines.join_weight_broadcast(host, port, "gloo", [sender.join_weight_broadcast.remote(host, port, 2, "gloo", 120)])
        times = [engines.receive_weight_broadcast([sender.broadcast_weights.remote()]) for _ in range(repeats)]
    finally:
        ray.kill(sender)
    return statistics.median(times), engines.last_sync["load_s"]


def build_random_llama(tiny: Path, target: Path, hidden: int, layers: int, intermediate: int) -> int:
    """A randomly initialised Llama of the given size with the tiny task's tokenizer; returns its parameter count."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny / "base")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64, intermediate_size=intermediate, max_position_embeddings=512,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return sum(p.numel() for p in model.parameters())


def measure(model: str, prompts: list, sampling: dict, repeats: int, sync_repeats: int) -> dict:
    common = {"num_engines": 1, "cpus_per_engine": 2, "max_model_len": 256, "kv_cache_mb": 512, "start_timeout_s": 300}
    engines = {
        "vllm": RolloutEngines(model, RolloutConfig(backend="vllm", **common)),
        "hf": RolloutEngines(model, RolloutConfig(backend="hf", **common)),
    }
    try:
        for backend in engines.values():  # warm-up
            backend.generate(prompts[:4], {**sampling, "n": 1, "max_tokens": 8})
        runs: dict[str, list[dict]] = {name: [] for name in engines}
        for _ in range(repeats):
            for name, backend in engines.items():
                generations = backend.generate(prompts, sampling)
                lengths = [len(g.token_ids) for g in generations]
                runs[name].append({
                    **backend.last_stats,
                    "eos_share": sum(g.finish_reason == "stop" for g in generations) / len(generations),
                    "min_len": min(lengths), "max_len": max(lengths),
                })
        from safetensors.torch import load_file

        state = load_file(str(Path(model) / "model.safetensors"))
        syncs = {}
        for name, backend in engines.items():
            times = [backend.update_weights(state) for _ in range(sync_repeats)]
            syncs[name] = {"median_s": statistics.median(times), "load_s": backend.last_sync["load_s"]}
            broadcast_s, broadcast_load_s = time_broadcast(backend, str(Path(model) / "model.safetensors"), sync_repeats)
            syncs[name].update(broadcast_s=broadcast_s, broadcast_load_s=broadcast_load_s)
        params = sum(t.numel() for t in state.values())
    finally:
        for backend in engines.values():
            backend.shutdown()
    result = {"params": params, "sync": syncs}
    for name, items in runs.items():
        result[name] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in items),
            "all_tokens_per_s": [round(r["tokens_per_s"], 1) for r in items],
            "new_tokens": items[0]["new_tokens"],
            "eos_share": items[0]["eos_share"], "len_range": (items[0]["min_len"], items[0]["max_len"]),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", default=None, help="tiny task directory (default $ALIGN_HOME/tiny)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-50m", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    configure_environment()
    from alignment.config import align_home

    tiny = Path(args.tiny) if args.tiny else align_home() / "tiny"
    lines = (tiny / "data" / "prompts_eval.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in (lines * 2)[: args.prompts]]
    sampling = {"n": args.n, "temperature": 1.0, "max_tokens": args.max_tokens, "seed": 0}
    # 4 logical CPUs so both 2-core engines can be alive together; they are called one at a time.
    start_ray(ClusterConfig(num_workers=4, cpus_per_worker=1, object_store_mb=768))
    models = {"tiny base (trained)": str(tiny / "base")}
    workdir = Path(tempfile.mkdtemp(prefix="rollout_bench_"))
    if not args.skip_50m:
        params = build_random_llama(tiny, workdir / "llama50m", hidden=640, layers=10, intermediate=1728)
        models[f"random Llama {params / 1e6:.0f}M"] = str(workdir / "llama50m")
    results = {}
    for label, path in models.items():
        started = time.perf_counter()
        results[label] = measure(path, prompts, sampling, args.repeats, sync_repeats=3)
        results[label]["wall_s"] = time.perf_counter() - started
        print(label, json.dumps(results[label]), flush=True)
    print(f"\n{args.prompts} prompts x n={args.n}, temperature 1, max_tokens {args.max_tokens}, stop at EOS; "
          f"medians of {args.repeats} alternating runs\n")
    print("| model | params | vLLM tok/s | HF generate tok/s | vLLM / HF | samples ending at EOS | new tokens "
          "| sync vLLM (s): object store / broadcast | sync HF (s): object store / broadcast |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['params'] / 1e6:.1f}M | {r['vllm']['tokens_per_s']:.0f} | {r['hf']['tokens_per_s']:.0f} | "
              f"{r['vllm']['tokens_per_s'] / r['hf']['tokens_per_s']:.2f} | {r['vllm']['eos_share']:.0%} | "
              f"{r['vllm']['new_tokens']} | {r['sync']['vllm']['median_s']:.3f} / {r['sync']['vllm']['broadcast_s']:.3f} | "
              f"{r['sync']['hf']['median_s']:.3f} / {r['sync']['hf']['broadcast_s']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
