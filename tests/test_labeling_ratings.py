"""Rating projects: annotators rate each candidate (thumbs or 1 to 5), the ratings export as TRL's unpaired
KTO rows (prompt, completion, label), agreement is Krippendorff's alpha over candidates. Through the store on
SQLite and PostgreSQL, the JSON API and the CLI."""

from __future__ import annotations

import json
import sqlite3

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from alignment.errors import AlignError
from labeling_ui import store as st
from labeling_ui.__main__ import main
from labeling_ui.admin import agreement_report
from labeling_ui.app import create_app
from labeling_ui.export import export_kto, kto_rows
from tests.test_labeling_store import race

PASSWORD = "password123"


def make_items(count: int, k: int = 2) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"question {i}", "candidates": [f"answer {i}.{j}" for j in range(k)]}
            for i in range(count)]


def annotators(store: st.Store, count: int) -> list[st.User]:
    for i in range(count):
        st.add_user(store, f"ann{i}", PASSWORD)
    return [st.get_user(store, f"ann{i}") for i in range(count)]


def rate_all(store: st.Store, user: st.User, project: str, score) -> int:  # noqa: ANN001
    """Claim and rate until nothing is left; ``score(task, candidate text)`` gives each rating."""
    done = 0
    while (task := st.claim_next(store, user, project)) is not None:
        st.submit_ratings(store, user, task.assignment_id, {c["id"]: score(task, c["text"]) for c in task.candidates})
        done += 1
    return done


def stored(store: st.Store, table) -> int:  # noqa: ANN001
    with store.transaction(write=False) as session:
        return session.scalar(select(func.count()).select_from(table))


def test_project_settings_defaults_and_refusals(tmp_path):
    store = st.Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    st.import_items(store, "five", [{"prompt": "Q", "candidates": ["only one"]}], feedback="rating")
    st.import_items(store, "thumbs", make_items(1), feedback="rating", rating_scale=2)
    st.import_items(store, "ranks", make_items(1))
    with store.transaction(write=False) as session:
        settings = {name: (p.feedback, p.rating_scale, p.rating_threshold)
                    for name in ("five", "thumbs", "ranks") for p in [st.get_project(session, name)]}
    assert settings == {"five": ("rating", 5, 4), "thumbs": ("rating", 2, 1), "ranks": ("ranking", None, None)}
    with pytest.raises(AlignError, match="record 1: candidates: .*need 2 to 8"):  # rankings still need two
        st.import_items(store, "ranks", [{"prompt": "Q", "candidates": ["only one"]}])
    with pytest.raises(AlignError, match="need 1 to 8 candidates, got 0"):
        st.import_items(store, "five", [{"prompt": "Q", "candidates": []}])
    with pytest.raises(AlignError, match="rating scale must be 2"):
        st.import_items(store, "new", make_items(1), feedback="rating", rating_scale=3)
    with pytest.raises(AlignError, match="threshold must be from 2 to 5"):
        st.import_items(store, "new", make_items(1), feedback="rating", rating_threshold=1)
    with pytest.raises(AlignError, match="cannot change to ratings"):
        st.import_items(store, "ranks", [], feedback="rating")
    assert "new" not in st.list_projects(store)  # a refused import creates nothing
    st.import_items(store, "five", [], rating_threshold=3)  # the threshold may change: it only labels the export
    with store.transaction(write=False) as session:
        assert st.get_project(session, "five").rating_threshold == 3


def test_a_database_from_before_rating_projects_gains_the_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    st.Store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as connection:
        for column in ("feedback", "rating_scale", "rating_threshold"):
            connection.execute(f"ALTER TABLE projects DROP COLUMN {column}")
        connection.execute("DROP TABLE ratings")
    store = st.Store(f"sqlite:///{path}")
    st.import_items(store, "old", make_items(1))
    st.import_items(store, "rated", make_items(1), feedback="rating")
    (user,) = annotators(store, 1)
    assert st.claim_next(store, user, "old").feedback == "ranking"
    assert st.claim_next(store, user, "rated").rating_scale == 5


