"""Logins throttled per account and per client address (state in the database), sessions that expire, and
ranks that must be integers: through the real app (FastAPI + Gradio) with Starlette's test client, on a real
SQLite database (and the store-level rules on PostgreSQL too, where it runs)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from labeling_ui import store as st
from labeling_ui.__main__ import main
from labeling_ui.app import create_app

PASSWORD = "password123"
SETTINGS = st.SecuritySettings(lock_after=3, lock_after_per_address=5, lock_time=timedelta(minutes=1))


@pytest.fixture
def db_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'label.db'}"
    store = st.Store(url)
    st.add_user(store, "boss", PASSWORD, "admin")
    for name in ("ann", "bea", "cid"):
        st.add_user(store, name, PASSWORD)
    st.import_items(
        store, "demo", [{"id": f"q{i}", "prompt": f"Q{i}?", "candidates": ["a", "b", "c"]} for i in range(3)]
    )
    store.close()
    return url


def app_client(db_url: str, settings: st.SecuritySettings = SETTINGS, address: str = "192.0.2.1") -> TestClient:
    """A fresh server process's worth of state (its own Store and app) on the shared database."""
    return TestClient(create_app(st.Store(db_url, settings)), client=(address, 50000))


def login(client: TestClient, name: str, password: str = PASSWORD):
    return client.post("/api/v1/login", json={"name": name, "password": password})


def actions(db_url: str, name: str) -> list[str]:
    return [entry["action"] for entry in reversed(st.audit_log(st.Store(db_url))) if entry["user"] == name]


def test_account_locks_after_failures_holds_across_restarts_and_workers_until_an_admin_unlocks(db_url):
    with app_client(db_url) as client:
        assert [login(client, "ann", "wrong-password").status_code for _ in range(2)] == [401, 401]
        third = login(client, "ann", "wrong-password")
        assert third.status_code == 429 and "account 'ann' is locked" in third.json()["detail"]
        refused = login(client, "ann")  # the right password, but locked: not even checked
        assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
        assert "align label users unlock ann" in refused.json()["detail"]
    # a restarted server, and a second worker beside it, read the same lock from the database
    with app_client(db_url) as restarted, app_client(db_url, address="192.0.2.2") as worker:
        assert login(restarted, "ann").status_code == 429
        assert login(worker, "ann").status_code == 429  # another address: the account lock still holds
        gradio_login = worker.post("/login", data={"username": "ann", "password": PASSWORD})  # the page's form
        assert gradio_login.status_code == 400 and "account 'ann' is locked" in gradio_login.json()["detail"]
        assert login(worker, "bea").status_code == 200  # other accounts are not affected
        admin = {"Authorization": f"Bearer {login(worker, 'boss').json()['token']}"}
        locks = worker.get("/api/v1/admin/locks", headers=admin).json()
        assert {"scope": "account", "key": "ann"}.items() <= next(r for r in locks if r["key"] == "ann").items()
        assert next(r for r in locks if r["key"] == "ann")["locked_until"] is not None
        annotator = {"Authorization": f"Bearer {login(worker, 'bea').json()['token']}"}
        assert worker.post("/api/v1/admin/unlock", headers=annotator, json={"name": "ann"}).status_code == 403
        assert worker.post("/api/v1/admin/unlock", headers=admin, json={"name": "ann"}).json() == {"cleared": 1}
        assert login(restarted, "ann").status_code == 200
    history = actions(db_url, "ann")
    assert history[:4] == ["login_failed", "login_failed", "login_locked", "login_failed"]
    assert history.count("login_refused") == 4 and history[-1] == "login"
    unlocked = [e for e in st.audit_log(st.Store(db_url)) if e["action"] == "unlock"]
    assert unlocked[0]["user"] == "boss" and "ann" in str(unlocked[0]["detail"])


def test_address_locks_after_failures_on_many_accounts_and_the_cli_unlocks_it(db_url, capsys):
    with app_client(db_url, address="198.51.100.7") as client:
        for name in ("nobody1", "nobody2", "nobody3", "nobody4"):
            assert login(client, name, "guess-guess").status_code == 401
        fifth = login(client, "nobody5", "guess-guess")
        assert fifth.status_code == 429 and "address 198.51.100.7 is locked" in fifth.json()["detail"]
        assert login(client, "cid").status_code == 429  # a right password from that address is refused too
        gradio_login = client.post("/login", data={"username": "cid", "password": PASSWORD})
        assert gradio_login.status_code == 400 and "address 198.51.100.7 is locked" in gradio_login.json()["detail"]
    with app_client(db_url, address="198.51.100.8") as elsewhere:
        assert login(elsewhere, "cid").status_code == 200
    assert main(["users", "locks", "--db", db_url]) == 0
    assert "address\t198.51.100.7" in capsys.readouterr().out
    assert main(["users", "unlock", "--address", "198.51.100.7", "--db", db_url]) == 0
    assert "unlocked address 198.51.100.7" in capsys.readouterr().out
    with app_client(db_url, address="198.51.100.7") as client:
        assert login(client, "cid").status_code == 200
    locked = [e for e in st.audit_log(st.Store(db_url)) if e["action"] == "login_locked"]
    assert [json.loads(e["detail"])["scope"] for e in locked] == ["address"]


