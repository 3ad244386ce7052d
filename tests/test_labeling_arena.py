"""The arena: rating math against hand computations, a planted strong > middle > weak order, votes in the store,
the app's APIs and the `align label leaderboard` command."""

from __future__ import annotations

import json
import math
import random
import threading

import httpx
import numpy as np
import pytest
from gradio_client import Client
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from alignment.errors import AlignError
from labeling_ui import arena
from labeling_ui import store as st
from labeling_ui.__main__ import main
from labeling_ui.admin import leaderboard_report
from labeling_ui.leaderboard import bradley_terry_ratings, elo_ratings, encode, leaderboard, win_matrix
from labeling_ui.load import ServerProcess

PASSWORD = "password123"
# planted strengths on the Elo scale: S beats W with p = 0.8 (400 log10 4 points), M halfway
PLANTED = {"S": 400 * math.log10(4) / 2, "M": 0.0, "W": -400 * math.log10(4) / 2}


# ----------------------------------------------------------------------------- rating math


def test_elo_three_votes_equal_hand_computation():
    votes = [("A", "B", "a"), ("B", "C", "tie"), ("C", "A", "b")]
    models = ["A", "B", "C"]
    ratings = dict(zip(models, elo_ratings(encode(votes, models), 3, k=32)))
    # 1: E_A = 1/2, A wins: A = 1000 + 32 * 0.5 = 1016, B = 984
    # 2: E_B = 1 / (1 + 10^(16/400)) = 0.476990, a tie: B = 984 + 32 * 0.023010 = 984.736307, C = 999.263693
    # 3: E_C = 1 / (1 + 10^((1016 - 999.263693)/400)) = 0.475933, C loses: C = 999.263693 - 32 * 0.475933
    #    = 984.033833, A = 1016 + 15.229860 = 1031.229860
    assert ratings["A"] == pytest.approx(1031.229860, abs=1e-5)
    assert ratings["B"] == pytest.approx(984.736307, abs=1e-5)
    assert ratings["C"] == pytest.approx(984.033833, abs=1e-5)
    assert sum(ratings.values()) == pytest.approx(3000)  # Elo is zero-sum


def test_bradley_terry_of_two_models_is_the_ratio_of_wins_to_losses():
    # A beats B 7 times, B beats A 3 times, 2 ties (half a win each way): strength ratio (7 + 1) / (3 + 1) = 2
    votes = [("A", "B", "a")] * 4 + [("B", "A", "b")] * 3 + [("A", "B", "b")] * 3 + [("B", "A", "tie")] * 2
    matchups = encode(votes, ["A", "B"])
    ratings = bradley_terry_ratings(matchups, 2, prior=0.0)
    assert ratings[0] - ratings[1] == pytest.approx(400 * math.log10(2), abs=1e-6)
    assert ratings.mean() == pytest.approx(1000)
    # the prior adds one virtual tie: (8 + 1/2) / (4 + 1/2)
    ratings = bradley_terry_ratings(matchups, 2, prior=1.0)
    assert ratings[0] - ratings[1] == pytest.approx(400 * math.log10(8.5 / 4.5), abs=1e-6)


def hunter_mm(wins: np.ndarray, steps: int = 20000) -> np.ndarray:
    """Bradley-Terry by Hunter's (2004) minorization-maximization: gamma_i = W_i / sum_j n_ij / (gamma_i + gamma_j)."""
    games = wins + wins.T
    gamma = np.ones(len(wins))
    for _ in range(steps):
        gamma = wins.sum(axis=1) / (games / (gamma[:, None] + gamma[None, :])).sum(axis=1)
        gamma /= np.exp(np.log(gamma).mean())
    return 1000 + 400 * np.log10(gamma)