def test_rate_end_to_end_m_annotators_per_item_and_kto_export(db, tmp_path):
    """3 items x M=2 on a 1-5 scale, 3 annotators; every item is rated by exactly 2, nobody twice."""
    st.import_items(db, "rate", make_items(3), annotations_per_item=2, feedback="rating", rating_threshold=4)
    users = annotators(db, 3)
    given = {"ann0": {"answer 0.0": 5, "answer 0.1": 1, "answer 1.0": 4, "answer 1.1": 2, "answer 2.0": 3},
             "ann1": {"answer 0.0": 4, "answer 0.1": 4, "answer 1.0": 5, "answer 1.1": 1, "answer 2.0": 3},
             "ann2": {}}
    done = [rate_all(db, user, "rate", lambda _task, text, name=user.name: given[name].get(text, 2))
            for user in users]  # one after another; anything not in the table: 2
    assert done == [3, 3, 0]  # ann0 and ann1 took every slot, ann2 finds none
    items = st.rated_items(db, "rate")
    assert len(items) == 3 and all(len(item.ratings) == 2 for item in items)
    assert stored(db, st.Rating) == 6 and stored(db, st.Ranking) == 0
    # by hand, threshold 4: q0: 0.0 (5, 4) up, 0.1 (1, 4) a tie, left out; q1: 1.0 (4, 5) up, 1.1 (2, 1) down;
    # q2: 2.0 (3, 3) down, 2.1 (2, 2) down
    rows = kto_rows(items, threshold=4)
    assert sorted((row["prompt"], row["completion"], row["label"]) for row in rows) == [
        ("question 0", "answer 0.0", True),
        ("question 1", "answer 1.0", True),
        ("question 1", "answer 1.1", False),
        ("question 2", "answer 2.0", False),
        ("question 2", "answer 2.1", False),
    ]
    out = tmp_path / "kto.jsonl"
    assert export_kto(db, "rate", out, by="boss") == 5
    assert sorted(json.dumps(json.loads(line), sort_keys=True) for line in out.read_text().splitlines()) == sorted(
        json.dumps(row, sort_keys=True) for row in rows)
    entry = st.audit_log(db)[0]
    assert entry["user"] == "boss" and entry["action"] == "export" and json.loads(entry["detail"])["kind"] == "kto"
    assert st.project_progress(db, "rate")["done"] == 6


def test_thumbs_labels_are_the_majority_and_ties_are_left_out(db):
    st.import_items(db, "thumbs", make_items(1, k=3), annotations_per_item=3, feedback="rating", rating_scale=2)
    votes = {"answer 0.0": (1, 1, 0), "answer 0.1": (0, 0, 1), "answer 0.2": (1, 0, 0)}
    for index, user in enumerate(annotators(db, 3)):
        task = st.claim_next(db, user, "thumbs")
        assert task.feedback == "rating" and task.rating_scale == 2
        ratings = {str(c["id"]): votes[c["text"]][index] for c in task.candidates}  # ids as strings are fine
        st.submit_ratings(db, user, task.assignment_id, ratings)
    (item,) = st.rated_items(db, "thumbs")
    labels = {row["completion"]: row["label"] for row in kto_rows([item], threshold=1)}
    assert labels == {"answer 0.0": True, "answer 0.1": False, "answer 0.2": False}
    two = item.model_copy(update={"ratings": {k: v for k, v in item.ratings.items() if k != "ann2"}})
    labels = {row["completion"]: row["label"] for row in kto_rows([two], threshold=1)}
    assert labels == {"answer 0.0": True, "answer 0.1": False}  # 0.2: one up, one down, a tie: left out
    (own,) = st.rated_items(db, "thumbs", annotator="ann0")
    assert set(own.ratings) == {"ann0"}


