"""`align generate`: checkpoints x prompts -> JSONL, through the real CLI."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ALIGN, REPO, subprocess_env


def test_bad_sampling_exits_2(tmp_path):
    result = subprocess.run(
        [*ALIGN, "generate", "-c", str(REPO / "configs" / "generate_tiny.yaml"), "sampling.top_p=1.5"],
        capture_output=True, text=True, env=subprocess_env(), timeout=120,
    )
    assert result.returncode == 2
    assert "sampling.top_p" in result.stderr


@pytest.mark.slow
def test_generate_two_checkpoints_to_jsonl(tiny_task, tmp_path):
    output = tmp_path / "samples.jsonl"
    result = subprocess.run(
        [*ALIGN, "generate", "-c", str(REPO / "configs" / "generate_tiny.yaml"),
         f"checkpoints=[{tiny_task / 'base'}, {tiny_task / 'init'}]", f"output={output}", "max_prompts=8",
         "batch_size=5", "sampling.n=2", "sampling.max_tokens=16", "rollout.cpus_per_engine=1"],
        capture_output=True, text=True, env=subprocess_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 2 * 8 * 2
    keys = [(r["checkpoint"], r["prompt_index"], r["sample_index"]) for r in rows]
    assert keys == [(str(tiny_task / c), p, s) for c in ("base", "init") for p in range(8) for s in range(2)]
    assert all(len(r["token_ids"]) == len(r["logprobs"]) <= 16 for r in rows)
    assert "tokens/s" in result.stderr
