"""`align compare CKPT [CKPT ...] --prompts FILE ...`: checkpoints side by side, written to an HTML report.

Flags fill :class:`alignment.compare.CompareConfig`; a ``--config`` YAML gives the rest, and
positional ``dotted.key=value`` items override both (``sampling.n=8``).
"""

from __future__ import annotations

import argparse
import json
import re

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="Compare checkpoints: samples, scores, KL, win rates, HTML report",
        description="Sample every checkpoint on the same prompts, score the samples (gold judge, verifier, reward "
                    "functions, reward models), measure KL to a reference, pairwise win rates and pass@k; write generations.jsonl, "
                    "metrics.json and a self-contained report.html.")
    parser.add_argument("items", nargs="*", metavar="CKPT | key=value",
                        help="checkpoint directories, and dotted config overrides such as sampling.n=8")
    parser.add_argument("--prompts", help="JSONL file of prompts (field `prompt`: text or chat messages)")
    parser.add_argument("--reference", help="model the KL is measured against (default: the first checkpoint)")
    parser.add_argument("--reward-model", action="append", dest="reward_models", metavar="DIR",
                        help="reward model directory from `align rm` (repeatable)")
    parser.add_argument("--reward-fn", action="append", dest="reward_functions", metavar="module:function",
                        help="reward function of the response texts (repeatable)")
    parser.add_argument("--gold", metavar="module:function", help="gold judge, e.g. reward.functions:sentiment_judge")
    parser.add_argument("--verifier", metavar="NAME", help="correctness check scoring 0/1, e.g. math_answer: adds pass@k")
    parser.add_argument("--output", "-o", help="output directory")
    parser.add_argument("--config", "-c", help="YAML config file (CompareConfig)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=run, intermixed=True)  # items may follow the options


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The flags and positional items as dotted overrides, flags first (JSON values are valid YAML)."""
    checkpoints = [item for item in args.items if not OVERRIDE.match(item)]
    flags = {"checkpoints": checkpoints or None, "prompts": args.prompts, "reference": args.reference,
             "reward_models": args.reward_models, "reward_functions": args.reward_functions, "gold": args.gold,
             "verifier": args.verifier, "output": args.output}
    overrides = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    return overrides + [item for item in args.items if OVERRIDE.match(item)]


def run(args: argparse.Namespace) -> int:
    from alignment.compare import CompareConfig, run_compare
    from alignment.config import dump_config, load_config

    config = load_config(CompareConfig, args.config, flag_overrides(args))
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    report = run_compare(config)
    print(f"compare: report written to {report}")
    return 0
