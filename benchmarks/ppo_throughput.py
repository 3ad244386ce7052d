"""PPO and GRPO throughput: ours (`align ppo`: Ray + DeepSpeed + vLLM) against TRL's PPOTrainer and GRPOTrainer.

Same tiny policy, reward model and prompts; 64 samples per step (16 prompts x 4 samples; TRL's PPO
samples 64 prompts once each), at most 48 new tokens at temperature 1 ending at EOS, one PPO epoch
in two minibatches of 32 (micro-batch 16), fp32 on CPU with 2 threads for each contender. The
contenders run one after another, each in its own process: ours through the `align ppo` CLI (step
times and phases from its metrics.jsonl), TRL 1.12.0's `trl.experimental.ppo.PPOTrainer` from a
private `pip --target` folder (installed on first use; it shadows the venv's TRL), and the venv's
TRL `GRPOTrainer` (transformers generate, no vLLM). samples/s = 64 / median step time over the
timed steps, after warm-up; our evaluation/checkpoint step (the last) is excluded. Needs
`align tiny build`, `align tiny prefs` and `align rm --config configs/rm_tiny.yaml`.

    flock /tmp/align-heavy.lock python benchmarks/ppo_throughput.py --steps 8 --json ppo_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRL_PPO_VERSION = "1.12.0"  # the last TRL release with PPOTrainer (trl.experimental.ppo)
PROMPTS, SAMPLES, MAX_TOKENS, MINIBATCHES, MICRO = 16, 4, 48, 2, 16
BATCH = PROMPTS * SAMPLES
PHASES = ("generate", "experience", "train", "sync")


# ---- ours ------------------------------------------------------------------------------------

def run_ours(config: str, home: Path, steps: int, warmup: int, out: Path, log: Path) -> dict:
    """`align ppo` for warm-up + timed steps + one final step (which checkpoints; dropped)."""
    total = warmup + steps + 1
    overrides = [
        f"output_dir={out}", f"model={home / 'tiny' / 'base'}", f"data.train={home / 'tiny' / 'data' / 'prompts_train.jsonl'}",
        f"reward.model={home / 'runs' / 'rm_tiny' / 'final'}", "data.eval=null", "reward.gold=null",
        f"train.max_steps={total}", f"train.eval_every={total}", f"train.save_every={total}",
        f"algorithm.prompts_per_step={PROMPTS}", f"sampling.n={SAMPLES}", f"sampling.max_tokens={MAX_TOKENS}",
        "sampling.temperature=1.0", "algorithm.ppo_epochs=1", f"algorithm.mini_batch_size={BATCH // MINIBATCHES}",
        f"train.micro_batch_size={MICRO}", "tracking.progress=false", "tracking.tensorboard=false",
    ]
    command = [sys.executable, "-m", "alignment.cli", "ppo", "--config", str(REPO / "configs" / config), *overrides]
    run_logged(command, log)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "time/step_s" in row][warmup:-1]
    steps_s = [row["time/step_s"] for row in rows]
    phases = {phase: [row.get(f"time/{phase}_s", 0.0) for row in rows] for phase in PHASES}
    return {"step_s": steps_s, "phases_s": phases,
            "sync_share": [row.get("time/sync_s", 0.0) / row["time/step_s"] for row in rows],
            "response_length": [row.get("response/length") for row in rows],
            "eos_fraction": [row.get("response/eos_fraction") for row in rows]}


# ---- TRL (each in its own process: `--worker trl-ppo|trl-grpo`) -------------------------------

def trl_ppo_dir(home: Path) -> Path:
    """TRL 1.12.0 installed without dependencies into a cache folder (once); it reuses our torch/transformers."""
    target = home / "bench" / f"trl-{TRL_PPO_VERSION}"
    if (target / "trl" / "experimental" / "ppo" / "ppo_trainer.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".trl-", dir=target.parent))  # same filesystem: the rename is atomic
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(staging),
                    f"trl=={TRL_PPO_VERSION}"], check=True)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def step_timer(times: list[float], log: list[dict]):
    """A TrainerCallback: wall time between optimizer steps (the first from train begin) into ``times``, logs into ``log``."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            times.append(now - self.last)
            self.last = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            log.append(dict(logs or {}))

    return StepTimer()