BAD_RATINGS = {
    "bool": (lambda ids: {ids[0]: True, ids[1]: 3}, r"ratings\.\d+: Input should be a valid integer", True),
    "string": (lambda ids: {ids[0]: "3", ids[1]: 3}, r"ratings\.\d+: Input should be a valid integer", True),
    "float": (lambda ids: {ids[0]: 3.0, ids[1]: 3}, r"ratings\.\d+: Input should be a valid integer", True),
    "null": (lambda ids: {ids[0]: None, ids[1]: 3}, r"ratings\.\d+: Input should be a valid integer", True),
    "empty": (lambda ids: {}, "empty", False),
    "not_json": (lambda ids: "not json", "malformed ratings: not JSON", False),
    "missing": (lambda ids: {ids[0]: 3}, "incomplete or wrong ratings.*missing candidates", False),
    "unknown": (lambda ids: {ids[0]: 3, ids[1]: 3, 99999: 3}, "unknown candidates", False),
    "too_high": (lambda ids: {ids[0]: 6, ids[1]: 3}, "ratings are from 1 to 5", False),
    "zero": (lambda ids: {ids[0]: 0, ids[1]: 3}, "ratings are from 1 to 5", False),
}


@pytest.mark.parametrize("case", sorted(BAD_RATINGS))
def test_bad_ratings_are_refused_and_nothing_is_stored(db, case):
    st.import_items(db, "rate", make_items(1), annotations_per_item=1, feedback="rating")
    (user,) = annotators(db, 1)
    task = st.claim_next(db, user, "rate")
    ids = [c["id"] for c in task.candidates]
    make, message, names_field = BAD_RATINGS[case]
    with pytest.raises(AlignError, match=message) as raised:
        st.submit_ratings(db, user, task.assignment_id, make(ids))
    if names_field:
        assert isinstance(raised.value, st.InvalidInput) and raised.value.fields == [f"ratings.{ids[0]}"]
    assert stored(db, st.Rating) == 0
    with db.transaction(write=False) as session:
        assert session.get(st.Assignment, task.assignment_id).status == "active"
    st.submit_ratings(db, user, task.assignment_id, {i: 5 for i in ids})  # the task is still open


def test_thumbs_take_0_or_1_and_each_kind_of_feedback_only_its_own_submit(db):
    st.import_items(db, "thumbs", make_items(1), annotations_per_item=1, feedback="rating", rating_scale=2)
    st.import_items(db, "ranks", make_items(1), annotations_per_item=1)
    (user,) = annotators(db, 1)
    thumbs, ranks = st.claim_next(db, user, "thumbs"), st.claim_next(db, user, "ranks")
    thumb_ids, rank_ids = [c["id"] for c in thumbs.candidates], [c["id"] for c in ranks.candidates]
    with pytest.raises(AlignError, match=r"0 \(thumbs down\) or 1 \(thumbs up\)"):
        st.submit_ratings(db, user, thumbs.assignment_id, {thumb_ids[0]: 2, thumb_ids[1]: 1})
    with pytest.raises(AlignError, match="asks for ratings, not rankings: use submit_ratings"):
        st.submit_ranking(db, user, thumbs.assignment_id, {thumb_ids[0]: 1, thumb_ids[1]: 2})
    with pytest.raises(AlignError, match="asks for rankings, not ratings: use submit_ranking"):
        st.submit_ratings(db, user, ranks.assignment_id, {rank_ids[0]: 1, rank_ids[1]: 1})
    assert stored(db, st.Rating) == 0 and stored(db, st.Ranking) == 0
    st.submit_ratings(db, user, thumbs.assignment_id, {thumb_ids[0]: 0, thumb_ids[1]: 1})
    with pytest.raises(AlignError, match="already submitted"):
        st.submit_ratings(db, user, thumbs.assignment_id, {thumb_ids[0]: 0, thumb_ids[1]: 1})
    st.submit_ranking(db, user, ranks.assignment_id, {rank_ids[0]: 1, rank_ids[1]: 2})


