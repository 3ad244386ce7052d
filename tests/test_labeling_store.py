"""The data layer: users, import, claim/submit/skip, M and uniqueness under concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from alignment.errors import AlignError
from labeling_ui import store as st


def make_items(count: int, k: int = 3) -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "prompt": f"prompt {i}",
            "candidates": [{"text": f"answer {i}.{j}", "model": f"m{j}"} for j in range(k)],
        }
        for i in range(count)
    ]


def users(db, count: int) -> list[st.User]:
    for i in range(count):
        st.add_user(db, f"ann{i}", "password123")
    return [st.get_user(db, f"ann{i}") for i in range(count)]


def test_sqlite_runs_in_wal_mode(db):
    if not db.is_sqlite:
        pytest.skip("SQLite only")
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_password_hash_is_salted_and_verifies():
    first, second = st.hash_password("secret-pw"), st.hash_password("secret-pw")
    assert first != second and "secret-pw" not in first
    assert st.check_password("secret-pw", first)
    assert not st.check_password("wrong-pw", first)


def test_users_and_authentication(db):
    st.add_user(db, "alice", "password123", "admin")
    with pytest.raises(AlignError, match="already exists"):
        st.add_user(db, "alice", "password456")
    with pytest.raises(AlignError, match="role"):
        st.add_user(db, "bob", "password123", "owner")
    assert st.authenticate(db, "alice", "password123").role == "admin"
    assert st.authenticate(db, "alice", "nope-nope") is None
    assert st.authenticate(db, "nobody", "password123") is None
    token = st.create_api_session(db, st.get_user(db, "alice"))
    assert st.user_for_token(db, token).name == "alice"
    assert st.user_for_token(db, token + "x") is None
    actions = [entry["action"] for entry in st.audit_log(db)]
    assert actions.count("login_failed") == 2 and "user_add" in actions


def test_import_validates_and_is_idempotent(db):
    assert st.import_items(db, "demo", make_items(3), annotations_per_item=2, guidelines="be kind") == {
        "added": 3,
        "skipped": 0,
    }
    assert st.import_items(db, "demo", make_items(5)) == {"added": 2, "skipped": 3}
    with pytest.raises(AlignError, match="record 1: candidates"):
        st.import_items(db, "demo", [{"prompt": "x", "candidates": ["only one"]}])
    with pytest.raises(AlignError, match="record 2: prompt"):
        st.import_items(db, "demo", [make_items(1)[0], {"candidates": ["a", "b"]}])


def test_task_hides_model_names_and_shuffles_per_annotator(db):
    st.import_items(db, "demo", make_items(1, k=8), annotations_per_item=5)
    annotators = users(db, 5)
    orders = set()
    for user in annotators:
        task = st.claim_next(db, user, "demo")
        assert all(set(c) == {"id", "text"} for c in task.candidates)
        assert "m1" not in task.model_dump_json()
        orders.add(tuple(c["id"] for c in task.candidates))
        assert st.claim_next(db, user, "demo").assignment_id == task.assignment_id  # resumes the open task
    assert len(orders) > 1


def test_submit_skip_flag_and_never_twice(db):
    st.import_items(db, "demo", make_items(2), annotations_per_item=1)
    (user,) = users(db, 1)
    task = st.claim_next(db, user, "demo")
    ids = [c["id"] for c in task.candidates]
    st.submit_ranking(db, user, task.assignment_id, {ids[0]: 1, ids[1]: 2, ids[2]: 2})  # a tie
    with pytest.raises(AlignError, match="already submitted"):
        st.submit_ranking(db, user, task.assignment_id, {ids[0]: 1, ids[1]: 2, ids[2]: 3})
    second = st.claim_next(db, user, "demo")
    assert second.prompt != task.prompt
    with pytest.raises(AlignError, match="say why"):
        st.release(db, user, second.assignment_id, "flagged", "  ")
    st.release(db, user, second.assignment_id, "flagged", "offensive prompt")
    assert st.claim_next(db, user, "demo") is None  # skipped/flagged items never come back
    assert st.user_progress(db, user, "demo") == {"ranked": 1, "skipped": 0, "flagged": 1, "items": 2}
    assert st.flagged_items(db, "demo")[0]["reason"] == "offensive prompt"
    st.add_user(db, "other", "password123")
    other = st.get_user(db, "other")
    assert st.claim_next(db, other, "demo").prompt == second.prompt  # the flagged slot went back


BAD_RANKINGS = {
    "empty": (lambda ids: {}, "empty"),
    "not_json": (lambda ids: "not json", "malformed"),
    "not_ids": (lambda ids: {"a": 1}, "malformed"),
    "missing": (lambda ids: {ids[0]: 1, ids[1]: 2}, "incomplete.*missing candidates"),
    "unknown": (lambda ids: {ids[0]: 1, ids[1]: 2, ids[2]: 3, 99999: 3}, "unknown candidates"),
    "zero": (lambda ids: {ids[0]: 0, ids[1]: 2, ids[2]: 3}, "start at 1"),
    "too_high": (lambda ids: {ids[0]: 1, ids[1]: 2, ids[2]: 4}, "ranks go from 1 to 3"),
    "bool": (lambda ids: {ids[0]: True, ids[1]: 2, ids[2]: 3}, r"ranks\.\d+: Input should be a valid integer"),
    "string": (lambda ids: {ids[0]: "1", ids[1]: 2, ids[2]: 3}, r"ranks\.\d+: Input should be a valid integer"),
    "float": (lambda ids: {ids[0]: 1.0, ids[1]: 2, ids[2]: 3}, r"ranks\.\d+: Input should be a valid integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_RANKINGS))
def test_bad_rankings_are_rejected_and_nothing_is_stored(db, case):
    st.import_items(db, "demo", make_items(1), annotations_per_item=1)
    (user,) = users(db, 1)
    task = st.claim_next(db, user, "demo")
    make_ranks, message = BAD_RANKINGS[case]
    with pytest.raises(AlignError, match=message):
        st.submit_ranking(db, user, task.assignment_id, make_ranks([c["id"] for c in task.candidates]))
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(st.Ranking)) == 0
        assert session.get(st.Assignment, task.assignment_id).status == "active"


def test_other_annotators_task_is_refused(db):
    st.import_items(db, "demo", make_items(1), annotations_per_item=2)
    alice, bob = users(db, 2)
    task = st.claim_next(db, alice, "demo")
    ranks = {c["id"]: i + 1 for i, c in enumerate(task.candidates)}
    with pytest.raises(AlignError, match="not yours"):
        st.submit_ranking(db, bob, task.assignment_id, ranks)


def race(db: st.Store, annotators: list[st.User], project: str, submit) -> list:  # noqa: ANN001
    """Every annotator, in a thread of its own and all at once, claims and submits (``submit(user, task)``,
    whose results are returned) until nothing is left; fails on any error."""
    barrier = threading.Barrier(len(annotators))
    acknowledged: list = []
    errors: list[BaseException] = []

    def work(user: st.User) -> None:
        try:
            barrier.wait()
            while (task := st.claim_next(db, user, project)) is not None:
                acknowledged.append(submit(user, task))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=work, args=(user,)) for user in annotators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    return acknowledged


def test_concurrent_claims_never_exceed_m(db):
    """20 annotators race for 5 items x M=3 = 15 slots, and each submits until nothing is left."""
    st.import_items(db, "race", make_items(5), annotations_per_item=3)

    def submit(user: st.User, task: st.Task) -> tuple[str, int]:
        st.submit_ranking(db, user, task.assignment_id, {c["id"]: i + 1 for i, c in enumerate(task.candidates)})
        return user.name, task.assignment_id

    acknowledged = race(db, users(db, 20), "race", submit)
    assert len(acknowledged) == 15
    items = st.ranked_items(db, "race")
    assert len(items) == 5 and all(len(item.rankings) == 3 for item in items)
    with db.transaction() as session:
        assert session.scalar(select(func.max(st.Item.slots_taken))) == 3


def test_expire_stale_returns_slots(db):
    st.import_items(db, "demo", make_items(1), annotations_per_item=1)
    alice, bob = users(db, 2)
    task = st.claim_next(db, alice, "demo")
    assert st.claim_next(db, bob, "demo") is None
    assert st.expire_stale(db, timedelta(seconds=-1)) == 1
    assert st.claim_next(db, bob, "demo") is not None
    with pytest.raises(AlignError, match="expired"):
        st.submit_ranking(db, alice, task.assignment_id, {c["id"]: 1 for c in task.candidates})
