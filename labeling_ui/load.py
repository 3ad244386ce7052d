"""Load and crash checks of the labeling server over its JSON HTTP API (loopback only).

``run_load`` starts a server process on a fresh SQLite (or PostgreSQL) database, lets N annotators claim and submit
concurrently, optionally SIGKILLs and restarts the server midway, then checks the database: no
acknowledged submission lost, none duplicated, M respected. ``benchmarks/labeling_load.py`` and
the tests call the same code.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select

from labeling_ui import store as st

PASSWORD = "load-test-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_binaries() -> str | None:
    """``initdb`` of a local PostgreSQL (its ``pg_ctl`` beside it), or None when absent."""
    initdb = shutil.which("initdb") or "/usr/lib/postgresql/15/bin/initdb"
    return initdb if os.path.exists(initdb) else None


@contextmanager
def postgres_server(*, fsync: bool = True) -> Iterator[str]:
    """A throwaway PostgreSQL server on loopback (``initdb`` + ``pg_ctl``, trust auth, run as the
    ``postgres`` user when we are root); yields its URL without a database name, stops it after.

    ``fsync=False`` only for tests that do not measure anything: commits then skip the disk flush.
    """
    initdb = postgres_binaries()
    if initdb is None:
        raise RuntimeError("PostgreSQL needs initdb/pg_ctl (apt: postgresql)")
    root = Path(tempfile.mkdtemp(prefix="align-pg-"))  # pytest's tmp dirs are private to root
    data = root / "data"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    port = free_port()
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True
    )
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c max_connections=200"
    subprocess.run(
        [*as_postgres, pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"), "start", "-o",
         options + ("" if fsync else " -c fsync=off")],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str) -> str:
    """A new, empty database on the PostgreSQL server; returns its URL."""
    name = f"t{uuid.uuid4().hex[:12]}"
    admin = create_engine(
        server_url.replace("postgresql://", "postgresql+psycopg://") + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return f"{server_url}/{name}"


class ServerProcess:
    """``align label serve`` in a child process, bound to 127.0.0.1."""

    def __init__(self, db_url: str, port: int | None = None, log_path: Path | None = None) -> None:
        self.db_url, self.port, self.log_path = db_url, port or free_port(), log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> ServerProcess:
        env = {
            **os.environ,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
            ),
        }
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "labeling_ui", "serve", "--db", self.db_url, "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/api/v1/projects", timeout=2).status_code == 401:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def prepare(db_url: str, annotators: int, per_annotator: int, m: int, project: str = "load") -> list[str]:
    """A project with enough slots for every planned submission, and the annotator accounts."""
    store = st.Store(db_url)
    item_count = -(-annotators * per_annotator // m) + annotators  # spare items so nobody runs dry
    st.import_items(
        store,
        project,
        [
            {"id": f"q{i}", "prompt": f"question {i}", "candidates": [f"answer {i}.{j}" for j in range(4)]}
            for i in range(item_count)
        ],
        annotations_per_item=m,
    )
    names = [f"load{i:03d}" for i in range(annotators)]
    with store.transaction() as session:  # one hash for all: the KDF is not what we measure here
        password_hash = st.hash_password(PASSWORD)
        session.add_all(st.User(name=name, role="annotator", password_hash=password_hash) for name in names)
    store.close()
    return names


@dataclass
class LoadResult:
    acknowledged: list[tuple[str, int, int]] = field(
        default_factory=list
    )  # (annotator, assignment, ranking id)
    latencies: list[float] = field(default_factory=list)  # seconds, submits acknowledged on the first try
    errors: list[str] = field(default_factory=list)
    retried_after_crash: int = 0
    wall_seconds: float = 0.0

    def p(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


async def _call(
    client: httpx.AsyncClient, method: str, path: str, deadline: float, **kwargs
) -> httpx.Response:
    """Retry while the server is down (crash test); give up at the deadline."""
    while True:
        try:
            return await client.request(method, path, **kwargs)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _annotator(
    url: str, name: str, project: str, count: int, result: LoadResult, deadline: float, seed: int
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        token = (
            await _call(client, "POST", "/api/v1/login", deadline, json={"name": name, "password": PASSWORD})
        ).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        done = 0
        while done < count and time.monotonic() < deadline:
            response = await _call(
                client, "POST", f"/api/v1/projects/{project}/next", deadline, headers=headers
            )
            task = response.json()["task"]
            if task is None:
                result.errors.append(f"{name}: no task left after {done}")
                return
            ranks = {c["id"]: rng.randint(1, len(task["candidates"])) for c in task["candidates"]}
            path = f"/api/v1/tasks/{task['assignment_id']}/submit"
            started = time.perf_counter()
            try:
                response = await client.post(path, headers=headers, json={"ranks": ranks})
                elapsed = time.perf_counter() - started
            except httpx.TransportError:
                # No answer: not acknowledged. Submit again once the server is back; it is either
                # stored already ("already submitted") or stored now.
                result.retried_after_crash += 1
                response = await _call(client, "POST", path, deadline, headers=headers, json={"ranks": ranks})
                if response.status_code == 400 and "already submitted" in response.text:
                    done += 1
                    continue
                elapsed = None  # spans the restart: not a latency sample
            if response.status_code != 200:
                result.errors.append(f"{name}: {response.status_code} {response.text[:200]}")
                return
            result.acknowledged.append((name, task["assignment_id"], response.json()["ranking_id"]))
            if elapsed is not None:
                result.latencies.append(elapsed)
            done += 1


async def _drive(
    url: str,
    names: list[str],
    project: str,
    per_annotator: int,
    result: LoadResult,
    timeout: float,
    crash: tuple[ServerProcess, int] | None,
) -> None:
    deadline = time.monotonic() + timeout
    tasks = [
        asyncio.create_task(_annotator(url, name, project, per_annotator, result, deadline, seed))
        for seed, name in enumerate(names)
    ]
    if crash is not None:
        server, after = crash
        while len(result.acknowledged) < after and not all(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        server.kill()
        await asyncio.to_thread(server.start)
    await asyncio.gather(*tasks)


def run_load(
    workdir: Path,
    annotators: int,
    per_annotator: int,
    m: int = 3,
    *,
    kill_after: int | None = None,
    timeout: float = 300,
    db_url: str | None = None,
) -> tuple[LoadResult, dict[str, int]]:
    """Run the load (and crash, if ``kill_after`` acknowledged submissions) and verify the database.

    ``db_url``: an empty database (PostgreSQL: see :func:`create_database`); default a fresh SQLite
    file in ``workdir``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    db_url = db_url or f"sqlite:///{workdir / 'load.db'}"
    names = prepare(db_url, annotators, per_annotator, m)
    result = LoadResult()
    server = ServerProcess(db_url, log_path=workdir / "server.log").start()
    try:
        started = time.perf_counter()
        crash = (server, kill_after) if kill_after is not None else None
        asyncio.run(_drive(server.url, names, "load", per_annotator, result, timeout, crash))
        result.wall_seconds = time.perf_counter() - started
    finally:
        server.stop()
    return result, verify(db_url, result, m)


