"""`align label generate`: candidates sampled from checkpoints by the rollout engine become rankable items."""

from __future__ import annotations

import pytest

from alignment.errors import AlignError
from labeling_ui import arena
from labeling_ui import store as st
from labeling_ui.__main__ import main
from labeling_ui.generate import generate_candidates, records_from_generations
from tests.conftest import write_jsonl


def test_rows_group_into_one_item_per_prompt():
    prompt = [{"role": "user", "content": "Review X."}]
    rows = [
        {"checkpoint": "/m/base", "prompt_index": 0, "sample_index": 0, "prompt": prompt, "completion": "Good."},
        {"checkpoint": "/m/dpo", "prompt_index": 0, "sample_index": 0, "prompt": prompt, "completion": "Great."},
        {"checkpoint": "/m/base", "prompt_index": 1, "sample_index": 0, "prompt": "Review Y.", "completion": ""},
        {"checkpoint": "/m/dpo", "prompt_index": 1, "sample_index": 1, "prompt": "Review Y.", "completion": "Bad."},
    ]
    first, second = records_from_generations(rows)
    assert first["prompt"] == "Review X." and second["prompt"] == "Review Y."
    assert first["messages"] == prompt and "messages" not in second  # chat prompts keep their form for export
    assert first["candidates"] == [{"text": "Good.", "model": "base"}, {"text": "Great.", "model": "dpo"}]
    assert second["candidates"][0]["text"] == "(empty response)" and second["candidates"][1]["model"] == "dpo#1"
    assert first["id"] == records_from_generations(rows[:2])[0]["id"] != second["id"]


def test_bad_requests_fail_before_generation(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Review X."}])
    with pytest.raises(AlignError, match="2 to 8 candidates"):
        generate_candidates(str(prompts), ["/a"], samples=1)
    with pytest.raises(AlignError, match="no_such_checkpoint does not exist"):
        generate_candidates(str(prompts), [str(tmp_path / "no_such_checkpoint"), "/b"], samples=1)


@pytest.mark.slow
def test_generate_from_two_checkpoints_into_a_project(tiny_task, tmp_path, monkeypatch, capsys, ray_runtime):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    command = ["generate", "reviews", "--prompts", str(tiny_task / "data" / "prompts_eval.jsonl"),
               "--checkpoints", str(tiny_task / "base"), str(tiny_task / "init"), "--max-prompts", "3",
               "--max-tokens", "24", "--backend", "hf", "-m", "1", "--arena"]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "added 3 generated items" in out and "added 3 arena battles" in out  # one base-vs-init battle per prompt
    assert main(command) == 0  # the same prompts again: nothing is added twice
    out = capsys.readouterr().out
    assert "added 0 generated items, skipped 3" in out and "added 0 arena battles" in out

    store = st.Store()
    st.add_user(store, "ann", "password123", "annotator")
    task = st.claim_next(store, st.get_user(store, "ann"), "reviews")
    assert len(task.candidates) == 2 and all(c["text"] for c in task.candidates)
    assert not any("base" in str(c) or "init" in str(c) for c in task.candidates)  # no model names shown
    battle = arena.next_battle(store, st.get_user(store, "ann"), "reviews")
    assert "base" not in battle.model_dump_json() and "init" not in battle.model_dump_json()
    shown = arena.cast_vote(store, st.get_user(store, "ann"), battle.battle_id, "tie")
    assert {shown.model_a, shown.model_b} == {"base", "init"}  # the checkpoints' directory names
