"""The running server: Gradio API through gradio_client, the JSON API, and who may do what."""

from __future__ import annotations

import json

import httpx
import psutil
import pytest
from gradio_client import Client

from labeling_ui import store as st
from labeling_ui.load import ServerProcess

pytestmark = pytest.mark.slow
PASSWORD = "password123"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("app")
    db_url = f"sqlite:///{workdir / 'label.db'}"
    store = st.Store(db_url)
    st.add_user(store, "boss", PASSWORD, "admin")
    for name in ("ann", "bea", "cid"):
        st.add_user(store, name, PASSWORD)
    items = [
        {"id": f"q{i}", "prompt": f"Question {i}?", "candidates": [f"best {i}", f"middle {i}", f"worst {i}"]}
        for i in range(4)
    ]
    st.import_items(store, "demo", items, annotations_per_item=2, guidelines="Prefer the best.")
    with ServerProcess(db_url, log_path=workdir / "server.log") as process:
        yield process, store
    store.close()


def client(server, name: str | None) -> Client:
    process, _ = server
    return Client(process.url, auth=(name, PASSWORD) if name else None, verbose=False)


def stored_rankings(store: st.Store, name: str) -> list[dict[int, int]]:
    return [ranks for item in st.ranked_items(store, "demo", name) for ranks in item.rankings.values()]


def best_first(task: dict) -> dict[int, int]:
    return {c["id"]: 1 + ["best", "middle", "worst"].index(c["text"].split()[0]) for c in task["candidates"]}


def test_server_listens_on_loopback_only(server):
    process, _ = server
    addresses = {
        c.laddr.ip for c in psutil.Process(process.process.pid).net_connections() if c.status == "LISTEN"
    }
    assert addresses == {"127.0.0.1"}


def test_annotator_ranks_through_gradio_client(server):
    _, store = server
    ann = client(server, "ann")
    task = json.loads(ann.predict("demo", api_name="/claim"))
    assert task["guidelines"] == "Prefer the best." and len(task["candidates"]) == 3
    ranks = best_first(task)
    assert (
        json.loads(ann.predict(task["assignment_id"], json.dumps(ranks), api_name="/submit"))["ranking_id"]
        > 0
    )
    assert stored_rankings(store, "ann") == [ranks]
    assert json.loads(ann.predict("demo", api_name="/my_progress"))["ranked"] == 1


def test_bad_ranking_is_rejected_with_a_message_and_not_stored(server):
    _, store = server
    bea = client(server, "bea")
    task = json.loads(bea.predict("demo", api_name="/claim"))
    first = task["candidates"][0]["id"]
    with pytest.raises(Exception, match="missing candidates"):
        bea.predict(task["assignment_id"], json.dumps({first: 1}), api_name="/submit")
    with pytest.raises(Exception, match="malformed ranking"):
        bea.predict(task["assignment_id"], "{1: first}", api_name="/submit")
    as_bools = {c["id"]: True for c in task["candidates"]}  # strict: true is not rank 1
    with pytest.raises(Exception, match=rf"ranks\.{first}: Input should be a valid integer"):
        bea.predict(task["assignment_id"], json.dumps(as_bools), api_name="/submit")
    assert stored_rankings(store, "bea") == []
    bea.predict(task["assignment_id"], "not for me", api_name="/skip")


def test_requests_without_login_are_refused(server):
    process, _ = server
    with pytest.raises(Exception, match="(?i)login|credentials"):
        client(server, None).predict("demo", api_name="/claim")
    gradio_call = httpx.post(f"{process.url}/gradio_api/call/claim", json={"data": ["demo"]})
    assert gradio_call.status_code == 401
    assert httpx.get(f"{process.url}/config").status_code == 401
    assert httpx.post(f"{process.url}/api/v1/projects/demo/next").status_code == 401
    assert (
        httpx.post(
            f"{process.url}/api/v1/login", json={"name": "ann", "password": "wrong-password"}
        ).status_code
        == 401
    )
    with pytest.raises(Exception, match="(?i)login|credentials|incorrect"):
        Client(process.url, auth=("ann", "wrong-password"), verbose=False)


