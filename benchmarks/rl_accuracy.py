"""How much RL raises held-out accuracy on a bundled task, within a time budget: the quality claims of
the reasoning and tool-use recipes, run in full.

Builds (or reuses) the task, runs `align ppo --config CONFIG` for ``--steps`` steps, and prints the
held-out numbers of the base (step 0) and of every evaluation after it: accuracy (mean@n over
``train.eval_samples`` samples), greedy accuracy, pass@k, KL per sequence, and for multi-turn configs
the tool-use rate and failures; then the wall time of the whole run (startup and evaluations included).

    flock /tmp/align-heavy.lock python benchmarks/rl_accuracy.py --config configs/grpo_tools_tiny.yaml --task tools
    flock /tmp/align-heavy.lock python benchmarks/rl_accuracy.py --config configs/grpo_reasoning_tiny.yaml --task reasoning
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALIGN = str(Path(sys.executable).parent / "align")
COLUMNS = ["eval/accuracy", "eval/greedy_accuracy", "eval/pass@1", "eval/pass@4", "eval/pass@8", "eval/env_tool_use",
           "eval/env_failed", "eval/env_turns", "kl/sequence"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="an `align ppo` config of a bundled task")
    parser.add_argument("--task", choices=["reasoning", "tools"], required=True, help="the `align tiny` task it trains on")
    parser.add_argument("--steps", type=int, help="train.max_steps (default: the config's)")
    parser.add_argument("--eval-every", type=int, help="train.eval_every (default: the config's)")
    parser.add_argument("--output", help="output directory (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="more config overrides, key=value (e.g. optim.lr=5e-5)")
    args = parser.parse_args()

    subprocess.run([ALIGN, "tiny", args.task], check=True, cwd=REPO)
    output = Path(args.output or tempfile.mkdtemp(prefix="rl_accuracy_")) / "run"
    overrides = [f"output_dir={output}", "tracking.progress=false", "tracking.tensorboard=false"]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    if args.eval_every:
        overrides.append(f"train.eval_every={args.eval_every}")
    overrides += args.overrides
    started = time.perf_counter()
    subprocess.run([ALIGN, "ppo", "--config", args.config, *overrides], check=True, cwd=REPO)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in rows if "eval/accuracy" in r]
    shown = [c for c in COLUMNS if any(c in r for r in evaluations)]
    print(f"\n{args.config}: {rows[-1]['step']} steps in {seconds / 60:.1f} min (wall, startup and evaluations included)")
    print("| step | " + " | ".join(c.removeprefix("eval/") for c in shown) + " |")
    print("|---" * (len(shown) + 1) + "|")
    for row in evaluations:
        values = [row.get(c) for c in shown]
        print(f"| {row['step']} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")
    base, last = evaluations[0], evaluations[-1]
    print(f"held-out accuracy {base['eval/accuracy']:.3f} -> {last['eval/accuracy']:.3f} "
          f"({100 * (last['eval/accuracy'] - base['eval/accuracy']):+.1f} points)")


if __name__ == "__main__":
    main()
