"""The labeling store's tables (SQLAlchemy models) and its constants."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("annotator", "admin")
MAX_CANDIDATES = 8
SESSION_LIFETIME = timedelta(hours=12)  # the default; `align label serve --session-ttl-minutes` sets it
RENDER_MODES = ("text", "markdown")  # how candidates and prompts are shown (labeling_ui.display)
FEEDBACK_KINDS = ("ranking", "rating")  # rank all candidates of an item, or rate each on its own
RATING_SCALES = (2, 5)  # 2: thumbs (0 = down, 1 = up); 5: 1 (worst) to 5 (best)


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def default_db_url() -> str:
    home = Path(os.environ.get("ALIGN_HOME", Path.home() / ".cache" / "align"))
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'labeling.db'}"


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


class LoginThrottle(Base):
    """Failed logins of one account or one client address (``scope``), and the lock they led to.

    ``failures`` counts the failures since the last success, unlock or quiet window; ``locks`` how many
    locks came in a row (each lasts twice the one before). Kept in the database, so a lock holds across
    restarts and for every server process.
    """

    __tablename__ = "login_throttle"
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # "account" or "address"
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locks: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    guidelines: Mapped[str] = mapped_column(Text, default="")
    annotations_per_item: Mapped[int] = mapped_column(Integer)
    render: Mapped[str] = mapped_column(String(16), default="text", server_default="text")
    feedback: Mapped[str] = mapped_column(String(16), default="ranking", server_default="ranking")
    rating_scale: Mapped[int | None] = mapped_column(Integer, nullable=True)  # rating projects: 2 or 5
    rating_threshold: Mapped[int | None] = mapped_column(Integer, nullable=True)  # rating >= this is desirable
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
    text: Mapped[str] = mapped_column(Text)  # the answer; a trajectory's final assistant message (what Edit changes)
    source: Mapped[str] = mapped_column(String(256), default="")  # model name; never shown
    # a trajectory candidate's whole conversation after the prompt ({role, content} messages, tool calls and
    # tool results included), exactly as imported; None for a text candidate
    messages: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # an annotator's correction of an answer (``corrects_id``) or own new answer (no ``corrects_id``): never
    # shown to other annotators, nor ranked or rated; exported as correction over original, and for SFT
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    corrects_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"), nullable=True)


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


class Rating(Base):
    """``scores`` maps candidate id (as a string) to the annotator's rating of it, on the project's scale."""

    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    scores: Mapped[dict[str, int]] = mapped_column(JSON)
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


