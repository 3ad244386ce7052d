"""Corrections: an annotator rewrites a candidate (or writes an answer of their own) while ranking or rating.
Stored as a candidate with an author, never shown to other annotators, exported as correction over
original in the pairs and as SFT rows; counted per annotator for the admins. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3

import pytest

from alignment.errors import AlignError
from labeling_ui import store as st
from labeling_ui.__main__ import main
from labeling_ui.export import project_rows

PASSWORD = "password123"
CODE = "def total(xs):\n    result = 0\n\n    for x in xs:\n        result += x\n    return result\n"
FIXED = "def total(xs):\n    result = 0\n\n    for x in xs:\n        result += x\n\n    return result\n"


def setup(store: st.Store, **options) -> tuple[st.User, st.User]:
    st.import_items(store, "code", [{"id": "sum", "prompt": "Sum a list in Python.", "candidates": [CODE, "sum()"]}],
                    annotations_per_item=2, **options)
    for name in ("ann", "bea"):
        st.add_user(store, name, PASSWORD)
    return st.get_user(store, "ann"), st.get_user(store, "bea")


def by_text(task: st.Task) -> dict[str, int]:
    return {c["text"]: c["id"] for c in task.candidates}


def test_a_correction_is_private_exported_as_pair_and_sft_and_counted(db):
    ann, bea = setup(db)
    task = st.claim_next(db, ann, "code")
    ids = by_text(task)
    first = st.submit_correction(db, ann, task.assignment_id, "a first try", corrects=ids[CODE])
    assert st.submit_correction(db, ann, task.assignment_id, FIXED, corrects=ids[CODE]) == first  # replaces it
    own = st.submit_correction(db, ann, task.assignment_id, "print(sum([1, 2]))")
    assert own != first
    assert st.claim_next(db, ann, "code").candidates == task.candidates  # the task is unchanged, even for ann
    other = st.claim_next(db, bea, "code")
    assert sorted(c["text"] for c in other.candidates) == sorted([CODE, "sum()"])  # bea never sees ann's texts
    assert sorted(by_text(other).values()) == sorted(ids.values())
    assert st.project_progress(db, "code")["annotators"]["ann"]["corrections"] == 0  # not submitted yet
    assert project_rows(db, "code", "sft") == []
    st.submit_ranking(db, ann, task.assignment_id, {ids[CODE]: 1, ids["sum()"]: 2})  # originals only
    st.submit_ranking(db, bea, other.assignment_id, {ids[CODE]: 2, ids["sum()"]: 1})
    with pytest.raises(AlignError, match="already submitted"):
        st.submit_correction(db, ann, task.assignment_id, "late", corrects=ids[CODE])
    pairs = project_rows(db, "code", "pairs")
    assert {"prompt": "Sum a list in Python.", "chosen": FIXED, "rejected": CODE} in pairs  # correction over original
    assert len(pairs) == 3  # ann's and bea's ranking pair, and the correction's
    assert sorted(row["completion"] for row in project_rows(db, "code", "sft")) == [FIXED, "print(sum([1, 2]))"]
    assert project_rows(db, "code", "sft")[0]["completion"] in (FIXED, "print(sum([1, 2]))")
    progress = st.project_progress(db, "code")["annotators"]
    assert (progress["ann"]["corrections"], progress["bea"]["corrections"]) == (2, 0)
    (item,) = st.ranked_items(db, "code")
    assert sorted(item.candidates.values()) == sorted([CODE, "sum()"])  # corrections are not candidates to rank
    assert "correct" in [entry["action"] for entry in st.audit_log(db)]


def test_corrections_in_a_rating_project_and_chat_prompts(db):
    chat = [{"role": "user", "content": "Say hi."}]
    st.import_items(db, "rate", [{"prompt": "Say hi.", "messages": chat, "candidates": ["go away"]}],
                    annotations_per_item=1, feedback="rating", rating_scale=2)
    st.add_user(db, "ann", PASSWORD)
    ann = st.get_user(db, "ann")
    task = st.claim_next(db, ann, "rate")
    (candidate,) = task.candidates
    st.submit_correction(db, ann, task.assignment_id, "Hi!", corrects=candidate["id"])
    st.submit_ratings(db, ann, task.assignment_id, {candidate["id"]: 0})
    assert project_rows(db, "rate", "pairs") == [
        {"prompt": chat, "chosen": [{"role": "assistant", "content": "Hi!"}],
         "rejected": [{"role": "assistant", "content": "go away"}]}]
    assert project_rows(db, "rate", "sft") == [{"prompt": chat, "completion": [{"role": "assistant", "content": "Hi!"}]}]
    assert [row["completion"] for row in project_rows(db, "rate", "kto")] == [[{"role": "assistant", "content": "go away"}]]


@pytest.mark.parametrize(
    "text, corrects, message",
    [
        ("   \n", None, "text: Value error, the correction is empty"),
        (5, None, "text: Input should be a valid string"),
        ("x", True, "corrects: Input should be a valid integer"),
        ("x", "1", "corrects: Input should be a valid integer"),
        ("x", 99999, "candidate 99999 is not an answer of task"),
        (CODE, "same", "the same as the answer"),
    ],
)
def test_bad_corrections_are_refused(db, text, corrects, message):
    ann, bea = setup(db)
    task = st.claim_next(db, ann, "code")
    if corrects == "same":
        corrects = by_text(task)[CODE]
    with pytest.raises(AlignError, match=message):
        st.submit_correction(db, ann, task.assignment_id, text, corrects=corrects)
    with pytest.raises(AlignError, match="not yours"):
        st.submit_correction(db, bea, task.assignment_id, "mine", corrects=None)


def test_a_skipped_tasks_corrections_are_not_exported(tmp_path):
    store = st.Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ann, _ = setup(store)
    task = st.claim_next(store, ann, "code")
    st.submit_correction(store, ann, task.assignment_id, FIXED, corrects=by_text(task)[CODE])
    st.release(store, ann, task.assignment_id, "skipped", "")
    assert project_rows(store, "code", "sft") == [] and project_rows(store, "code", "pairs") == []


def test_cli_exports_sft_rows_and_an_old_database_gains_the_columns(tmp_path, capsys):
    path = tmp_path / "old.sqlite"
    st.Store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as connection:  # the candidates table as it was (SQLite cannot drop a foreign key)
        connection.execute("DROP TABLE candidates")
        connection.execute("CREATE TABLE candidates (id INTEGER PRIMARY KEY, item_id INTEGER REFERENCES items(id),"
                           " position INTEGER, text TEXT, source VARCHAR(256))")
    store = st.Store(f"sqlite:///{path}")
    ann, _ = setup(store)
    task = st.claim_next(store, ann, "code")
    st.submit_correction(store, ann, task.assignment_id, FIXED, corrects=by_text(task)[CODE])
    st.submit_ranking(store, ann, task.assignment_id, {c["id"]: 1 for c in task.candidates})
    out = tmp_path / "sft.jsonl"
    assert main(["export", "code", "--format", "sft", "-o", str(out), "--db", f"sqlite:///{path}"]) == 0
    assert "wrote 1 SFT rows" in capsys.readouterr().out
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"prompt": "Sum a list in Python.", "completion": FIXED}]


def test_json_api_corrections_endpoint(tmp_path):
    from starlette.testclient import TestClient

    from labeling_ui.app import create_app

    store = st.Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    setup(store)
    with TestClient(create_app(store)) as client:
        token = client.post("/api/v1/login", json={"name": "ann", "password": PASSWORD}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        task = client.post("/api/v1/projects/code/next", headers=headers).json()["task"]
        code = next(c["id"] for c in task["candidates"] if c["text"] == CODE)
        url = f"/api/v1/tasks/{task['assignment_id']}/corrections"
        bad = client.post(url, headers=headers, json={"text": FIXED, "corrects": str(code)})
        assert bad.status_code == 422 and bad.json()["fields"] == ["body.corrects"]
        assert client.post(url, headers=headers, json={"text": FIXED, "corrects": code}).status_code == 200
        again = client.post("/api/v1/projects/code/next", headers=headers).json()["task"]
        assert [(c["corrects"], c["text"]) for c in again["corrections"]] == [(code, FIXED)]  # shown again
        own = client.post(url, headers=headers, json={"text": "my own"}).json()["candidate_id"]
        assert client.delete(url, headers=headers).json() == {"withdrawn": True}  # the own answer
        assert client.delete(url, headers=headers).json() == {"withdrawn": False}
        again = client.post("/api/v1/projects/code/next", headers=headers).json()["task"]
        assert own not in [c["id"] for c in again["corrections"]] and len(again["corrections"]) == 1
        ranks = {str(c["id"]): i + 1 for i, c in enumerate(task["candidates"])}
        client.post(f"/api/v1/tasks/{task['assignment_id']}/submit", headers=headers, json={"ranks": ranks})
    assert [(c.text, c.original) for c in st.corrections(store, "code")] == [(FIXED, CODE)]


def test_a_task_shown_again_lists_the_annotators_own_corrections_only(db):
    ann, bea = setup(db)
    task = st.claim_next(db, ann, "code")
    assert task.corrections == []
    ids = by_text(task)
    fixed = st.submit_correction(db, ann, task.assignment_id, FIXED, corrects=ids[CODE])
    own = st.submit_correction(db, ann, task.assignment_id, "print(sum([1, 2]))")
    again = st.claim_next(db, ann, "code")  # the page reloaded, or the annotator came back later
    assert again.assignment_id == task.assignment_id and again.candidates == task.candidates
    assert again.corrections == [{"id": fixed, "corrects": ids[CODE], "text": FIXED},
                                 {"id": own, "corrects": None, "text": "print(sum([1, 2]))"}]
    assert st.claim_next(db, bea, "code").corrections == []  # never anyone else's
    assert st.withdraw_correction(db, ann, task.assignment_id) is True
    assert st.withdraw_correction(db, ann, task.assignment_id) is False  # nothing left to take back
    with pytest.raises(AlignError, match="not yours"):
        st.withdraw_correction(db, bea, task.assignment_id, corrects=ids[CODE])
    assert [c["id"] for c in st.claim_next(db, ann, "code").corrections] == [fixed]
    st.submit_ranking(db, ann, task.assignment_id, {ids[CODE]: 1, ids["sum()"]: 2})
    assert [row["completion"] for row in project_rows(db, "code", "sft")] == [FIXED]
    assert "withdraw_correction" in [entry["action"] for entry in st.audit_log(db)]


def test_the_page_shows_earlier_corrections_and_submits_only_what_changed(tmp_path):
    from labeling_ui.page import submit_given

    store = st.Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ann, _ = setup(store)
    task = st.claim_next(store, ann, "code")
    ids = [c["id"] for c in task.candidates]
    texts = [c["text"] for c in task.candidates]
    code = texts.index(CODE)
    st.submit_correction(store, ann, task.assignment_id, FIXED, corrects=ids[code])
    st.submit_correction(store, ann, task.assignment_id, "my own")
    again = st.claim_next(store, ann, "code")
    mine = {c["corrects"]: c["text"] for c in again.corrections}
    state = {"assignment_id": task.assignment_id, "ids": ids, "texts": texts, "feedback": "ranking",
             "corrected": [mine.get(i) for i in ids], "own_answer": mine.get(None)}
    edits = [mine.get(i, t) for i, t in zip(ids, texts, strict=True)]  # as the Edit boxes show them
    edits[code] = CODE  # set back to the answer: the correction is taken back
    submit_given(store, ann, state, ("1", "2"), tuple(edits), "my own")  # own answer unchanged: not sent again
    actions = [entry["action"] for entry in st.audit_log(store)]
    assert actions.count("correct") == 2 and actions.count("withdraw_correction") == 1
    assert [row["completion"] for row in project_rows(store, "code", "sft")] == ["my own"]