def worker_trl_ppo(home: Path, updates: int, out: Path) -> dict:
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from alignment.data import read_records, render_chat
    from alignment.models import load_tokenizer

    torch.set_num_threads(2)
    base, rm = home / "tiny" / "base", home / "runs" / "rm_tiny" / "final"
    tokenizer = load_tokenizer(base)
    tokenizer.padding_side = "left"
    prompts = [row["prompt"] for row in read_records(home / "tiny" / "data" / "prompts_train.jsonl")]
    dataset = datasets.Dataset.from_list([{"input_ids": render_chat(tokenizer, p, add_generation_prompt=True)}
                                          for p in prompts])
    args = PPOConfig(
        output_dir=str(out), per_device_train_batch_size=MICRO, gradient_accumulation_steps=BATCH // MICRO,
        num_mini_batches=MINIBATCHES, num_ppo_epochs=1, local_rollout_forward_batch_size=BATCH,
        total_episodes=updates * BATCH, response_length=MAX_TOKENS, temperature=1.0, stop_token="eos",
        kl_coef=0.05, kl_estimator="k1", learning_rate=5e-5, num_sample_generations=0, bf16=False,
        gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=0)

    def causal_lm():
        return AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)

    def scalar_head():
        return AutoModelForSequenceClassification.from_pretrained(str(rm), num_labels=1, dtype=torch.float32)

    times: list[float] = []
    logs: list[dict] = []
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=causal_lm(), ref_model=causal_lm(),
                         reward_model=scalar_head(), value_model=scalar_head(), train_dataset=dataset,
                         callbacks=[step_timer(times, logs)])
    trainer.train()
    eos = [log["val/num_eos_tokens"] / BATCH for log in logs if "val/num_eos_tokens" in log]
    return {"step_s": times, "trl_version": trl.__version__, "eos_fraction": eos}


def worker_trl_grpo(home: Path, updates: int, out: Path) -> dict:
    """TRL GRPOTrainer: 64 completions (16 prompts x 4) per generation, two optimizer steps of 32 on them."""
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from alignment.data import read_records
    from alignment.models import load_tokenizer

    torch.set_num_threads(2)
    base, rm = home / "tiny" / "base", home / "runs" / "rm_tiny" / "final"
    tokenizer = load_tokenizer(base)
    tokenizer.padding_side = "left"
    dataset = datasets.Dataset.from_list([{"prompt": row["prompt"]}
                                          for row in read_records(home / "tiny" / "data" / "prompts_train.jsonl")])
    args = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=MICRO, gradient_accumulation_steps=BATCH // MINIBATCHES // MICRO,
        steps_per_generation=BATCH // MICRO, num_generations=SAMPLES, num_iterations=1,
        max_completion_length=MAX_TOKENS, temperature=1.0, top_p=1.0, top_k=0, beta=0.04, learning_rate=5e-5,
        use_vllm=False, bf16=False, gradient_checkpointing=False, use_cpu=True, max_steps=updates * MINIBATCHES,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    times: list[float] = []
    logs: list[dict] = []
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                          reward_funcs=str(rm), args=args, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[step_timer(times, logs)])
    trainer.train()
    cycles = [sum(times[i : i + MINIBATCHES]) for i in range(0, len(times), MINIBATCHES)]  # one per generation
    return {"step_s": cycles, "optimizer_step_s": times, "trl_version": trl.__version__,
            "response_length": [log["completions/mean_length"] for log in logs if "completions/mean_length" in log],
            "truncated_fraction": [log["completions/clipped_ratio"] for log in logs if "completions/clipped_ratio" in log]}


