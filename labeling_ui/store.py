"""The labeling data layer: SQLAlchemy models and the functions every front end calls.

Nothing here knows about Gradio or HTTP. Every write runs in one transaction. The claim of a
task slot is an atomic conditional update (``slots_taken < M``), and ``(item, annotator)`` is
unique in assignments and rankings, so M is never exceeded and nobody gets an item twice, on
SQLite (WAL, ``BEGIN IMMEDIATE``) and on PostgreSQL alike.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from alignment.errors import AlignError

ROLES = ("annotator", "admin")
MAX_CANDIDATES = 8
SESSION_LIFETIME = timedelta(hours=12)


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def default_db_url() -> str:
    home = Path(os.environ.get("ALIGN_HOME", Path.home() / ".cache" / "align"))
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'labeling.db'}"


# ----------------------------------------------------------------------------- models


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class ApiSession(Base):
    """A login token of the JSON API; only its SHA-256 is stored."""

    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    guidelines: Mapped[str] = mapped_column(Text, default="")
    annotations_per_item: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("project_id", "external_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(256))
    prompt: Mapped[str] = mapped_column(Text)  # what annotators read
    prompt_messages: Mapped[list | None] = mapped_column(JSON, nullable=True)  # a chat prompt's messages, exported as such
    slots_taken: Mapped[int] = mapped_column(Integer, default=0)


class Candidate(Base):
    __tablename__ = "candidates"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(256), default="")  # model name; never shown


class Assignment(Base):
    """One annotator's slot on one item: active, then submitted, skipped, flagged or expired."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Ranking(Base):
    """``ranks`` maps candidate id (as a string) to rank; 1 is best, equal ranks are ties."""

    __tablename__ = "rankings"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    ranks: Mapped[dict[str, int]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


VOTES = ("a", "b", "tie", "both_bad")


class Battle(Base):
    """Two candidates of one item from different models (``candidate_a_id < candidate_b_id``)."""

    __tablename__ = "battles"
    __table_args__ = (UniqueConstraint("candidate_a_id", "candidate_b_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    candidate_a_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    candidate_b_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))


class Vote(Base):
    """One annotator's arena vote; ``vote`` is relative to the order shown (``left_candidate_id`` was A)."""

    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("battle_id", "user_id"),
        CheckConstraint("vote IN ('a', 'b', 'tie', 'both_bad')", name="vote_value"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    battle_id: Mapped[int] = mapped_column(ForeignKey("battles.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    left_candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    vote: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now, index=True)


class AuditEntry(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=now, index=True)
    user_name: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# ----------------------------------------------------------------------------- engine


def _configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` so writers queue instead of failing."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):  # noqa: ANN001
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):  # noqa: ANN001
        connection.exec_driver_sql(
            f"BEGIN {connection.get_execution_options().get('sqlite_begin', 'IMMEDIATE')}"
        )


def _add_missing_columns(engine: Engine) -> None:
    """Columns added since a database was created (nullable ones only), so older databases keep working."""
    from sqlalchemy import inspect, text

    present = {column["name"] for column in inspect(engine).get_columns("items")}
    if "prompt_messages" not in present:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE items ADD COLUMN prompt_messages JSON"))


class Store:
    """A database handle; the schema is created on first use."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_db_url()
        if self.url.startswith("postgresql://"):
            self.url = "postgresql+psycopg://" + self.url.removeprefix("postgresql://")
        try:
            if self.url.startswith("sqlite") and self.url.rstrip("/") in ("sqlite:", "sqlite:///:memory:"):
                self.engine = create_engine(  # one in-memory database shared by all threads (tests, trials)
                    self.url, connect_args={"check_same_thread": False}, poolclass=StaticPool
                )
                _configure_sqlite(self.engine)
            elif self.url.startswith("sqlite"):
                self.engine = create_engine(
                    self.url, connect_args={"timeout": 30}, pool_size=20, max_overflow=20
                )
                _configure_sqlite(self.engine)
            else:
                self.engine = create_engine(self.url, pool_size=20, max_overflow=20, pool_pre_ping=True)
            Base.metadata.create_all(self.engine)
            _add_missing_columns(self.engine)
        except ModuleNotFoundError as error:
            raise AlignError(
                f"database driver missing for {url!r}: {error}; install psycopg[binary]"
            ) from error
        self.is_sqlite = self.url.startswith("sqlite")
        # SQLite has one writer at a time; queueing writers of this process on a lock is fair and
        # fast, where SQLite's own busy handler polls with growing sleeps (seconds of tail latency).
        self._write_lock = threading.Lock()

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Session]:
        """One transaction; ``write=False`` for reads (on SQLite a deferred, lock-free BEGIN)."""
        lock = self._write_lock if write and self.is_sqlite else nullcontext()
        begin = "IMMEDIATE" if write else "DEFERRED"
        with lock, self.engine.connect() as connection:
            connection = connection.execution_options(sqlite_begin=begin)
            with Session(bind=connection, expire_on_commit=False) as session, session.begin():
                yield session

    def close(self) -> None:
        self.engine.dispose()


def audit(session: Session, user_name: str, action: str, **detail: Any) -> None:
    session.add(AuditEntry(user_name=user_name, action=action, detail=detail))


# ----------------------------------------------------------------------------- users and logins


def hash_password(password: str, *, salt: bytes | None = None, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """scrypt (RFC 7914) with a per-user random salt; stored as ``scrypt$n$r$p$salt$hash``."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    encode = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"scrypt${n}${r}${p}${encode(salt)}${encode(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def add_user(store: Store, name: str, password: str, role: str = "annotator", *, by: str = "cli") -> None:
    if role not in ROLES:
        raise AlignError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise AlignError(f"user name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    if len(password) < 8:
        raise AlignError("password must have at least 8 characters")
    try:
        with store.transaction() as session:
            session.add(User(name=name, role=role, password_hash=hash_password(password)))
            audit(session, by, "user_add", name=name, role=role)
    except IntegrityError as error:
        raise AlignError(f"user {name!r} already exists") from error


def list_users(store: Store) -> list[dict[str, Any]]:
    with store.transaction(write=False) as session:
        users = session.scalars(select(User).order_by(User.name)).all()
        return [{"name": u.name, "role": u.role, "created_at": u.created_at.isoformat()} for u in users]


def authenticate(store: Store, name: str, password: str) -> User | None:
    """The user if the password is right, else None; every attempt is audited."""
    with store.transaction() as session:
        user = session.scalar(select(User).where(User.name == name))
        ok = user is not None and check_password(password, user.password_hash)
        audit(session, name, "login" if ok else "login_failed")
        return user if ok else None


def get_user(store: Store, name: str) -> User:
    with store.transaction(write=False) as session:
        user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise AlignError(f"no user named {name!r}")
    return user


def create_api_session(store: Store, user: User) -> str:
    token = secrets.token_urlsafe(32)
    with store.transaction() as session:
        session.add(
            ApiSession(
                token_hash=hashlib.sha256(token.encode()).hexdigest(),
                user_id=user.id,
                expires_at=now() + SESSION_LIFETIME,
            )
        )
    return token


def user_for_token(store: Store, token: str) -> User | None:
    with store.transaction(write=False) as session:
        api_session = session.get(ApiSession, hashlib.sha256(token.encode()).hexdigest())
        if api_session is None or api_session.expires_at < now():
            return None
        return session.get(User, api_session.user_id)


def require_admin(user: User) -> None:
    if user.role != "admin":
        raise PermissionError(f"user {user.name!r} is not an admin")


# ----------------------------------------------------------------------------- projects and items


class ItemRecord(BaseModel):
    """One line of an import file."""

    id: str | None = None
    prompt: str = Field(min_length=1)
    messages: list[dict[str, Any]] | None = Field(
        None, description="The prompt as chat messages, when it is a chat: exported in this form (TRL's conversational format).")
    candidates: list[str | dict[str, str]]

    @field_validator("candidates")
    @classmethod
    def _count(cls, value: list) -> list:
        if not 2 <= len(value) <= MAX_CANDIDATES:
            raise ValueError(f"need 2 to {MAX_CANDIDATES} candidates, got {len(value)}")
        for candidate in value:
            if isinstance(candidate, dict) and not candidate.get("text"):
                raise ValueError("a candidate object needs a non-empty 'text'")
        return value


def import_items(
    store: Store,
    project_name: str,
    records: list[dict[str, Any]],
    *,
    annotations_per_item: int | None = None,
    guidelines: str | None = None,
    by: str = "cli",
) -> dict[str, int]:
    """Create the project if needed and add items; items whose id already exists are skipped."""
    parsed: list[ItemRecord] = []
    for line_number, record in enumerate(records, start=1):
        try:
            parsed.append(ItemRecord.model_validate(record))
        except ValidationError as error:
            problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise AlignError(f"record {line_number}: {problem}") from error
    with store.transaction() as session:
        project = session.scalar(select(Project).where(Project.name == project_name))
        if project is None:
            project = Project(
                name=project_name, guidelines=guidelines or "", annotations_per_item=annotations_per_item or 3
            )
            session.add(project)
            session.flush()
        else:
            if annotations_per_item is not None:
                project.annotations_per_item = annotations_per_item
            if guidelines is not None:
                project.guidelines = guidelines
        if project.annotations_per_item < 1:
            raise AlignError("annotations per item must be at least 1")
        existing = set(session.scalars(select(Item.external_id).where(Item.project_id == project.id)))
        added = 0
        for line_number, record in enumerate(parsed, start=1):
            external_id = record.id or f"line-{line_number}"
            if external_id in existing:
                continue
            existing.add(external_id)
            item = Item(project_id=project.id, external_id=external_id, prompt=record.prompt,
                        prompt_messages=record.messages, slots_taken=0)
            session.add(item)
            session.flush()
            for position, candidate in enumerate(record.candidates):
                text, source = (
                    (candidate, "")
                    if isinstance(candidate, str)
                    else (candidate["text"], candidate.get("model", ""))
                )
                session.add(Candidate(item_id=item.id, position=position, text=text, source=source))
            added += 1
        audit(session, by, "import", project=project_name, added=added, skipped=len(parsed) - added)
    return {"added": added, "skipped": len(parsed) - added}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise AlignError(f"no such file: {path}")
    records = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise AlignError(f"{path}:{line_number}: not valid JSON ({error.msg})") from error
    return records


def list_projects(store: Store, kind: str | None = None) -> list[str]:
    """Project names; ``kind="arena"``: only projects with battles, ``kind="ranking"``: only those without."""
    query = select(Project.name).order_by(Project.name)
    if kind is not None:
        arenas = select(Item.project_id).join(Battle, Battle.item_id == Item.id)
        query = query.where(Project.id.in_(arenas) if kind == "arena" else Project.id.not_in(arenas))
    with store.transaction(write=False) as session:
        return list(session.scalars(query))


def get_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise AlignError(f"no project named {name!r}")
    return project


# ----------------------------------------------------------------------------- the annotation task


class Task(BaseModel):
    """What an annotator sees: candidates in their own shuffled order, without model names."""

    assignment_id: int
    project: str
    guidelines: str
    prompt: str
    candidates: list[dict[str, Any]]  # {"id": int, "text": str}


def _task(session: Session, assignment: Assignment, project: Project) -> Task:
    item = session.get(Item, assignment.item_id)
    candidates = list(
        session.scalars(select(Candidate).where(Candidate.item_id == item.id).order_by(Candidate.position))
    )
    random.Random(f"{assignment.user_id}:{item.id}").shuffle(candidates)
    return Task(
        assignment_id=assignment.id,
        project=project.name,
        guidelines=project.guidelines,
        prompt=item.prompt,
        candidates=[{"id": c.id, "text": c.text} for c in candidates],
    )


def claim_next(store: Store, user: User, project_name: str, *, attempts: int = 20) -> Task | None:
    """The annotator's open task in the project, or a newly claimed one; None when nothing is left.

    The slot is taken by ``UPDATE items SET slots_taken = slots_taken + 1 WHERE slots_taken < M``:
    only one of two racing annotators can take the last slot.
    """
    for _ in range(attempts):
        try:
            with store.transaction() as session:
                project = get_project(session, project_name)
                open_assignment = session.scalar(
                    select(Assignment)
                    .join(Item, Item.id == Assignment.item_id)
                    .where(
                        Item.project_id == project.id,
                        Assignment.user_id == user.id,
                        Assignment.status == "active",
                    )
                )
                if open_assignment is not None:
                    return _task(session, open_assignment, project)
                seen = select(Assignment.item_id).where(Assignment.user_id == user.id)
                candidates = list(
                    session.scalars(
                        select(Item.id)
                        .where(
                            Item.project_id == project.id,
                            Item.slots_taken < project.annotations_per_item,
                            Item.id.not_in(seen),
                        )
                        .order_by(Item.slots_taken.desc(), Item.id)
                        .limit(16)
                    )
                )
                if not candidates:
                    return None
                random.shuffle(candidates)  # spread racing annotators over items
                for item_id in candidates:
                    taken = session.execute(
                        update(Item)
                        .where(Item.id == item_id, Item.slots_taken < project.annotations_per_item)
                        .values(slots_taken=Item.slots_taken + 1)
                    ).rowcount
                    if taken:
                        assignment = Assignment(item_id=item_id, user_id=user.id, status="active")
                        session.add(assignment)
                        session.flush()
                        audit(session, user.name, "claim", project=project.name, item_id=item_id)
                        return _task(session, assignment, project)
        except IntegrityError:
            continue  # the same annotator claimed in two tabs at once: try again
    return None


class RankingInput(BaseModel):
    """A ranking of every candidate: candidate id -> rank (1 is best; equal ranks are ties)."""

    ranks: dict[int, int]

    @field_validator("ranks")
    @classmethod
    def _ranks_positive(cls, value: dict[int, int]) -> dict[int, int]:
        if not value:
            raise ValueError("the ranking is empty")
        if any(rank < 1 for rank in value.values()):
            raise ValueError("ranks start at 1 (best)")
        return value


def parse_ranking(raw: Any) -> RankingInput:
    try:
        if isinstance(raw, str):
            raw = json.loads(raw)
        return RankingInput.model_validate(
            {"ranks": raw} if isinstance(raw, dict) and "ranks" not in raw else raw
        )
    except (ValidationError, json.JSONDecodeError, TypeError) as error:
        raise AlignError(f"malformed ranking: {error}") from error


def _own_active_assignment(session: Session, user: User, assignment_id: int) -> Assignment:
    assignment = session.get(Assignment, assignment_id)
    if assignment is None or assignment.user_id != user.id:
        raise AlignError(f"task {assignment_id} is not yours")
    if assignment.status != "active":
        raise AlignError(f"task {assignment_id} is already {assignment.status}")
    return assignment


def submit_ranking(store: Store, user: User, assignment_id: int, ranking: RankingInput | dict | str) -> int:
    """Store a complete ranking for the annotator's open task; returns the ranking id."""
    if not isinstance(ranking, RankingInput):
        ranking = parse_ranking(ranking)
    with store.transaction() as session:
        assignment = _own_active_assignment(session, user, assignment_id)
        candidate_ids = set(
            session.scalars(select(Candidate.id).where(Candidate.item_id == assignment.item_id))
        )
        given = set(ranking.ranks)
        if given != candidate_ids:
            missing, extra = sorted(candidate_ids - given), sorted(given - candidate_ids)
            raise AlignError(
                "incomplete or wrong ranking: every candidate needs a rank"
                + (f"; missing candidates {missing}" if missing else "")
                + (f"; unknown candidates {extra}" if extra else "")
            )
        if max(ranking.ranks.values()) > len(candidate_ids):
            raise AlignError(f"ranks go from 1 to {len(candidate_ids)}")
        done = session.execute(
            update(Assignment)
            .where(Assignment.id == assignment.id, Assignment.status == "active")
            .values(status="submitted", finished_at=now())
        ).rowcount
        if not done:
            raise AlignError(f"task {assignment_id} was closed meanwhile")
        row = Ranking(
            assignment_id=assignment.id,
            item_id=assignment.item_id,
            user_id=user.id,
            ranks={str(k): v for k, v in ranking.ranks.items()},
        )
        session.add(row)
        session.flush()
        audit(session, user.name, "submit", assignment_id=assignment.id, item_id=assignment.item_id)
        return row.id


def release(store: Store, user: User, assignment_id: int, status: str, reason: str) -> None:
    """Skip or flag the open task: the slot goes back to the pool, the annotator never sees it again."""
    if status not in ("skipped", "flagged"):
        raise AlignError(f"unknown status {status!r}")
    reason = (reason or "").strip()
    if status == "flagged" and not reason:
        raise AlignError("say why you flag this item")
    with store.transaction() as session:
        assignment = _own_active_assignment(session, user, assignment_id)
        closed = session.execute(
            update(Assignment)
            .where(Assignment.id == assignment.id, Assignment.status == "active")
            .values(status=status, reason=reason[:2000], finished_at=now())
        ).rowcount
        if not closed:
            raise AlignError(f"task {assignment_id} was closed meanwhile")
        session.execute(
            update(Item).where(Item.id == assignment.item_id).values(slots_taken=Item.slots_taken - 1)
        )
        action = {"skipped": "skip", "flagged": "flag"}[status]
        audit(
            session,
            user.name,
            action,
            assignment_id=assignment.id,
            item_id=assignment.item_id,
            reason=reason[:2000],
        )


def expire_stale(store: Store, max_age: timedelta) -> int:
    """Give back slots of tasks left open longer than ``max_age``; returns how many."""
    cutoff = now() - max_age
    expired = 0
    with store.transaction() as session:
        for assignment in session.scalars(
            select(Assignment).where(Assignment.status == "active", Assignment.created_at < cutoff)
        ).all():
            closed = session.execute(
                update(Assignment)
                .where(Assignment.id == assignment.id, Assignment.status == "active")
                .values(status="expired", finished_at=now())
            ).rowcount
            if closed:
                session.execute(
                    update(Item).where(Item.id == assignment.item_id).values(slots_taken=Item.slots_taken - 1)
                )
                expired += 1
        if expired:
            audit(session, "system", "expire", count=expired)
    return expired


# ----------------------------------------------------------------------------- reading back


def user_progress(store: Store, user: User, project_name: str) -> dict[str, int]:
    with store.transaction(write=False) as session:
        project = get_project(session, project_name)
        counts = dict(
            session.execute(
                select(Assignment.status, func.count())
                .join(Item, Item.id == Assignment.item_id)
                .where(Item.project_id == project.id, Assignment.user_id == user.id)
                .group_by(Assignment.status)
            ).all()
        )
        total = session.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id))
    return {
        "ranked": counts.get("submitted", 0),
        "skipped": counts.get("skipped", 0),
        "flagged": counts.get("flagged", 0),
        "items": total or 0,
    }


def project_progress(store: Store, project_name: str) -> dict[str, Any]:
    """Per project: items, annotations needed and done; per annotator: counts by status."""
    with store.transaction(write=False) as session:
        project = get_project(session, project_name)
        items = (
            session.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id)) or 0
        )
        per_user = session.execute(
            select(User.name, Assignment.status, func.count())
            .join(Assignment, Assignment.user_id == User.id)
            .join(Item, Item.id == Assignment.item_id)
            .where(Item.project_id == project.id)
            .group_by(User.name, Assignment.status)
        ).all()
    annotators: dict[str, dict[str, int]] = {}
    for name, status, count in per_user:
        annotators.setdefault(name, {"submitted": 0, "active": 0, "skipped": 0, "flagged": 0, "expired": 0})[
            status
        ] = count
    done = sum(row["submitted"] for row in annotators.values())
    needed = items * project.annotations_per_item
    return {
        "project": project.name,
        "items": items,
        "annotations_per_item": project.annotations_per_item,
        "needed": needed,
        "done": done,
        "percent": round(100 * done / needed, 1) if needed else 0.0,
        "annotators": annotators,
    }


class RankedItem(BaseModel):
    """One item with its candidates and every submitted ranking, for export and agreement."""

    item_id: int
    external_id: str
    prompt: str
    prompt_messages: list[dict[str, Any]] | None = None  # the prompt as imported, when it was a chat
    candidates: dict[int, str]
    rankings: dict[str, dict[int, int]]  # annotator -> candidate id -> rank


def ranked_items(store: Store, project_name: str, annotator: str | None = None) -> list[RankedItem]:
    with store.transaction(write=False) as session:
        project = get_project(session, project_name)
        query = (
            select(Ranking, User.name)
            .join(User, User.id == Ranking.user_id)
            .join(Item, Item.id == Ranking.item_id)
            .where(Item.project_id == project.id)
            .order_by(Ranking.item_id, User.name)
        )
        if annotator is not None:
            query = query.where(User.name == annotator)
        by_item: dict[int, dict[str, dict[int, int]]] = {}
        for ranking, name in session.execute(query).all():
            by_item.setdefault(ranking.item_id, {})[name] = {int(k): v for k, v in ranking.ranks.items()}
        result = []
        for item in session.scalars(select(Item).where(Item.id.in_(by_item)).order_by(Item.id)):
            candidates = session.scalars(
                select(Candidate).where(Candidate.item_id == item.id).order_by(Candidate.position)
            )
            result.append(
                RankedItem(
                    item_id=item.id,
                    external_id=item.external_id,
                    prompt=item.prompt,
                    prompt_messages=item.prompt_messages,
                    candidates={c.id: c.text for c in candidates},
                    rankings=by_item[item.id],
                )
            )
    return result


def flagged_items(store: Store, project_name: str) -> list[dict[str, Any]]:
    with store.transaction(write=False) as session:
        project = get_project(session, project_name)
        rows = session.execute(
            select(Item.external_id, User.name, Assignment.reason, Assignment.finished_at)
            .join(Assignment, Assignment.item_id == Item.id)
            .join(User, User.id == Assignment.user_id)
            .where(Item.project_id == project.id, Assignment.status == "flagged")
            .order_by(Assignment.finished_at)
        ).all()
    return [{"item": r[0], "annotator": r[1], "reason": r[2], "at": r[3].isoformat()} for r in rows]


def audit_log(store: Store, limit: int = 200) -> list[dict[str, Any]]:
    with store.transaction(write=False) as session:
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)).all()
        return [
            {
                "at": e.at.isoformat(timespec="seconds"),
                "user": e.user_name,
                "action": e.action,
                "detail": json.dumps(e.detail),
            }
            for e in entries
        ]
