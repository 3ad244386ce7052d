"""The tiny tool-use task's base model on its held-out prompts: how often it calls the calculator, and how
often it is right with the tool and without.

Episodes run with transformers ``generate`` under the tiny chat template (``alignment.tiny.tool_use.play``):
the first assistant turn; when it is a ``<tool_call>``, the calculator's result for the model's own
expression as a tool turn, then one more assistant turn. Sampled at temperature 1 (``--samples`` per
prompt) and greedy.

    flock /tmp/align-heavy.lock python benchmarks/tiny_tools_base.py      # ~30 s on 2 cores, after `align tiny tools`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignment.config import align_home
from alignment.tiny.tool_use import play, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=Path, default=align_home() / "tiny-tools", help="the built task (align tiny tools)")
    parser.add_argument("--model", type=Path, help="the model to measure (default: the task's base/)")
    parser.add_argument("--samples", type=int, default=4, help="samples per held-out prompt at temperature 1")
    parser.add_argument("--show", type=int, default=3, help="episodes to print per setting")
    args = parser.parse_args()
    prompts = [json.loads(line) for line in (args.task / "data" / "prompts_eval.jsonl").read_text().splitlines()]
    model = args.model or args.task / "base"
    print(f"{model}: {len(prompts)} held-out prompts")
    print(f"{'sampling':<16} {'episodes':>8} {'tool rate':>10} {'acc. tool':>10} {'acc. direct':>12} {'success':>8}")
    for name, temperature, samples in (("temperature 1", 1.0, args.samples), ("greedy", 0.0, 1)):
        episodes = play(model, prompts, temperature, samples)
        s = summarize(episodes)
        print(f"{name:<16} {s['episodes']:>8} {s['tool_rate']:>10.3f} {s['tool_accuracy']:>10.3f} "
              f"{s['direct_accuracy']:>12.3f} {s['success']:>8.3f}")
        for episode in episodes[: args.show]:
            print("   ", episode["prompt"], "->", " | ".join(episode["turns"]), "(right)" if episode["correct"] else "(wrong)")


if __name__ == "__main__":
    main()
