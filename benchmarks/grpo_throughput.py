"""GRPO throughput on the tiny reasoning task: `align ppo` (configs/grpo_reasoning_tiny.yaml) against TRL's GRPOTrainer.

Same model (the tiny reasoning SFT base), same prompts, same reward (the `math_answer` verifier), same step:
16 prompts x 8 samples = 128 completions of at most 64 tokens at temperature 1, a KL term to the reference
in the loss (coefficient 0.01, k3), one pass over them in 2 optimizer steps of 64 (micro-batches of 32), AdamW
lr 2e-5, fp32. Ours: 2 Ray ranks (ZeRO-2) + one vLLM engine on the 2 cores, all colocated, as shipped. TRL:
one process, 2 torch threads, transformers `generate` (TRL's CPU path; its vLLM modes need CUDA),
`generation_batch_size` 128 and `steps_per_generation` 4, so one generation serves 2 optimizer steps too.

Prints samples/s (completions trained on per second of wall time, medians over timed steps after warm-up,
evaluation and checkpoint steps excluded) and the ratio. Contenders alternate. Needs `align tiny reasoning`.

    flock /tmp/align-heavy.lock python benchmarks/grpo_throughput.py --steps 8 --repeats 2
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

REPO = Path(__file__).resolve().parent.parent
WARMUP = 2
PROMPTS, N, MAX_TOKENS, MINI, MICRO = 16, 8, 64, 64, 32


def run_ours(task: Path, steps: int, out: Path, *overrides: str) -> list[float]:
    """Seconds per step of `align ppo` with the shipped GRPO config (and ``overrides``)."""
    data = task / "data"
    total = steps + WARMUP
    command = [str(Path(sys.executable).parent / "align"), "ppo", "--config", str(REPO / "configs" / "grpo_reasoning_tiny.yaml"),
               f"model={task / 'base'}", f"output_dir={out}", f"data.train={data / 'prompts_train.jsonl'}", "data.eval=null",
               f"train.max_steps={total}", f"train.save_every={total + 1}", "tracking.progress=false",
               "tracking.tensorboard=false", *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"align ppo failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["time/step_s"] for row in rows if "time/step_s" in row][WARMUP:]


def run_trl(task: Path, steps: int, out: Path) -> list[float]:
    """Seconds per generation round (128 completions, 2 optimizer steps) of TRL's GRPOTrainer."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignment.models import load_tokenizer
    from reward.functions import math_answer

    torch.set_num_threads(2)
    ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    def reward(prompts, completions, answer, **kwargs):
        return math_answer([c[0]["content"] if isinstance(c, list) else c for c in completions], answer)

    rows = [json.loads(line) for line in (task / "data" / "prompts_train.jsonl").read_text().splitlines()]
    dataset = datasets.Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    optimizer_steps = 2 * (steps + WARMUP)
    args = GRPOConfig(
        output_dir=str(out), num_generations=N, max_completion_length=MAX_TOKENS, temperature=1.0, top_p=1.0,
        per_device_train_batch_size=MICRO, gradient_accumulation_steps=MINI // MICRO,
        steps_per_generation=PROMPTS * N // MICRO, num_iterations=1,  # = a generation batch of 128
        beta=0.01, learning_rate=2e-5, lr_scheduler_type="constant", max_steps=optimizer_steps, bf16=False,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True,
        dataloader_num_workers=0, seed=0)
    tokenizer = load_tokenizer(task / "base")
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(task / "base"), dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()])
    started = time.perf_counter()
    trainer.train()
    marks = [started, *ends]
    rounds = [marks[i + 2] - marks[i] for i in range(0, len(marks) - 2, 2)]  # 2 optimizer steps per generation
    return rounds[WARMUP:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="Timed steps per run (after warm-up).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each contender, alternating.")
    args = parser.parse_args()
    from alignment.config import align_home

    task = align_home() / "tiny-reasoning"
    if not (task / "base").is_dir():
        raise SystemExit("run `align tiny reasoning` first")
    root = Path(tempfile.mkdtemp(prefix="grpo-throughput-"))
    contenders = {"align ppo (grpo)": run_ours, "TRL GRPOTrainer": run_trl,
                  "align, padded rows": lambda *a: run_ours(*a, "train.share_prompts=false")}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        for number, (name, run) in enumerate(contenders.items()):
            step_s = run(task, args.steps, root / f"contender{number}-{repeat}")
            times[name].append(statistics.median(step_s))
            print(f"{name} run {repeat + 1}: median {times[name][-1]:.2f} s per step of {PROMPTS * N} samples", flush=True)
    samples = PROMPTS * N
    print(f"\nGRPO on the tiny reasoning task: {PROMPTS} prompts x {N} samples, <= {MAX_TOKENS} tokens, 2 optimizer steps")
    print(f"{'contender':22s} {'s/step':>8s} {'samples/s':>10s}  per-run medians (s)")
    rates = {}
    for name, runs in times.items():
        step = statistics.median(runs)
        rates[name] = samples / step
        print(f"{name:22s} {step:8.2f} {rates[name]:10.1f}  {[round(r, 2) for r in runs]}")
    print(f"ours / TRL = {rates['align ppo (grpo)'] / rates['TRL GRPOTrainer']:.2f}x "
          f"(padded rows: {rates['align, padded rows'] / rates['TRL GRPOTrainer']:.2f}x)")


if __name__ == "__main__":
    main()
