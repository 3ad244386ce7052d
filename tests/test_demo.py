"""`make demo` (slow): the whole loop from nothing within 20 minutes, quietly; both aligned models beat the base."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import REPO, subprocess_env
from tests.test_tiny_preferences import preference_accuracy


@pytest.mark.slow
def test_demo_runs_the_loop_in_time_and_both_aligned_models_beat_the_base(request, tmp_path):
    """Exactly the README's first command, as a newcomer runs it: `make demo` with an empty ALIGN_HOME,
    so the tiny task is built inside the demo (in the same process as every later stage). It runs first
    (tests/conftest.py): on a fresh $ALIGN_HOME (CI) the demo runs there and its tiny build serves the rest
    of the suite; where the tiny task is built already, it runs in an empty home of its own."""
    from alignment.config import align_home

    home = align_home() if not (align_home() / "tiny").exists() else tmp_path / "home"
    env = {**subprocess_env(), "ALIGN_HOME": str(home)}
    env.pop("ALIGN_VERBOSE", None)
    result = subprocess.run(["make", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    output = home / "demo"
    assert "[demo] ===== tiny task =====" in result.stdout and (home / "tiny" / "base").is_dir()
    console = (result.stdout + result.stderr).splitlines()
    chatter = [line for line in console if re.search(r"\bINFO\b", line)]
    assert not chatter, chatter[:5]  # vLLM's, Ray's and DeepSpeed's INFO lines go to the log file
    library_log = output / "logs" / "libraries.log"
    assert f"library logs (vLLM, Ray, DeepSpeed): {library_log}" in result.stdout
    assert "INFO" in library_log.read_text()

    summary = json.loads((output / "summary.json").read_text())
    metrics = json.loads((output / "compare" / "metrics.json").read_text())
    gold = {name: m["scores"]["gold"]["mean"] for name, m in metrics["checkpoints"].items()}
    wins = {name: metrics["win_rates"]["gold"][name]["base"] for name in ("dpo", "ppo")}
    print(f"demo: {summary['total_s']:.0f} s ({summary['timings_s']}); gold {gold}; "
          f"win rates vs base {[(n, round(w['rate'], 3)) for n, w in wins.items()]}")
    assert summary["total_s"] < 20 * 60
    for name in ("dpo", "ppo"):
        assert gold[name] > gold["base"] + 0.2, name
        assert wins[name]["ci_low"] > 0.5, name  # the whole 95% interval above a coin flip
    assert wins["dpo"]["rate"] >= 0.70
    held_out = request.getfixturevalue("tiny_prefs") / "pairs_eval.jsonl"  # rankings by the noiseless judge, prompts never annotated
    before = preference_accuracy(home / "tiny" / "base", held_out)
    after = preference_accuracy(output / "dpo" / "final", held_out)
    print(f"held-out preference accuracy {before:.3f} -> {after:.3f}")
    assert after > before
    assert (output / "compare" / "report.html").is_file()
    pairs = (output / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) > 500 and {"prompt", "chosen", "rejected"} <= json.loads(pairs[0]).keys()
    assert "align label serve --db sqlite:///" in result.stdout

    again = subprocess.run(["make", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("label", "reward model", "dpo", "ppo", "compare"):
        assert f"[demo] {stage}: cached" in again.stdout, stage
