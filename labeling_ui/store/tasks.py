"""The annotation task: atomic claims, rankings, releases, expiry."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, StrictInt, StrictStr, ValidationError, field_validator
from sqlalchemy import JSON, DateTime, Integer, Text, bindparam, func, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignment.errors import AlignError
from labeling_ui.store.engine import Store, audit
from labeling_ui.store.schema import (
    Assignment,
    Candidate,
    Item,
    User,
    now,
)
from labeling_ui.store.trajectories import with_final_answer


class Task(BaseModel):
    """What an annotator sees: candidates in their own shuffled order, without model names."""

    assignment_id: int
    project: str
    guidelines: str
    prompt: str
    candidates: list[dict[str, Any]]  # {"id": int, "text": str}; a trajectory also "messages" (text: its final answer)
    render: str = "text"  # the project's display mode: "text" (as written) or "markdown"
    feedback: str = "ranking"  # "ranking": rank every candidate; "rating": rate each one
    rating_scale: int | None = None  # rating projects: 2 (thumbs: 0 down, 1 up) or 5 (1 to 5)
    # the annotator's own corrections so far, when the open task is shown again: {"id": its candidate id,
    # "corrects": the candidate it rewrites (None: an answer of their own), "text"}; never anyone else's
    corrections: list[dict[str, Any]] = []


# The hot paths (claim, submit) run these prepared statements on a plain connection: the same SQL on
# SQLite and PostgreSQL, no ORM objects, no expression building per request.
_PROJECT = text(
    "SELECT id, name, guidelines, annotations_per_item, render, feedback, rating_scale FROM projects WHERE name = :name"
)
_OPEN_ASSIGNMENT = text(
    "SELECT a.id, a.item_id FROM assignments a JOIN items i ON i.id = a.item_id"
    " WHERE i.project_id = :project AND a.user_id = :user AND a.status = 'active' LIMIT 1"
)
_CLAIMABLE = (
    "SELECT free.id FROM items free WHERE free.project_id = :project AND free.slots_taken < :m"
    " AND free.id NOT IN (SELECT item_id FROM assignments WHERE user_id = :user)"
)
_TAKE_SLOT = (  # the fullest claimable item; {lock}: FOR UPDATE SKIP LOCKED on PostgreSQL
    "UPDATE items SET slots_taken = slots_taken + 1"
    f" WHERE id = ({_CLAIMABLE} ORDER BY free.slots_taken DESC, free.id LIMIT 1{{lock}})"
    " AND slots_taken < :m RETURNING id"
)
_TAKE_SLOT_SQLITE = text(_TAKE_SLOT.format(lock=""))  # one writer at a time: nothing to skip
_TAKE_SLOT_POSTGRESQL = text(_TAKE_SLOT.format(lock=" FOR UPDATE SKIP LOCKED"))
_ANY_CLAIMABLE = text(_CLAIMABLE + " LIMIT 1")
_INSERT_ASSIGNMENT = text(
    "INSERT INTO assignments (item_id, user_id, status, reason, created_at)"
    " VALUES (:item, :user, 'active', '', :at) RETURNING id"
).bindparams(bindparam("at", type_=DateTime))
_TASK_TEXTS = (  # the item's candidates, then the annotator's own corrections of them
    text(
        "SELECT i.prompt, c.id, c.text, c.messages, c.author_id, c.corrects_id FROM items i"
        " JOIN candidates c ON c.item_id = i.id"
        " WHERE i.id = :item AND (c.author_id IS NULL OR c.author_id = :user) ORDER BY c.position"
    ).columns(prompt=Text, id=Integer, text=Text, messages=JSON, author_id=Integer, corrects_id=Integer)
)
_CLOSE_SUBMITTED = text(
    "UPDATE assignments SET status = 'submitted', finished_at = :at"
    " WHERE id = :assignment AND user_id = :user AND status = 'active' RETURNING item_id"
).bindparams(bindparam("at", type_=DateTime))
_ASSIGNMENT_STATE = text("SELECT user_id, status FROM assignments WHERE id = :assignment")
_CANDIDATE_IDS = text("SELECT id FROM candidates WHERE item_id = :item AND author_id IS NULL")
_FEEDBACK = text(
    "SELECT p.feedback, p.rating_scale FROM projects p JOIN items i ON i.project_id = p.id WHERE i.id = :item"
)
_INSERT_RANKING = text(
    "INSERT INTO rankings (assignment_id, item_id, user_id, ranks, created_at)"
    " VALUES (:assignment, :item, :user, :ranks, :at) RETURNING id"
).bindparams(bindparam("ranks", type_=JSON), bindparam("at", type_=DateTime))
_INSERT_RATING = text(
    "INSERT INTO ratings (assignment_id, item_id, user_id, scores, created_at)"
    " VALUES (:assignment, :item, :user, :scores, :at) RETURNING id"
).bindparams(bindparam("scores", type_=JSON), bindparam("at", type_=DateTime))


def _task(connection: Connection, assignment_id: int, item_id: int, user_id: int, project: Any) -> Task:
    rows = connection.execute(_TASK_TEXTS, {"item": item_id, "user": user_id}).all()
    candidates = [{"id": row.id, "text": row.text, **({"messages": row.messages} if row.messages else {})}
                  for row in rows if row.author_id is None]
    random.Random(f"{user_id}:{item_id}").shuffle(candidates)
    return Task(
        assignment_id=assignment_id,
        project=project.name,
        guidelines=project.guidelines,
        prompt=rows[0].prompt,
        candidates=candidates,
        render=project.render,
        feedback=project.feedback,
        rating_scale=project.rating_scale,
        corrections=[{"id": row.id, "corrects": row.corrects_id, "text": row.text}
                     for row in rows if row.author_id is not None],
    )


def claim_next(store: Store, user: User, project_name: str, *, attempts: int = 20) -> Task | None:
    """The annotator's open task in the project, or a newly claimed one; None when nothing is left.

    One write transaction. The slot is taken by ``UPDATE items SET slots_taken = slots_taken + 1
    WHERE id = (the fullest claimable item) AND slots_taken < M``: only one of two racing annotators
    can take the last slot. On PostgreSQL the inner select is ``FOR UPDATE SKIP LOCKED``, so racing
    claims take different items instead of queueing on one row (SQLite has one writer at a time).
    """
    take_slot = _TAKE_SLOT_SQLITE if store.is_sqlite else _TAKE_SLOT_POSTGRESQL
    for _ in range(attempts):
        try:
            with store.write_connection() as connection:
                project = connection.execute(_PROJECT, {"name": project_name}).first()
                if project is None:
                    raise AlignError(f"no project named {project_name!r}")
                keys = {"project": project.id, "user": user.id, "m": project.annotations_per_item}
                open_assignment = connection.execute(_OPEN_ASSIGNMENT, keys).first()
                if open_assignment is not None:
                    return _task(connection, open_assignment.id, open_assignment.item_id, user.id, project)
                item_id = connection.execute(take_slot, keys).scalar()
                if item_id is None:
                    if connection.execute(_ANY_CLAIMABLE, keys).first() is None:
                        return None
                    continue  # every claimable item is being claimed by others right now: look again
                assignment_id = connection.execute(
                    _INSERT_ASSIGNMENT, {"item": item_id, "user": user.id, "at": now()}
                ).scalar_one()
                audit(connection, user.name, "claim", project=project.name, item_id=item_id)
                return _task(connection, assignment_id, item_id, user.id, project)
        except IntegrityError:
            continue  # the same annotator claimed in two tabs at once: try again
    return None


class InvalidInput(AlignError):
    """Input of the wrong type or shape (the JSON API answers 422); ``fields`` names the fields at fault."""

    def __init__(self, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields

    @classmethod
    def from_validation(cls, what: str, error: ValidationError) -> InvalidInput:
        problems = [
            (".".join(str(part) for part in e["loc"]) or "the whole input", e["msg"], e.get("input"))
            for e in error.errors()
        ]
        text = "; ".join(f"{field}: {message} (got {value!r})" for field, message, value in problems)
        return cls(f"{what}: {text}", [field for field, _, _ in problems])


class RankingInput(BaseModel):
    """A ranking of every candidate: candidate id -> rank (1 is best; equal ranks are ties).

    Ranks are strict integers: ``true``, ``"1"`` and ``1.0`` are refused, never read as 1.
    """

    ranks: dict[int, StrictInt]

    @field_validator("ranks")
    @classmethod
    def _ranks_positive(cls, value: dict[int, int]) -> dict[int, int]:
        if not value:
            raise ValueError("the ranking is empty")
        if any(rank < 1 for rank in value.values()):
            raise ValueError("ranks start at 1 (best)")
        return value


class RatingsInput(BaseModel):
    """A rating of every candidate: candidate id -> rating on the project's scale (thumbs: 0 down, 1 up).

    Ratings are strict integers: ``true``, ``"1"`` and ``1.0`` are refused, never read as 1.
    """

    ratings: dict[int, StrictInt]

    @field_validator("ratings")
    @classmethod
    def _not_empty(cls, value: dict[int, int]) -> dict[int, int]:
        if not value:
            raise ValueError("the ratings are empty")
        return value


def _parse(raw: Any, model: type[BaseModel], field: str, what: str) -> Any:
    """``model`` from a dict or a JSON text, ``{field: {...}}`` or the bare ``{id: value}`` mapping."""
    try:
        if isinstance(raw, str):
            raw = json.loads(raw)
    except json.JSONDecodeError as error:
        raise AlignError(f"malformed {what}: not JSON ({error})") from error
    try:
        return model.model_validate({field: raw} if isinstance(raw, dict) and field not in raw else raw)
    except ValidationError as error:
        raise InvalidInput.from_validation(f"malformed {what}", error) from error


def parse_ranking(raw: Any) -> RankingInput:
    """A ranking from a dict or a JSON text, ``{"ranks": {...}}`` or the bare ``{id: rank}`` mapping."""
    return _parse(raw, RankingInput, "ranks", "ranking")


def parse_ratings(raw: Any) -> RatingsInput:
    """Ratings from a dict or a JSON text, ``{"ratings": {...}}`` or the bare ``{id: rating}`` mapping."""
    return _parse(raw, RatingsInput, "ratings", "ratings")


def _own_active_assignment(session: Session, user: User, assignment_id: int) -> Assignment:
    assignment = session.get(Assignment, assignment_id)
    if assignment is None or assignment.user_id != user.id:
        raise AlignError(f"task {assignment_id} is not yours")
    if assignment.status != "active":
        raise AlignError(f"task {assignment_id} is already {assignment.status}")
    return assignment


def _close_for_submit(connection: Connection, keys: dict[str, Any], feedback: str) -> tuple[int, Any]:
    """Close the annotator's active assignment as submitted; its item id and the project's feedback settings.

    Refused (and, by the caller's transaction, rolled back) when the task is not the annotator's, no
    longer active, or its project collects the other kind of feedback.
    """
    item_id = connection.execute(_CLOSE_SUBMITTED, keys).scalar()
    if item_id is None:
        state = connection.execute(_ASSIGNMENT_STATE, keys).first()
        if state is None or state.user_id != keys["user"]:
            raise AlignError(f"task {keys['assignment']} is not yours")
        raise AlignError(f"task {keys['assignment']} is already {state.status}")
    project = connection.execute(_FEEDBACK, {"item": item_id}).one()
    if project.feedback != feedback:
        send = "submit_ratings (POST .../ratings)" if project.feedback == "rating" else "submit_ranking (POST .../submit)"
        raise AlignError(f"task {keys['assignment']} asks for {project.feedback}s, not {feedback}s: use {send}")
    return item_id, project


def _check_complete(connection: Connection, item_id: int, given: set[int], what: str, each: str) -> set[int]:
    """The item's candidate ids; AlignError unless ``given`` names each exactly once."""
    candidate_ids = set(connection.execute(_CANDIDATE_IDS, {"item": item_id}).scalars())
    if given != candidate_ids:
        missing, extra = sorted(candidate_ids - given), sorted(given - candidate_ids)
        raise AlignError(
            f"incomplete or wrong {what}: every candidate needs a {each}"
            + (f"; missing candidates {missing}" if missing else "")
            + (f"; unknown candidates {extra}" if extra else "")
        )
    return candidate_ids


def submit_ranking(store: Store, user: User, assignment_id: int, ranking: RankingInput | dict | str) -> int:
    """Store a complete ranking for the annotator's open task; returns the ranking id.

    One write transaction: close the assignment (only if it is the annotator's and still active), check
    the ranks against the item's candidates (a wrong ranking rolls everything back), insert the ranking.
    """
    if not isinstance(ranking, RankingInput):
        ranking = parse_ranking(ranking)
    with store.write_connection() as connection:
        keys = {"assignment": assignment_id, "user": user.id, "at": now()}
        item_id, _ = _close_for_submit(connection, keys, "ranking")
        candidate_ids = _check_complete(connection, item_id, set(ranking.ranks), "ranking", "rank")
        if max(ranking.ranks.values()) > len(candidate_ids):
            raise AlignError(f"ranks go from 1 to {len(candidate_ids)}")
        ranks = {str(k): v for k, v in ranking.ranks.items()}
        ranking_id = connection.execute(_INSERT_RANKING, {**keys, "item": item_id, "ranks": ranks}).scalar_one()
        audit(connection, user.name, "submit", assignment_id=assignment_id, item_id=item_id)
        return ranking_id


def submit_ratings(store: Store, user: User, assignment_id: int, ratings: RatingsInput | dict | str) -> int:
    """Store a rating of every candidate of the annotator's open task (a rating project); returns the rating id.

    One write transaction, as :func:`submit_ranking`: close the assignment, check every candidate is
    rated on the project's scale (thumbs: 0 or 1; else 1 to 5), insert; anything wrong rolls it all back.
    """
    if not isinstance(ratings, RatingsInput):
        ratings = parse_ratings(ratings)
    with store.write_connection() as connection:
        keys = {"assignment": assignment_id, "user": user.id, "at": now()}
        item_id, project = _close_for_submit(connection, keys, "rating")
        _check_complete(connection, item_id, set(ratings.ratings), "ratings", "rating")
        lowest, highest = (0, 1) if project.rating_scale == 2 else (1, project.rating_scale)
        wrong = {c: r for c, r in ratings.ratings.items() if not lowest <= r <= highest}
        if wrong:
            scale = "0 (thumbs down) or 1 (thumbs up)" if highest == 1 else f"from {lowest} to {highest}"
            raise AlignError(f"ratings are {scale}; got {wrong}")
        scores = {str(k): v for k, v in ratings.ratings.items()}
        rating_id = connection.execute(_INSERT_RATING, {**keys, "item": item_id, "scores": scores}).scalar_one()
        audit(connection, user.name, "rate", assignment_id=assignment_id, item_id=item_id)
        return rating_id


class CorrectionInput(BaseModel):
    """An annotator's rewrite of a candidate (``corrects``: its id) or new answer (``corrects``: None)."""

    text: StrictStr
    corrects: StrictInt | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the correction is empty")
        return value


def _own_correction(session: Session, assignment: Assignment, corrects: int | None) -> Candidate | None:
    """The annotator's correction of candidate ``corrects`` (None: their own answer) on the assignment's item."""
    return session.scalar(select(Candidate).where(
        Candidate.item_id == assignment.item_id, Candidate.author_id == assignment.user_id,
        Candidate.corrects_id.is_(None) if corrects is None else Candidate.corrects_id == corrects))


def submit_correction(store: Store, user: User, assignment_id: int, text: str, corrects: int | None = None) -> int:
    """Store the annotator's correction of a candidate of their open task, or (``corrects=None``) a new
    answer of their own; returns its candidate id. Call it before the task's ranking or ratings.

    The text is kept exactly as written (indentation, blank lines). A trajectory's correction is the
    same trajectory with its final assistant message replaced by ``text``. A second correction of the same
    candidate (or a second new answer) by the same annotator replaces the first. Corrections are never shown to other
    annotators; only those of submitted tasks are exported.
    """
    try:
        given = CorrectionInput(text=text, corrects=corrects)
    except ValidationError as error:
        raise InvalidInput.from_validation("malformed correction", error) from error
    with store.transaction() as session:
        assignment = _own_active_assignment(session, user, assignment_id)
        original = None
        if given.corrects is not None:
            original = session.get(Candidate, given.corrects)
            if original is None or original.item_id != assignment.item_id or original.author_id is not None:
                raise AlignError(f"candidate {given.corrects} is not an answer of task {assignment_id}")
            if original.text == given.text:
                raise AlignError("the correction is the same as the answer: change it, or leave it out")
        existing = _own_correction(session, assignment, given.corrects)
        if existing is None:
            last = session.scalar(select(func.max(Candidate.position)).where(Candidate.item_id == assignment.item_id))
            existing = Candidate(item_id=assignment.item_id, position=(last or 0) + 1, source="",
                                 author_id=user.id, corrects_id=given.corrects)
            session.add(existing)
        existing.text = given.text
        trajectory = original.messages if original is not None else None
        existing.messages = with_final_answer(trajectory, given.text) if trajectory else None
        session.flush()
        audit(session, user.name, "correct", assignment_id=assignment_id, item_id=assignment.item_id,
              corrects=given.corrects, candidate_id=existing.id)
        return existing.id


def withdraw_correction(store: Store, user: User, assignment_id: int, corrects: int | None = None) -> bool:
    """Take back the annotator's correction of candidate ``corrects`` (None: their own answer) on their open
    task, before its ranking or ratings; whether there was one to take back."""
    with store.transaction() as session:
        assignment = _own_active_assignment(session, user, assignment_id)
        existing = _own_correction(session, assignment, corrects)
        if existing is None:
            return False
        audit(session, user.name, "withdraw_correction", assignment_id=assignment_id, item_id=assignment.item_id,
              corrects=corrects, candidate_id=existing.id)
        session.delete(existing)
        return True


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


