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
def test_generate_checkpoints_to_jsonl_swapping_weights_into_one_engine(tiny_task, tmp_path):
    """base, init, base again: the engine started for base runs the other two by swapping weights,
    and base's second pass (after init's weights) reproduces its first sample for sample."""
    output = tmp_path / "samples.jsonl"
    checkpoints = [tiny_task / "base", tiny_task / "init", tiny_task / "base"]
    result = subprocess.run(
        [*ALIGN, "generate", "-c", str(REPO / "configs" / "generate_tiny.yaml"),
         f"checkpoints=[{', '.join(map(str, checkpoints))}]", f"output={output}", "max_prompts=8",
         "batch_size=5", "sampling.n=2", "sampling.max_tokens=16", "sampling.seed=3", "rollout.cpus_per_engine=1"],
        capture_output=True, text=True, env=subprocess_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 3 * 8 * 2
    keys = [(r["checkpoint"], r["prompt_index"], r["sample_index"]) for r in rows]
    assert keys == [(str(c), p, s) for c in checkpoints for p in range(8) for s in range(2)]
    assert all(len(r["token_ids"]) == len(r["logprobs"]) <= 16 for r in rows)
    assert "tokens/s" in result.stderr
    assert result.stderr.count("weights swapped into the running engine") == 2
    assert result.stderr.count("engine(s) ready") == 1
    first, init, again = rows[:16], rows[16:32], rows[32:]
    assert [r["token_ids"] for r in again] == [r["token_ids"] for r in first]
    assert [x for r in again for x in r["logprobs"]] == pytest.approx([x for r in first for x in r["logprobs"]], abs=1e-4)
    assert [r["token_ids"] for r in init] != [r["token_ids"] for r in first]  # the untrained weights answer
