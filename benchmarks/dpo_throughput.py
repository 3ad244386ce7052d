"""DPO throughput: ours (Ray + DeepSpeed, two actors) against TRL's DPOTrainer and a bare PyTorch loop.

Same tiny model, same preference pairs, same global batch (micro-batch x accumulation), same
max length, fp32, 2 CPU threads in total for each. Ours runs `configs/dpo_tiny.yaml` as shipped
(chosen and rejected sharing their prefix in one row) and with one padded row per sequence, the
layout TRL and the bare loop use. Prints pairs/s (median over timed steps, warm-up and
checkpoint/eval steps excluded) and the ratios. Needs `align tiny build` and `align tiny prefs`.

    flock /tmp/align-heavy.lock python benchmarks/dpo_throughput.py --steps 20 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

WARMUP = 3


def run_ours(tiny: Path, steps: int, micro: int, batch: int, max_length: int, out: Path,
             precompute: bool = False, share_prefix: bool = True) -> list[float]:
    from alignment.config import DPOConfig, load_config
    from alignment.dpo import run_dpo

    total = steps + WARMUP + 1
    config = load_config(DPOConfig, Path(__file__).parent.parent / "configs" / "dpo_tiny.yaml", [
        f"model={tiny / 'base'}", f"output_dir={out / 'ours'}", f"data.train={tiny / 'prefs' / 'pairs_train.jsonl'}",
        f"data.eval={tiny / 'prefs' / 'pairs_eval.jsonl'}", f"data.max_length={max_length}",
        f"train.micro_batch_size={micro}", f"train.global_batch_size={batch}", f"train.max_steps={total}",
        f"train.eval_every={total}", f"train.save_every={total}", "tracking.progress=false", "tracking.tensorboard=false",
        f"dpo.precompute_ref_logps={str(precompute).lower()}", f"data.share_prefix={str(share_prefix).lower()}"])
    run_dpo(config)
    rows = [json.loads(line) for line in (out / "ours" / "metrics.jsonl").read_text().splitlines()]
    return [row["time/step_s"] for row in rows[WARMUP:-1]]  # the last step also evaluates and checkpoints


def trl_rows(path: Path) -> list[dict]:
    """Our pairs in TRL's conversational format (chosen/rejected as assistant message lists)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def run_trl(tiny: Path, steps: int, micro: int, batch: int, max_length: int, out: Path,
            precompute: bool = False) -> list[float]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignment.models import load_tokenizer

    torch.set_num_threads(2)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.started)

    dataset = datasets.Dataset.from_list(trl_rows(tiny / "prefs" / "pairs_train.jsonl"))
    args = DPOConfig(output_dir=str(out / "trl"), per_device_train_batch_size=micro,
                     gradient_accumulation_steps=batch // micro, max_length=max_length, learning_rate=5e-5,
                     max_steps=steps + WARMUP, bf16=False, gradient_checkpointing=False, report_to="none",
                     save_strategy="no", logging_steps=10**6, beta=0.1, use_cpu=True, dataloader_num_workers=0,
                     disable_tqdm=True, precompute_ref_log_probs=precompute)
    model = AutoModelForCausalLM.from_pretrained(str(tiny / "base"), dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(str(tiny / "base"), dtype=torch.float32)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=dataset,
                         processing_class=load_tokenizer(tiny / "base"), callbacks=[StepTimer()])
    trainer.train()
    return times[WARMUP:]


def run_bare(tiny: Path, steps: int, micro: int, batch: int, max_length: int) -> list[float]:
    """One process: policy + frozen reference, concatenated forward, torch AdamW, gradient accumulation."""
    import torch

    from alignment.config import PreferenceDataConfig
    from alignment.logprobs import sequence_logps
    from alignment.losses import dpo_sigmoid_loss
    from alignment.models import load_causal_lm, load_tokenizer
    from alignment.preference_data import load_preference_pairs, pair_batch

    torch.set_num_threads(2)
    tokenizer = load_tokenizer(tiny / "base")
    path = tiny / "prefs" / "pairs_train.jsonl"
    pairs = load_preference_pairs(path, tokenizer, PreferenceDataConfig(train=str(path), max_length=max_length))
    policy, reference = load_causal_lm(tiny / "base"), load_causal_lm(tiny / "base").eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=5e-5)
    times = []
    for step in range(steps + WARMUP):
        started = time.perf_counter()
        for start in range(step * batch, (step + 1) * batch, micro):
            chunk = pairs[start : start + micro]
            inputs = pair_batch(chunk, tokenizer.pad_token_id)
            with torch.no_grad():
                ref, _ = sequence_logps(reference, inputs)
            logps, _ = sequence_logps(policy, inputs)
            n = len(chunk)
            loss = dpo_sigmoid_loss(logps[:n] - ref[:n], logps[n:] - ref[n:], 0.1).sum() / batch
            loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return times[WARMUP:]


def main() -> None:
    from alignment.config import align_home
    from alignment.runtime_env import configure_environment

    configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", default=str(align_home() / "tiny"))
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per contender")
    parser.add_argument("--micro", type=int, default=8, help="pairs per forward")
    parser.add_argument("--batch", type=int, default=32, help="pairs per optimizer step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of every contender")
    parser.add_argument("--precompute", action="store_true",
                        help="also time ours and TRL with reference log-probs precomputed before training")
    args = parser.parse_args()
    tiny = Path(args.tiny)
    shape = (args.steps, args.micro, args.batch, args.max_length)
    contenders = {
        "bare PyTorch": lambda out: run_bare(tiny, *shape),
        "TRL DPOTrainer": lambda out: run_trl(tiny, *shape, out),
        "ours": lambda out: run_ours(tiny, *shape, out),
        "ours, padded rows": lambda out: run_ours(tiny, *shape, out, share_prefix=False),
    }
    if args.precompute:
        contenders["TRL DPOTrainer, precomputed ref"] = lambda out: run_trl(tiny, *shape, out, precompute=True)
        contenders["ours, precomputed ref"] = lambda out: run_ours(tiny, *shape, out, precompute=True)
    medians: dict[str, list[float]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):  # A/B/C/D, A/B/C/D, ...: slow phases of the machine hit every contender
            for number, (name, run) in enumerate(contenders.items()):
                medians[name].append(statistics.median(run(Path(scratch) / f"{repeat}-{number}")))
    step = {name: statistics.median(values) for name, values in medians.items()}
    rates = {name: args.batch / value for name, value in step.items()}
    print(f"\nDPO throughput: batch {args.batch} pairs (micro {args.micro}), max_length {args.max_length}, "
          f"{args.steps} timed steps per run, {args.repeats} alternating run(s) each; median step time")
    print(f"{'contender':34s} {'s/step':>8s} {'pairs/s':>9s}  per-run medians (s)")
    for name in contenders:
        runs = ", ".join(f"{value:.3f}" for value in medians[name])
        print(f"{name:34s} {step[name]:8.3f} {rates[name]:9.1f}  {runs}")
    trl, bare = rates["TRL DPOTrainer"], rates["bare PyTorch"]
    for name in ("ours", "ours, padded rows"):
        print(f"{name} / TRL = {rates[name] / trl:.2f}x; / bare = {rates[name] / bare:.2f}x")
    if args.precompute:
        pre = rates["ours, precomputed ref"]
        print(f"precomputed: ours / TRL = {pre / rates['TRL DPOTrainer, precomputed ref']:.2f}x")

if __name__ == "__main__":
    main()