def test_concurrent_ratings_are_never_lost_or_duplicated(db):
    """12 annotators race for 4 items x M=3 = 12 slots; every acknowledged rating is stored exactly once."""
    st.import_items(db, "race", make_items(4), annotations_per_item=3, feedback="rating", rating_scale=2)
    acknowledged = race(db, annotators(db, 12), "race", lambda user, task: st.submit_ratings(
        db, user, task.assignment_id, {c["id"]: 1 for c in task.candidates}))
    assert len(acknowledged) == len(set(acknowledged)) == 12
    with db.transaction(write=False) as session:
        assert sorted(session.scalars(select(st.Rating.id))) == sorted(acknowledged)
        assert session.scalar(select(func.max(st.Item.slots_taken))) == 3
    assert all(len(item.ratings) == 3 for item in st.rated_items(db, "race"))


def test_alpha_for_thumbs_and_scale_five_by_hand(tmp_path):
    """Two annotators, three candidates (units). Thumbs (1,1), (0,1), (0,0): n_0 = n_1 = 3, n = 6,
    o_01 = o_10 = 1, so alpha_nominal = 1 - (n - 1) * 2 / (2 * 3 * 3) = 1 - 10/18 = 4/9. On 1-5, units
    (1,1), (2,3), (3,3): the ordinal value of tests/test_labeling_agreement.py."""
    store = st.Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    st.import_items(store, "thumbs", make_items(1, k=3), annotations_per_item=2, feedback="rating", rating_scale=2)
    st.import_items(store, "five", make_items(1, k=3), annotations_per_item=2, feedback="rating")
    first, second = annotators(store, 2)
    thumbs = {"answer 0.0": (1, 1), "answer 0.1": (0, 1), "answer 0.2": (0, 0)}
    five = {"answer 0.0": (1, 1), "answer 0.1": (2, 3), "answer 0.2": (3, 3)}
    for index, user in enumerate((first, second)):
        rate_all(store, user, "thumbs", lambda _task, text, i=index: thumbs[text][i])
        rate_all(store, user, "five", lambda _task, text, i=index: five[text][i])
    report = agreement_report(store, "thumbs")
    assert (report["feedback"], report["alpha_level"], report["alpha"]) == ("rating", "nominal", round(4 / 9, 4))
    observed, expected = 2 * 2.0**2, 2 * (2 * 1 * 1.5**2 + 2 * 3 * 3.5**2 + 1 * 3 * 2.0**2)
    report = agreement_report(store, "five")
    assert (report["alpha_level"], report["alpha"]) == ("ordinal", round(1 - 5 * observed / expected, 4))
    assert any("mean 2.50, undesirable" in row["consensus"] for row in report["consensus"])