def test_bradley_terry_of_three_models_agrees_with_an_independent_mm_fit():
    table = {("A", "B"): (6, 2, 1), ("B", "C"): (5, 3, 0), ("A", "C"): (4, 1, 2), ("C", "A"): (1, 0, 1)}
    votes = [
        (a, b, outcome)
        for (a, b), counts in table.items()
        for outcome, count in zip(("a", "b", "tie"), counts)
        for _ in range(count)
    ]
    matchups = encode(votes, ["A", "B", "C"])
    ratings = bradley_terry_ratings(matchups, 3, prior=0.0)
    np.testing.assert_allclose(ratings, hunter_mm(win_matrix(matchups, 3)), atol=1e-6)
    # the likelihood equations: every model's expected score equals its observed score
    wins = win_matrix(matchups, 3)
    p = 1 / (1 + 10 ** ((ratings[None, :] - ratings[:, None]) / 400))
    np.testing.assert_allclose(((wins + wins.T) * p).sum(axis=1), wins.sum(axis=1), atol=1e-8)
    assert list(np.argsort(-ratings)) == [0, 1, 2]


def simulate_votes(count: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Votes between random pairs of the planted models; 10% ties, the rest won with the Elo-scale probability."""
    rng = np.random.default_rng(seed)
    models = list(PLANTED)
    votes = []
    for _ in range(count):
        a, b = (models[i] for i in rng.choice(3, size=2, replace=False))
        p_a = 1 / (1 + 10 ** ((PLANTED[b] - PLANTED[a]) / 400))
        outcome = "tie" if rng.random() < 0.1 else ("a" if rng.random() < p_a else "b")
        votes.append((a, b, outcome))
    return votes


def test_planted_strong_middle_weak_order_with_separated_intervals():
    board = leaderboard(simulate_votes(900), resamples=300)
    assert [row["model"] for row in board] == ["S", "M", "W"]
    rows = {row["model"]: row for row in board}
    for rating in ("elo", "bt"):
        assert rows["S"][rating] > rows["M"][rating] > rows["W"][rating], rating
        # the intervals separate S from W
        assert rows["S"][f"{rating}_ci"][0] > rows["W"][f"{rating}_ci"][1], rating
        for row in rows.values():
            assert row[f"{rating}_ci"][0] < row[f"{rating}_ci"][1]
    # ties are 10% whatever the strengths and count half: S scores 0.9 * 0.8 + 0.1 * 0.5 = 0.77 against W
    assert rows["S"]["bt"] - rows["W"]["bt"] == pytest.approx(400 * math.log10(0.77 / 0.23), abs=50)
    assert sum(row["votes"] for row in rows.values()) == 2 * 900


def test_leaderboard_is_seeded_and_empty_without_votes():
    votes = simulate_votes(60, seed=1)
    assert leaderboard(votes, resamples=50, seed=4) == leaderboard(votes, resamples=50, seed=4)
    assert leaderboard([]) == []


# ----------------------------------------------------------------------------- the store


def arena_items(count: int, models: tuple[str, ...] = ("S", "M", "W")) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "prompt": f"Question {i}?",
            "candidates": [
                {"text": f"answer {i} of kind {k}", "model": model} for k, model in enumerate(models)
            ],
        }
        for i in range(count)
    ]


def annotators(store: st.Store, names: list[str]) -> list[st.User]:
    for name in names:
        st.add_user(store, name, PASSWORD)
    return [st.get_user(store, name) for name in names]


def model_by_text(store: st.Store, project: str) -> dict[str, str]:
    """The ground truth the simulated annotators judge by (never sent to them)."""
    with store.transaction(write=False) as session:
        rows = session.execute(
            select(st.Candidate.text, st.Candidate.source)
            .join(st.Item, st.Item.id == st.Candidate.item_id)
            .join(st.Project, st.Project.id == st.Item.project_id)
            .where(st.Project.name == project)
        ).all()
    return {text: arena.model_of(source) for text, source in rows}


def vote_count(store: st.Store) -> int:
    with store.transaction(write=False) as session:
        return session.scalar(select(func.count()).select_from(st.Vote))


def test_battles_pair_different_models_and_hide_names_until_the_vote(db):
    items = arena_items(2, models=("alpha-ckpt", "beta-ckpt", "gamma-ckpt"))
    items[0]["candidates"] += [
        {"text": "second sample of alpha", "model": "alpha-ckpt#1"},
        {"text": "no model"},
    ]
    st.import_items(db, "duel", items)
    st.import_items(db, "plain", [{"prompt": "p", "candidates": ["x", "y"]}])
    # q0: alpha-beta, alpha-gamma, beta-gamma, beta-alpha#1, gamma-alpha#1 (not alpha-alpha#1); q1: 3 pairs
    assert arena.create_battles(db, "duel") == 5 + 3
    assert arena.create_battles(db, "duel") == 0  # idempotent
    with pytest.raises(AlignError, match="no item with candidates from two different models"):
        arena.create_battles(db, "plain")
    assert st.list_projects(db, "arena") == ["duel"] and st.list_projects(db, "ranking") == ["plain"]

    truth = model_by_text(db, "duel")
    for user in annotators(db, ["ann", "bea", "cid"]):
        view = arena.next_battle(db, user, "duel")
        assert set(view.model_dump()) == {"battle_id", "project", "guidelines", "prompt", "a", "b", "render",
                                          "a_messages", "b_messages"}  # messages: trajectory answers only
        assert (view.a_messages, view.b_messages) == (None, None)
        assert "ckpt" not in view.model_dump_json()  # no model name before the vote
        shown = arena.cast_vote(db, user, view.battle_id, "a")
        assert (shown.model_a, shown.model_b) == (
            truth[view.a],
            truth[view.b],
        )  # names revealed after the vote
        assert "alpha-ckpt#1" not in (shown.model_a, shown.model_b)  # samples count for their checkpoint
        for _ in range(4):
            assert (
                arena.next_battle(db, user, "duel").battle_id != view.battle_id
            )  # a voted battle never returns
    votes = arena.arena_votes(db, "duel")
    assert len(votes) == 3 and all(vote == "a" for _, _, vote, _ in votes)


def test_left_right_order_is_drawn_per_annotator(db):
    st.import_items(db, "duel", arena_items(1, models=("alpha", "beta")))
    arena.create_battles(db, "duel")
    shown_first = {
        arena.next_battle(db, user, "duel").a for user in annotators(db, [f"a{i}" for i in range(8)])
    }
    assert len(shown_first) == 2


def test_votes_are_validated_stored_once_and_never_twice(db):
    st.import_items(db, "duel", arena_items(1))
    arena.create_battles(db, "duel")
    alice, bob = annotators(db, ["alice", "bob"])
    view = arena.next_battle(db, alice, "duel")
    for bad in ("c", "A", "", "tie ", None):
        with pytest.raises(AlignError, match="vote must be one of a, b, tie, both_bad"):
            arena.cast_vote(db, alice, view.battle_id, bad)
    with pytest.raises(AlignError, match="no battle 999"):
        arena.cast_vote(db, alice, 999, "a")
    assert vote_count(db) == 0

    first = arena.cast_vote(db, alice, view.battle_id, "both_bad")
    assert arena.cast_vote(db, alice, view.battle_id, "both_bad") == first  # a resend returns the stored vote
    with pytest.raises(AlignError, match="already voted 'both_bad'"):
        arena.cast_vote(db, alice, view.battle_id, "a")
    assert vote_count(db) == 1 and arena.arena_progress(db, alice, "duel") == {"voted": 1, "battles": 3}

    # bob sends the same vote from eight tabs at once: one vote is stored, every request is answered
    results, errors = [], []
    barrier = threading.Barrier(8)

    def send() -> None:
        try:
            barrier.wait()
            results.append(arena.cast_vote(db, bob, view.battle_id, "tie"))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 8 and len({r.model_dump_json() for r in results}) == 1
    assert vote_count(db) == 2
    assert {entry["action"] for entry in st.audit_log(db)} >= {"vote", "arena_battles"}


def test_database_refuses_a_second_vote_and_a_bad_value(db):
    """The guarantees hold in the schema itself, not only in cast_vote."""
    st.import_items(db, "duel", arena_items(1))
    arena.create_battles(db, "duel")
    ann, bob = annotators(db, ["ann", "bob"])
    view = arena.next_battle(db, ann, "duel")
    arena.cast_vote(db, ann, view.battle_id, "a")
    with db.transaction(write=False) as session:
        stored = session.scalar(select(st.Vote))
    row = {"battle_id": stored.battle_id, "left_candidate_id": stored.left_candidate_id}
    with pytest.raises(IntegrityError, match="(?i)unique|duplicate"), db.transaction() as session:
        session.add(st.Vote(**row, user_id=ann.id, vote="b"))
    with pytest.raises(IntegrityError, match="(?i)check constraint|vote_value"), db.transaction() as session:
        session.add(st.Vote(**row, user_id=bob.id, vote="maybe"))
    assert vote_count(db) == 1


# ----------------------------------------------------------------------------- planted arena through the store


@pytest.fixture(scope="module")
def planted_db(tmp_path_factory) -> str:
    """An arena of S, M and W on 12 prompts; 8 simulated annotators vote on every battle by the planted odds."""
    url = f"sqlite:///{tmp_path_factory.mktemp('arena') / 'label.db'}"
    store = st.Store(url)
    st.add_user(store, "boss", PASSWORD, "admin")
    st.import_items(store, "planted", arena_items(12))
    arena.create_battles(store, "planted")
    truth = model_by_text(store, "planted")
    rng = np.random.default_rng(0)
    random.seed(0)  # next_battle picks among the least-voted battles at random: the same votes every run
    for user in annotators(store, [f"ann{i}" for i in range(8)]):
        while (view := arena.next_battle(store, user, "planted")) is not None:
            p_a = 1 / (1 + 10 ** ((PLANTED[truth[view.b]] - PLANTED[truth[view.a]]) / 400))
            arena.cast_vote(store, user, view.battle_id, "a" if rng.random() < p_a else "b")
    store.close()
    return url


def test_leaderboard_from_the_store_orders_the_planted_models(planted_db):
    report = leaderboard_report(st.Store(planted_db), "planted", resamples=300)
    assert report["votes"] == 8 * 12 * 3
    rows = report["rows"]
    assert [row["model"] for row in rows] == ["S", "M", "W"]
    assert rows[0]["elo"] > rows[1]["elo"] > rows[2]["elo"]
    assert rows[0]["bt_ci"][0] > rows[2]["bt_ci"][1] and rows[0]["elo_ci"][0] > rows[2]["elo_ci"][1]


def test_cli_leaderboard_prints_the_ordering(planted_db, capsys):
    assert main(["leaderboard", "planted", "--db", planted_db, "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "288 votes" in out and out.index("│ S ") < out.index("│ M ") < out.index("│ W ")
    assert main(["leaderboard", "planted", "--db", planted_db, "--resamples", "100", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["model"] for row in report["rows"]] == ["S", "M", "W"]
    assert main(["leaderboard", "nope", "--db", planted_db]) == 2
    assert "no project named 'nope'" in capsys.readouterr().err


def test_cli_import_arena_makes_battles(tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(item) + "\n" for item in arena_items(2)))
    db_url = f"sqlite:///{tmp_path / 'label.db'}"
    assert main(["import", "duel", str(items), "--arena", "--db", db_url]) == 0
    assert "added 6 arena battles" in capsys.readouterr().out
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "p", "candidates": ["x", "y"]}) + "\n")
    assert main(["import", "plain", str(plain), "--arena", "--db", db_url]) == 2
    assert "candidates from two different models" in capsys.readouterr().err
    same_names = ["generate", "duel", "--prompts", str(items), "--checkpoints", "a/final", "b/final", "--arena"]
    assert main([*same_names, "--db", db_url]) == 2
    assert "these repeat: ['final', 'final']" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the running app


@pytest.fixture(scope="module")
def server(planted_db, tmp_path_factory):
    store = st.Store(planted_db)
    st.import_items(store, "fresh", arena_items(2))
    arena.create_battles(store, "fresh")
    annotators(store, ["newbie"])
    with ServerProcess(planted_db, log_path=tmp_path_factory.mktemp("server") / "server.log") as process:
        yield process, store
    store.close()


@pytest.mark.slow
def test_annotator_votes_through_gradio_and_cannot_read_the_leaderboard(server):
    process, store = server
    newbie = Client(process.url, auth=("newbie", PASSWORD), verbose=False)
    battle = json.loads(newbie.predict("fresh", api_name="/arena_next"))
    assert set(battle) == {"battle_id", "project", "guidelines", "prompt", "a", "b", "render", "a_messages", "b_messages"}
    with pytest.raises(Exception, match="vote must be one of"):
        newbie.predict(battle["battle_id"], "left", api_name="/arena_vote")
    revealed = json.loads(newbie.predict(battle["battle_id"], "b", api_name="/arena_vote"))
    truth = model_by_text(store, "fresh")
    assert (revealed["model_a"], revealed["model_b"], revealed["vote"]) == (
        truth[battle["a"]],
        truth[battle["b"]],
        "b",
    )
    assert [(a, b, v) for a, b, v, _ in arena.arena_votes(store, "fresh")] == [
        (truth[battle["a"]], truth[battle["b"]], "b")
    ]
    with pytest.raises(Exception, match="not an admin"):
        newbie.predict("planted", api_name="/admin_leaderboard")
    boss = Client(process.url, auth=("boss", PASSWORD), verbose=False)
    report = json.loads(boss.predict("planted", api_name="/admin_leaderboard"))
    assert [row["model"] for row in report["rows"]] == ["S", "M", "W"]


@pytest.mark.slow
def test_json_api_battle_vote_and_admin_only_leaderboard(server):
    process, store = server
    url = f"{process.url}/api/v1"

    def login(name: str) -> dict[str, str]:
        token = httpx.post(f"{url}/login", json={"name": name, "password": PASSWORD}).json()["token"]
        return {"Authorization": f"Bearer {token}"}

    ann, boss = login("ann0"), login("boss")
    assert httpx.post(f"{url}/projects/planted/battles/next", headers=ann).json() == {
        "battle": None
    }  # all voted
    battle = httpx.post(f"{url}/projects/fresh/battles/next", headers=ann).json()["battle"]
    assert "model" not in json.dumps(battle)
    bad = httpx.post(f"{url}/battles/{battle['battle_id']}/vote", headers=ann, json={"vote": "both"})
    assert bad.status_code == 400 and "vote must be one of" in bad.json()["detail"]
    ok = httpx.post(f"{url}/battles/{battle['battle_id']}/vote", headers=ann, json={"vote": "tie"})
    assert ok.status_code == 200 and {ok.json()["model_a"], ok.json()["model_b"]} <= {"S", "M", "W"}
    again = httpx.post(f"{url}/battles/{battle['battle_id']}/vote", headers=ann, json={"vote": "tie"})
    assert again.json() == ok.json()
    assert arena.arena_progress(store, st.get_user(store, "ann0"), "fresh") == {"voted": 1, "battles": 6}
    assert httpx.post(f"{url}/battles/1/vote", json={"vote": "a"}).status_code == 401
    refused = httpx.get(f"{url}/admin/projects/planted/leaderboard", headers=ann)
    assert refused.status_code == 403 and "not an admin" in refused.json()["detail"]
    board = httpx.get(f"{url}/admin/projects/planted/leaderboard", headers=boss).json()
    assert [row["model"] for row in board["rows"]] == ["S", "M", "W"]
