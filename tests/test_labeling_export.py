"""Rankings -> TRL preference pairs, JSONL and Parquet."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from alignment.errors import AlignError
from labeling_ui import store as st
from labeling_ui.export import export_project, preference_rows, ranking_pairs


def test_ranking_pairs_every_ordered_pair_no_ties():
    assert sorted(ranking_pairs({10: 1, 20: 2, 30: 3})) == [(10, 20), (10, 30), (20, 30)]
    assert sorted(ranking_pairs({10: 1, 20: 2, 30: 2})) == [(10, 20), (10, 30)]
    assert ranking_pairs({10: 1, 20: 1}) == []


def item(rankings):
    return st.RankedItem(
        item_id=1, external_id="x", prompt="Q", candidates={1: "good", 2: "ok", 3: "bad"}, rankings=rankings
    )


def test_preference_rows_all_and_consensus():
    items = [item({"a": {1: 1, 2: 2, 3: 3}, "b": {1: 2, 2: 1, 3: 3}})]
    rows = preference_rows(items, "all")
    assert len(rows) == 6 and {"prompt": "Q", "chosen": "ok", "rejected": "good"} in rows
    # consensus: means good 1.5, ok 1.5, bad 3 -> good = ok > bad
    assert sorted((r["chosen"], r["rejected"]) for r in preference_rows(items, "consensus")) == [
        ("good", "bad"),
        ("ok", "bad"),
    ]
    with pytest.raises(AlignError, match="mode"):
        preference_rows(items, "best")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_project_files(tmp_path, suffix):
    store = st.Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    st.import_items(
        store, "demo", [{"prompt": "Q", "candidates": ["good", "ok", "bad"]}], annotations_per_item=1
    )
    st.add_user(store, "ann", "password123")
    user = st.get_user(store, "ann")
    task = st.claim_next(store, user, "demo")
    by_text = {c["text"]: c["id"] for c in task.candidates}
    st.submit_ranking(
        store, user, task.assignment_id, {by_text["good"]: 1, by_text["ok"]: 2, by_text["bad"]: 2}
    )
    out = tmp_path / f"pairs{suffix}"
    assert export_project(store, "demo", out, by="admin") == 2
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        rows = pq.read_table(out).to_pylist()
    assert sorted((r["prompt"], r["chosen"], r["rejected"]) for r in rows) == [
        ("Q", "good", "bad"),
        ("Q", "good", "ok"),
    ]
    assert st.audit_log(store)[0]["action"] == "export"
    with pytest.raises(AlignError, match="format"):
        export_project(store, "demo", tmp_path / "pairs.csv")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_chat_prompts_export_as_messages_text_prompts_as_text(tmp_path, suffix):
    """An item imported with ``messages`` (as `align label generate` imports chat prompts) exports them,
    with chosen and rejected as assistant messages (TRL's conversational format); annotators read the text."""
    from alignment.config import PreferenceDataConfig
    from alignment.preference_data import row_pairs

    store = st.Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    chat = [{"role": "user", "content": "Review X."}]
    st.import_items(store, "demo", [{"prompt": "Review X.", "messages": chat, "candidates": ["good", "bad"]}],
                    annotations_per_item=1)
    st.add_user(store, "ann", "password123")
    user = st.get_user(store, "ann")
    task = st.claim_next(store, user, "demo")
    assert task.prompt == "Review X."
    by_text = {c["text"]: c["id"] for c in task.candidates}
    st.submit_ranking(store, user, task.assignment_id, {by_text["good"]: 1, by_text["bad"]: 2})
    out = tmp_path / f"pairs{suffix}"
    assert export_project(store, "demo", out) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()] if suffix == ".jsonl" else pq.read_table(out).to_pylist()
    assert rows == [{"prompt": chat, "chosen": [{"role": "assistant", "content": "good"}],
                     "rejected": [{"role": "assistant", "content": "bad"}]}]
    ((prompt, chosen, rejected, _),) = row_pairs(rows[0], PreferenceDataConfig(train="unused"))
    assert prompt == chat and chosen == [{"role": "assistant", "content": "good"}]  # conversational, as before


def test_a_database_from_before_the_messages_column_gains_it(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    st.Store(f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE items DROP COLUMN prompt_messages")
    store = st.Store(f"sqlite:///{path}")
    st.import_items(store, "demo", [{"prompt": "Q", "candidates": ["a", "b"]}])
    assert st.list_projects(store) == ["demo"]