def test_json_api_ratings_endpoint_422_naming_the_field_and_kto_export(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = st.Store(url)
    st.add_user(store, "boss", PASSWORD, "admin")
    st.add_user(store, "ann", PASSWORD)
    chat = [{"role": "user", "content": "Say hi."}]
    st.import_items(store, "rate", [{"prompt": "Say hi.", "messages": chat, "candidates": ["hi", "go away"]}],
                    annotations_per_item=1, feedback="rating")
    with TestClient(create_app(store)) as client:
        def headers(name: str) -> dict[str, str]:
            token = client.post("/api/v1/login", json={"name": name, "password": PASSWORD}).json()["token"]
            return {"Authorization": f"Bearer {token}"}

        ann = headers("ann")
        task = client.post("/api/v1/projects/rate/next", headers=ann).json()["task"]
        assert task["feedback"] == "rating" and task["rating_scale"] == 5
        ids = {c["text"]: c["id"] for c in task["candidates"]}
        bad = client.post(f"/api/v1/tasks/{task['assignment_id']}/ratings", headers=ann,
                          json={"ratings": {str(ids["hi"]): "5", str(ids["go away"]): 1}})
        assert bad.status_code == 422 and bad.json()["fields"] == [f"ratings.{ids['hi']}"]
        ranked = client.post(f"/api/v1/tasks/{task['assignment_id']}/submit", headers=ann,
                             json={"ranks": {str(ids["hi"]): 1, str(ids["go away"]): 2}})
        assert ranked.status_code == 400 and "asks for ratings" in ranked.json()["detail"]
        assert client.post(f"/api/v1/tasks/{task['assignment_id']}/ratings", headers=ann, json={}).status_code == 400
        ok = client.post(f"/api/v1/tasks/{task['assignment_id']}/ratings", headers=ann,
                         json={"ratings": {str(ids["hi"]): 5, str(ids["go away"]): 1}})
        assert ok.status_code == 200 and "rating_id" in ok.json()
        assert client.get("/api/v1/admin/projects/rate/export?format=kto", headers=ann).status_code == 403
        exported = client.get("/api/v1/admin/projects/rate/export?format=kto", headers=headers("boss"))
        rows = [json.loads(line) for line in exported.text.splitlines()]
        assert sorted(rows, key=lambda row: row["label"]) == [
            {"prompt": chat, "completion": [{"role": "assistant", "content": "go away"}], "label": False},
            {"prompt": chat, "completion": [{"role": "assistant", "content": "hi"}], "label": True},
        ]
        report = client.get("/api/v1/admin/projects/rate/agreement", headers=headers("boss")).json()
        assert report["feedback"] == "rating" and report["alpha"] is None  # one annotator: nothing to agree on


def test_cli_imports_a_rating_project_and_exports_kto(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(record) + "\n" for record in make_items(2, k=1)))
    assert main(["import", "rate", str(items), "--db", db, "-m", "1", "--feedback", "rating",
                 "--rating-scale", "2"]) == 0
    store = st.Store(db)
    (user,) = annotators(store, 1)
    rate_all(store, user, "rate", lambda _task, text: int(text.startswith("answer 0")))
    out = tmp_path / "kto.jsonl"
    assert main(["export", "--project", "rate", "--format", "kto", "-o", str(out), "--db", db]) == 0
    assert "wrote 2 KTO rows" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(rows, key=lambda row: row["prompt"]) == [
        {"prompt": "question 0", "completion": "answer 0.0", "label": True},
        {"prompt": "question 1", "completion": "answer 1.0", "label": False},
    ]
    parquet = tmp_path / "kto.parquet"
    assert main(["export", "rate", "--format", "kto", "--out", str(parquet), "--db", db]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    assert str(table.schema.field("label").type) == "bool" and sorted(table.to_pylist(), key=str) == sorted(rows, key=str)
    assert main(["export", "rate", "--out", str(tmp_path / "pairs.jsonl"), "--format", "kto", "--db", db]) == 0
    assert main(["export", "--out", str(out), "--db", db]) == 2
    assert "name one project" in capsys.readouterr().err


def test_kto_rows_load_as_trl_expects(tmp_path):
    """TRL's KTOTrainer takes exactly prompt/completion/label rows, label a bool, text or conversational."""
    datasets = pytest.importorskip("datasets")
    data_utils = pytest.importorskip("trl.data_utils")
    text_item = st.RatedItem(item_id=1, external_id="a", prompt="Q", candidates={1: "good", 2: "bad"},
                             ratings={"ann": {1: 5, 2: 2}})
    chat = [{"role": "user", "content": "Q"}]
    chat_item = text_item.model_copy(update={"prompt_messages": chat})
    for item, conversational in ((text_item, False), (chat_item, True)):
        dataset = datasets.Dataset.from_list(kto_rows([item], threshold=4))
        assert set(dataset.column_names) == {"prompt", "completion", "label"}
        assert dataset.features["label"].dtype == "bool" and dataset["label"] == [True, False]
        assert data_utils.is_conversational(dataset[0]) is conversational
        assert "chosen" not in dataset[0]  # KTOTrainer would unpair a paired dataset; ours is unpaired already
