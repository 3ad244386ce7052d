"""KTO on the tiny task from thumbs given by simulated annotators through the labeling store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labeling_ui import store as st
from tests.conftest import REPO, tiny_overrides


def rate_through_the_store(store, project: str, annotators: list[str], noise: float, seed: int) -> int:
    """Each annotator claims items until none is left and thumbs every candidate up when its gold score
    (VADER) plus N(0, noise^2) is positive; returns the number of submissions."""
    from reward.functions import sentiment_judge

    rng = np.random.default_rng(seed)
    users = [st.get_user(store, name) for name in annotators]
    submitted, active = 0, list(users)
    while active:
        for user in list(active):
            task = st.claim_next(store, user, project)
            if task is None:
                active.remove(user)
                continue
            scores = sentiment_judge([c["text"] for c in task.candidates])
            ratings = {c["id"]: int(score + rng.normal(0.0, noise) > 0) for c, score in zip(task.candidates, scores)}
            st.submit_ratings(store, user, task.assignment_id, ratings)
            submitted += 1
    return submitted


@pytest.mark.slow
def test_kto_from_store_ratings_beats_the_base_on_the_gold_judge(tiny_task, tiny_prefs, ray_runtime, tmp_path):
    """460 train prompts x 4 sampled answers, each item thumbed by 2 of 3 simulated annotators through the
    store, exported as TRL's unpaired rows (majority label, ties left out); the exported file trains one step
    of TRL's KTOTrainer unchanged; `align kto` (configs/kto_tiny.yaml) on it beats the base's mean gold
    score on at least 65% of the held-out prompts (measured: 112 of 116, 96.6%)."""
    from alignment.compare import CompareConfig, run_compare
    from alignment.config import KTOConfig, load_config
    from alignment.kto import run_kto
    from labeling_ui.export import export_kto
    from tests.test_kto import trl_first_step

    store = st.Store(f"sqlite:///{tmp_path / 'labels.sqlite'}")
    rankings = [json.loads(line) for line in (tiny_prefs / "rankings_train.jsonl").read_text().splitlines()]
    records = [{"id": f"p{i}", "prompt": row["prompt"][-1]["content"], "messages": row["prompt"],
                "candidates": row["responses"]} for i, row in enumerate(rankings)]
    st.import_items(store, "tiny-thumbs", records, annotations_per_item=2, feedback="rating", rating_scale=2)
    annotators = ["ann1", "ann2", "ann3"]
    for name in annotators:
        st.add_user(store, name, "a long password", "annotator")
    assert rate_through_the_store(store, "tiny-thumbs", annotators, noise=0.1, seed=0) == 2 * len(records)
    exported = tmp_path / "kto.jsonl"
    count = export_kto(store, "tiny-thumbs", exported)
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(rows) == count and 0.5 * 4 * len(records) < count <= 4 * len(records)
    assert {type(row["label"]) for row in rows} == {bool} and 0.2 < np.mean([row["label"] for row in rows]) < 0.8
    assert rows[0]["prompt"] == rankings[0]["prompt"]  # the chat prompt, as messages

    first = trl_first_step(tiny_task / "base", tiny_task / "base", rows[:8], tmp_path, beta=0.1)
    assert first["loss"] == pytest.approx(0.5, abs=1e-6)  # TRL read it: policy == reference at step 1

    overrides = [*tiny_overrides(tiny_task, tiny_prefs, tmp_path / "kto"), f"data.train={exported}",
                 f"data.eval={tiny_prefs / 'ratings_eval.jsonl'}"]
    final = run_kto(load_config(KTOConfig, REPO / "configs" / "kto_tiny.yaml", overrides))
    config = load_config(CompareConfig, REPO / "configs" / "compare_tiny.yaml", [
        f"checkpoints=[{tiny_task / 'base'},{final}]", "names=[base,kto]", f"reference={tiny_task / 'base'}",
        f"prompts={tiny_task / 'data' / 'prompts_eval.jsonl'}", "reward_models=[]", f"output={tmp_path / 'compare'}",
        "progress=false"])
    run_compare(config)
    wins = json.loads((tmp_path / "compare" / "metrics.json").read_text())["win_rates"]["gold"]["kto"]["base"]
    print(f"KTO (store ratings) vs base on the gold judge: {wins}")
    assert wins["rate"] >= 0.65 and wins["ci_low"] > 0.5
