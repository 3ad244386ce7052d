"""The annotation task: atomic claims, rankings, releases, expiry."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, StrictInt, ValidationError, field_validator
from sqlalchemy import (
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignment.errors import AlignError
from labeling_ui.store.engine import Store, audit
from labeling_ui.store.items import get_project
from labeling_ui.store.schema import (
    Assignment,
    Candidate,
    Item,
    Project,
    Ranking,
    User,
    now,
)


class Task(BaseModel):
    """What an annotator sees: candidates in their own shuffled order, without model names."""

    assignment_id: int
    project: str
    guidelines: str
    prompt: str
    candidates: list[dict[str, Any]]  # {"id": int, "text": str}
    render: str = "text"  # the project's display mode: "text" (as written) or "markdown"


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
        render=project.render,
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


def parse_ranking(raw: Any) -> RankingInput:
    """A ranking from a dict or a JSON text, ``{"ranks": {...}}`` or the bare ``{id: rank}`` mapping."""
    try:
        if isinstance(raw, str):
            raw = json.loads(raw)
    except json.JSONDecodeError as error:
        raise AlignError(f"malformed ranking: not JSON ({error})") from error
    try:
        return RankingInput.model_validate(
            {"ranks": raw} if isinstance(raw, dict) and "ranks" not in raw else raw
        )
    except ValidationError as error:
        raise InvalidInput.from_validation("malformed ranking", error) from error


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