def test_each_further_lock_lasts_twice_as_long_and_a_success_clears_the_count(db):
    db.security = st.SecuritySettings(lock_after=2, lock_time=timedelta(minutes=1), max_lock_time=timedelta(minutes=3))
    st.add_user(db, "ann", PASSWORD)

    def fail_until_locked() -> st.LoginLocked:
        assert st.authenticate(db, "ann", "wrong-password", "203.0.113.5") is None
        with pytest.raises(st.LoginLocked) as raised:
            st.authenticate(db, "ann", "wrong-password", "203.0.113.5")
        return raised.value

    def lock_ends() -> None:  # the lock ran out a moment ago (the clock moved on)
        with db.transaction() as session:
            session.execute(update(st.LoginThrottle).values(locked_until=st.now() - timedelta(seconds=1)))

    durations = []
    for _ in range(3):
        durations.append(fail_until_locked().retry_after)
        lock_ends()
    assert durations == [60, 120, 180]  # doubles, capped at max_lock_time
    assert st.authenticate(db, "ann", PASSWORD).name == "ann"  # lock over: the right password works
    assert st.authenticate(db, "ann", "wrong-password") is None  # and the count starts again
    assert st.authenticate(db, "ann", PASSWORD).name == "ann"
    assert st.authenticate(db, "ann", "wrong-password") is None
    with db.transaction() as session:
        row = session.get(st.LoginThrottle, ("account", "ann"))
        assert (row.failures, row.locked_until) == (1, None)


def test_expired_tokens_and_page_sessions_get_401_with_a_clear_message(db_url):
    short = st.SecuritySettings(session_ttl=timedelta(seconds=1))
    with app_client(db_url, short) as client:
        response = login(client, "ann")
        assert response.json()["expires_in"] == 1
        headers = {"Authorization": f"Bearer {response.json()['token']}"}
        assert client.get("/api/v1/projects", headers=headers).status_code == 200
        assert client.post("/login", data={"username": "ann", "password": PASSWORD}).status_code == 200
        assert client.get("/config").status_code == 200  # the page's cookie session
        time.sleep(1.2)
        expired = client.get("/api/v1/projects", headers=headers)
        assert expired.status_code == 401
        assert "session expired" in expired.json()["detail"] and "log in again" in expired.json()["detail"]
        assert client.get("/config").status_code == 401
        unknown = client.get("/api/v1/projects", headers={"Authorization": "Bearer not-a-token"})
        assert unknown.status_code == 401 and "log in first" in unknown.json()["detail"]
        fresh = {"Authorization": f"Bearer {login(client, 'ann').json()['token']}"}
        assert client.get("/api/v1/projects", headers=fresh).status_code == 200


@pytest.mark.parametrize("bad", [True, "1", 1.0, None], ids=["bool", "str", "float", "null"])
def test_ranks_must_be_integers_422_naming_the_field(db_url, bad):
    with app_client(db_url) as client:
        headers = {"Authorization": f"Bearer {login(client, 'ann').json()['token']}"}
        task = client.post("/api/v1/projects/demo/next", headers=headers).json()["task"]
        ids = [c["id"] for c in task["candidates"]]
        ranks = {str(ids[0]): bad, str(ids[1]): 2, str(ids[2]): 3}
        response = client.post(f"/api/v1/tasks/{task['assignment_id']}/submit", headers=headers, json={"ranks": ranks})
        assert response.status_code == 422
        assert response.json()["fields"] == [f"ranks.{ids[0]}"]
        assert f"ranks.{ids[0]}: Input should be a valid integer" in response.json()["detail"]
        store = st.Store(db_url)
        with store.transaction(write=False) as session:
            assert session.scalar(select(func.count()).select_from(st.Ranking)) == 0
        ok = {str(i): rank for i, rank in zip(ids, (1, 2, 3), strict=True)}
        assert client.post(f"/api/v1/tasks/{task['assignment_id']}/submit", headers=headers,
                           json={"ranks": ok}).status_code == 200
        assert st.ranked_items(store, "demo", "ann")[0].rankings["ann"] == dict(zip(ids, (1, 2, 3), strict=True))


def test_wrong_types_in_login_are_422_naming_the_field(db_url):
    with app_client(db_url) as client:
        response = client.post("/api/v1/login", json={"name": "ann", "password": 12345678})
        assert response.status_code == 422 and response.json()["fields"] == ["body.password"]
        assert "body.password" in response.json()["detail"]