def verify(db_url: str, result: LoadResult, m: int) -> dict[str, int]:
    """Counts of lost, duplicated and over-M rankings (all should be 0), and of rankings stored."""
    store = st.Store(db_url)
    with store.transaction() as session:
        stored = {
            row.id: (row.assignment_id, row.item_id, row.user_id)
            for row in session.scalars(select(st.Ranking))
        }
        per_item = session.execute(
            select(st.Ranking.item_id, func.count(), func.count(st.Ranking.user_id.distinct())).group_by(
                st.Ranking.item_id
            )
        ).all()
        max_slots = session.scalar(select(func.max(st.Item.slots_taken))) or 0
    store.close()
    acked_ids = [ranking_id for _, _, ranking_id in result.acknowledged]
    lost = sum(
        1
        for _, assignment, ranking_id in result.acknowledged
        if stored.get(ranking_id, (None,))[0] != assignment
    )
    pairs = [(item, user) for _, item, user in stored.values()]
    duplicated = (len(acked_ids) - len(set(acked_ids))) + (len(pairs) - len(set(pairs)))
    over_m = sum(1 for _, count, distinct in per_item if count > m or distinct != count) + int(max_slots > m)
    return {
        "acknowledged": len(acked_ids),
        "stored": len(stored),
        "lost": lost,
        "duplicated": duplicated,
        "over_m": over_m,
        "errors": len(result.errors),
    }
