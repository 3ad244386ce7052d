"""The database engine: SQLite tuning (WAL, BEGIN IMMEDIATE), missing-column upgrades, transactions, the audit log's writer."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import JSON, DateTime, bindparam, create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from alignment.errors import AlignError
from labeling_ui.store.schema import (
    SESSION_LIFETIME,
    Base,
    default_db_url,
    now,
)


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


# Columns added since a database could have been created: (table, column, its SQL type and default).
# Each is nullable or has a default, so ``ALTER TABLE ... ADD COLUMN`` upgrades SQLite and PostgreSQL alike.
ADDED_COLUMNS = (
    ("items", "prompt_messages", "JSON"),
    ("projects", "render", "VARCHAR(16) DEFAULT 'text' NOT NULL"),
    ("projects", "feedback", "VARCHAR(16) DEFAULT 'ranking' NOT NULL"),
    ("projects", "rating_scale", "INTEGER"),
    ("projects", "rating_threshold", "INTEGER"),
    ("candidates", "author_id", "INTEGER"),
    ("candidates", "corrects_id", "INTEGER"),
    ("candidates", "messages", "JSON"),
)


def _add_missing_columns(engine: Engine) -> None:
    """Add the columns of ``ADDED_COLUMNS`` an older database lacks, so it keeps working (new tables
    come from ``create_all``)."""
    from sqlalchemy import inspect

    inspector = inspect(engine)
    present = {table: {c["name"] for c in inspector.get_columns(table)} for table, _, _ in ADDED_COLUMNS}
    with engine.begin() as connection:
        for table, column, sql_type in ADDED_COLUMNS:
            if column not in present[table]:
                connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


class SecuritySettings(BaseModel):
    """Session lifetime and login throttling (docs/labeling.md, "Logins and sessions")."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    session_ttl: timedelta = Field(SESSION_LIFETIME, description="How long a JSON API token or page login lasts.")
    lock_after: int = Field(5, ge=1, description="Failed logins in a row that lock an account.")
    lock_after_per_address: int = Field(20, ge=1, description="Failed logins that lock a client address.")
    lock_time: timedelta = Field(timedelta(minutes=5), description="The first lock; each further one doubles.")
    max_lock_time: timedelta = Field(timedelta(hours=1), description="The longest lock.")
    failure_window: timedelta = Field(
        timedelta(minutes=15), description="Failures older than this (with no lock since) are forgotten."
    )

    @field_validator("session_ttl", "lock_time", "max_lock_time", "failure_window")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value


class SessionCache:
    """Known API sessions of this process (token hash -> (user, expiry)), the ``size`` most recent."""

    def __init__(self, size: int = 10_000) -> None:
        self.size, self._entries, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, token_hash: str) -> Any:
        with self._lock:
            entry = self._entries.get(token_hash)
            if entry is not None:
                self._entries.move_to_end(token_hash)
            return entry

    def put(self, token_hash: str, entry: Any) -> None:
        with self._lock:
            self._entries[token_hash] = entry
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


class Store:
    """A database handle; the schema is created (and an older one upgraded) on first use."""

    def __init__(self, url: str | None = None, security: SecuritySettings | None = None) -> None:
        self.url = url or default_db_url()
        self.security = security or SecuritySettings()
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
        self.sessions = SessionCache()

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Session]:
        """One transaction; ``write=False`` for reads (on SQLite a deferred, lock-free BEGIN)."""
        lock = self._write_lock if write and self.is_sqlite else nullcontext()
        begin = "IMMEDIATE" if write else "DEFERRED"
        with lock, self.engine.connect() as connection:
            connection = connection.execution_options(sqlite_begin=begin)
            with Session(bind=connection, expire_on_commit=False) as session, session.begin():
                yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """One write transaction on a plain connection, for the hot paths (claim, submit) that run
        prepared SQL (``text``) and skip the ORM's per-statement work; same lock and BEGIN as
        :meth:`transaction`."""
        lock = self._write_lock if self.is_sqlite else nullcontext()
        with lock, self.engine.connect() as connection, connection.execution_options(
            sqlite_begin="IMMEDIATE"
        ).begin():
            yield connection

    def close(self) -> None:
        self.engine.dispose()


AUDIT_INSERT = text(
    "INSERT INTO audit (at, user_name, action, detail) VALUES (:at, :user_name, :action, :detail)"
).bindparams(bindparam("at", type_=DateTime), bindparam("detail", type_=JSON))


def audit(session: Session | Connection, user_name: str, action: str, **detail: Any) -> None:
    """One audit entry, inserted now (a plain INSERT, cheaper than an ORM object flushed at commit)."""
    connection = session.connection() if isinstance(session, Session) else session
    connection.execute(AUDIT_INSERT, {"at": now(), "user_name": user_name, "action": action, "detail": detail})


