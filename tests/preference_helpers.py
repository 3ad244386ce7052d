"""Preference data and configs on the micro model, shared by the DPO and reward-model tests."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import with_overrides


def micro_pairs(micro_model: Path, count: int = 48) -> Path:
    """Pairs from the micro model's SFT rows: chosen is the row's review, rejected the same words reversed."""
    rows = [json.loads(line) for line in (micro_model / "sft.jsonl").read_text().splitlines()]
    path = micro_model / "prefs.jsonl"
    with path.open("w") as handle:
        for i in range(count):
            prompt = [m for m in rows[i]["messages"] if m["role"] == "user"]
            chosen = rows[i]["messages"][-1]["content"]
            rejected = " ".join(reversed(chosen.split()))
            handle.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def preference_tree(micro_model: Path, output_dir: Path, **overrides) -> dict:
    """A small config tree: 4 steps of 8 pairs, micro-batch 2 on 2 ranks (2 accumulation), ZeRO-2."""
    tree = {
        "model": str(micro_model / "model"),
        "output_dir": str(output_dir),
        "data": {"train": str(micro_pairs(micro_model)), "eval_fraction": 0.15, "max_length": 96},
        "train": {"micro_batch_size": 2, "global_batch_size": 8, "max_steps": 4, "eval_every": 2, "save_every": 2,
                  "keep_checkpoints": 3},
        "optim": {"lr": 3e-3, "scheduler": "constant"},
        "strategy": {"zero_stage": 2, "param_persistence_threshold": 0},
        "tracking": {"progress": False, "tensorboard": False},
    }
    return with_overrides(tree, overrides)