@pytest.mark.parametrize(
    ("api_name", "args"),
    [
        ("/admin_export", ("demo", "all")),
        ("/admin_rankings", ("demo", "ann")),
        ("/admin_progress", ("demo",)),
        ("/admin_add_user", ("mallory", "password123", "admin")),
    ],
)
def test_annotator_cannot_call_admin_functions_in_gradio(server, api_name, args):
    _, store = server
    with pytest.raises(Exception, match="not an admin"):
        client(server, "cid").predict(*args, api_name=api_name)
    assert "mallory" not in [user["name"] for user in st.list_users(store)]


def token(server, name: str) -> dict[str, str]:
    process, _ = server
    response = httpx.post(f"{process.url}/api/v1/login", json={"name": name, "password": PASSWORD})
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/projects/demo/export"),
        ("GET", "/admin/projects/demo/rankings?annotator=ann"),
        ("GET", "/admin/users"),
        ("POST", "/admin/users"),
        ("GET", "/admin/audit"),
        ("GET", "/admin/projects/demo/progress"),
    ],
)
def test_annotator_cannot_call_admin_functions_in_json_api(server, method, path):
    process, _ = server
    body = {"name": "mallory", "password": "password123", "role": "admin"} if method == "POST" else None
    response = httpx.request(method, f"{process.url}/api/v1{path}", headers=token(server, "cid"), json=body)
    assert response.status_code == 403 and "not an admin" in response.json()["detail"]


def test_json_api_flow_flag_submit_and_other_annotators_task(server):
    process, store = server
    url, cid, ann = f"{process.url}/api/v1", token(server, "cid"), token(server, "ann")
    task = httpx.post(f"{url}/projects/demo/next", headers=cid).json()["task"]
    refused = httpx.post(
        f"{url}/tasks/{task['assignment_id']}/submit", headers=ann, json={"ranks": best_first(task)}
    )
    assert refused.status_code == 400 and "not yours" in refused.json()["detail"]
    no_reason = httpx.post(f"{url}/tasks/{task['assignment_id']}/flag", headers=cid, json={"reason": ""})
    assert no_reason.status_code == 400 and "say why" in no_reason.json()["detail"]
    assert (
        httpx.post(
            f"{url}/tasks/{task['assignment_id']}/flag", headers=cid, json={"reason": "typo"}
        ).status_code
        == 200
    )
    task = httpx.post(f"{url}/projects/demo/next", headers=cid).json()["task"]
    incomplete = httpx.post(f"{url}/tasks/{task['assignment_id']}/submit", headers=cid, json={"rank": {}})
    assert incomplete.status_code == 400 and "rank for every candidate" in incomplete.json()["detail"]
    ok = httpx.post(
        f"{url}/tasks/{task['assignment_id']}/submit", headers=cid, json={"ranks": best_first(task)}
    )
    assert ok.status_code == 200
    assert httpx.get(f"{url}/projects/demo/me", headers=cid).json() == {
        "ranked": 1,
        "skipped": 0,
        "flagged": 1,
        "items": 4,
    }
    assert st.flagged_items(store, "demo")[0]["reason"] == "typo"


def test_admin_sees_progress_agreement_rankings_and_exports(server):
    process, _ = server
    boss = client(server, "boss")
    for name in ("ann", "bea"):  # make sure two annotators ranked the same item
        annotator = client(server, name)
        while (task := json.loads(annotator.predict("demo", api_name="/claim"))) is not None:
            annotator.predict(task["assignment_id"], json.dumps(best_first(task)), api_name="/submit")
    report = json.loads(boss.predict("demo", api_name="/admin_progress"))
    assert report["annotators"]["ann"]["submitted"] >= 2
    assert report["agreement"]["alpha_ordinal"] == pytest.approx(1.0)  # everyone ranks best > middle > worst
    assert all(pair["tau"] == 1.0 for pair in report["agreement"]["kendall_tau"])
    ann_rankings = json.loads(boss.predict("demo", "ann", api_name="/admin_rankings"))
    assert ann_rankings and all(set(item["rankings"]) == {"ann"} for item in ann_rankings)
    rows = [
        json.loads(line) for line in boss.predict("demo", "consensus", api_name="/admin_export").splitlines()
    ]
    assert rows and all(
        r["chosen"].split()[0] in ("best", "middle") and set(r) == {"prompt", "chosen", "rejected"}
        for r in rows
    )
    audit = httpx.get(f"{process.url}/api/v1/admin/audit", headers=token(server, "boss")).json()
    assert {"login", "login_failed", "claim", "submit", "skip", "flag", "export"} <= {
        entry["action"] for entry in audit
    }