def run_trl(worker: str, home: Path, updates: int, out: Path, log: Path, trl_path: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [*([str(trl_path)] if trl_path else []), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    result = out / "result.json"
    run_logged([sys.executable, __file__, "--worker", worker, "--updates", str(updates), "--out", str(out),
                "--home", str(home)], log, env)
    return json.loads(result.read_text())


def run_logged(command: list[str], log: Path, env: dict | None = None) -> None:
    """Run a contender; its output goes to ``log``, whose tail is shown if it fails."""
    with log.open("w") as sink:
        code = subprocess.run(command, cwd=REPO, env=env or {**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=sink, stderr=subprocess.STDOUT).returncode
    if code:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{' '.join(command[:6])} ... failed (exit {code}); last lines of {log}:\n{tail}")


# ---- report ----------------------------------------------------------------------------------

def summarize(result: dict, warmup: int) -> dict:
    times = result["step_s"][warmup:] if "phases_s" not in result else result["step_s"]
    median = statistics.median(times)
    summary = {"timed_steps": len(times), "median_step_s": median, "samples_per_s": BATCH / median}
    if "phases_s" in result:
        summary["phases_median_s"] = {p: statistics.median(v) for p, v in result["phases_s"].items()}
        summary["sync_share_median"] = statistics.median(result["sync_share"])
    return summary


def print_table(results: dict[str, dict], pairs: list[tuple[str, str]]) -> None:
    print(f"\n{BATCH} samples/step ({PROMPTS} prompts x {SAMPLES}), <= {MAX_TOKENS} new tokens, 1 epoch, "
          f"{MINIBATCHES} minibatches; median over timed steps")
    print(f"{'contender':36s} {'s/step':>7s} {'samples/s':>10s} {'ours/TRL':>9s}  "
          f"{'generate':>8s} {'experience':>10s} {'train':>7s} {'sync':>7s} {'sync %':>6s}")
    ratio_of = {ours: results[ours]["samples_per_s"] / results[trl]["samples_per_s"]
                for ours, trl in pairs if ours in results and trl in results}
    for name, s in results.items():
        ratio = f"{ratio_of[name]:9.2f}" if name in ratio_of else f"{'':9s}"
        line = f"{name:36s} {s['median_step_s']:7.3f} {s['samples_per_s']:10.1f} {ratio}"
        if "phases_median_s" in s:
            p = s["phases_median_s"]
            line += (f"  {p['generate']:8.3f} {p['experience']:10.3f} {p['train']:7.3f} {p['sync']:7.3f} "
                     f"{100 * s['sync_share_median']:5.1f}%")
        print(line)


def main() -> None:
    from alignment.config import align_home
    from alignment.runtime_env import configure_environment

    configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(align_home()), help="ALIGN_HOME holding tiny/ and runs/rm_tiny/final")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (64 samples each) per contender")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per contender")
    parser.add_argument("--skip-trl-ppo", action="store_true", help="leave out TRL 1.12 PPOTrainer")
    parser.add_argument("--skip-grpo", action="store_true", help="leave out ours GRPO and TRL GRPOTrainer")
    parser.add_argument("--json", help="write the raw step times and summaries here")
    parser.add_argument("--worker", choices=("trl-ppo", "trl-grpo"), help=argparse.SUPPRESS)
    parser.add_argument("--updates", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    home = Path(args.home)
    if args.worker:
        worker = worker_trl_ppo if args.worker == "trl-ppo" else worker_trl_grpo
        result = worker(home, args.updates, Path(args.out))
        (Path(args.out) / "result.json").write_text(json.dumps(result))
        return

    updates = args.warmup + args.steps
    raw: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as scratch:
        out = Path(scratch)
        plan = [("ours PPO (GAE)", lambda d, log: run_ours("ppo_tiny.yaml", home, args.steps, args.warmup, d, log))]
        if not args.skip_trl_ppo:
            trl_path = trl_ppo_dir(home)
            plan.append((f"TRL {TRL_PPO_VERSION} PPOTrainer",
                         lambda d, log: run_trl("trl-ppo", home, updates, d, log, trl_path)))
        if not args.skip_grpo:
            plan.append(("ours GRPO", lambda d, log: run_ours("grpo_tiny.yaml", home, args.steps, args.warmup, d, log)))
            plan.append(("TRL GRPOTrainer", lambda d, log: run_trl("trl-grpo", home, updates, d, log)))
        for index, (name, run) in enumerate(plan):
            directory = out / f"run{index}"
            directory.mkdir()
            started = time.perf_counter()
            print(f"running {name} ...", flush=True)
            raw[name] = run(directory, out / f"run{index}.log")
            print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    trl_grpo = next((n for n in raw if n.startswith("TRL GRPO")), "")
    raw_names = {n: n for n in raw}
    if trl_grpo and "trl_version" in raw[trl_grpo]:
        raw_names[trl_grpo] = f"TRL {raw[trl_grpo]['trl_version']} GRPOTrainer"
    results = {raw_names[n]: summarize(r, args.warmup) for n, r in raw.items()}
    pairs = [("ours PPO (GAE)", f"TRL {TRL_PPO_VERSION} PPOTrainer"), ("ours GRPO", raw_names.get(trl_grpo, ""))]
    print_table(results, pairs)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args) | {"batch": BATCH, "max_tokens": MAX_TOKENS},
                                               "summary": results, "raw": {raw_names[n]: r for n, r in raw.items()}},
                                              indent=1))
        print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
