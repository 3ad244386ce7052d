"""Reading back: progress, submitted rankings, flagged items, the audit log."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.orm import aliased

from labeling_ui.store.engine import Store
from labeling_ui.store.items import get_project
from labeling_ui.store.schema import (
    Assignment,
    AuditEntry,
    Candidate,
    Item,
    Ranking,
    Rating,
    User,
)


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
    """Per project: items, annotations needed and done; per annotator: counts by status, and corrections
    (rewritten or new answers, of submitted tasks)."""
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
        annotators.setdefault(name, dict.fromkeys(("submitted", "active", "skipped", "flagged", "expired",
                                                    "corrections"), 0))[status] = count
    for correction in corrections(store, project_name):
        annotators[correction.annotator]["corrections"] += 1
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


class ItemView(BaseModel):
    """One item with its candidates, for export and agreement."""

    item_id: int
    external_id: str
    prompt: str
    prompt_messages: list[dict[str, Any]] | None = None  # the prompt as imported, when it was a chat
    candidates: dict[int, str]  # candidate id -> its text (a trajectory's: its final assistant message)
    trajectories: dict[int, list[dict[str, str]]] = {}  # candidate id -> messages, for trajectory candidates

    def answer(self, candidate_id: int) -> str | list[dict[str, str]]:
        """A candidate as imported: its trajectory (messages), or its text."""
        return self.trajectories.get(candidate_id) or self.candidates[candidate_id]


class RankedItem(ItemView):
    """An item with every submitted ranking."""

    rankings: dict[str, dict[int, int]]  # annotator -> candidate id -> rank


class RatedItem(ItemView):
    """An item of a rating project with every submitted rating."""

    ratings: dict[str, dict[int, int]]  # annotator -> candidate id -> rating


def _annotated_items(store: Store, project_name: str, table: type[Ranking] | type[Rating], annotator: str | None
                     ) -> list[tuple[ItemView, dict[str, dict[int, int]]]]:
    """The project's items with submissions in ``table`` (rankings or ratings): (item, annotator -> values)."""
    values = Ranking.ranks if table is Ranking else Rating.scores
    with store.transaction(write=False) as session:
        project = get_project(session, project_name)
        query = (
            select(table.item_id, values, User.name)
            .join(User, User.id == table.user_id)
            .join(Item, Item.id == table.item_id)
            .where(Item.project_id == project.id)
            .order_by(table.item_id, User.name)
        )
        if annotator is not None:
            query = query.where(User.name == annotator)
        by_item: dict[int, dict[str, dict[int, int]]] = {}
        for item_id, given, name in session.execute(query).all():
            by_item.setdefault(item_id, {})[name] = {int(k): v for k, v in given.items()}
        result = []
        for item in session.scalars(select(Item).where(Item.id.in_(by_item)).order_by(Item.id)):
            candidates = session.scalars(
                select(Candidate)
                .where(Candidate.item_id == item.id, Candidate.author_id.is_(None))
                .order_by(Candidate.position)
            ).all()
            view = ItemView(item_id=item.id, external_id=item.external_id, prompt=item.prompt,
                            prompt_messages=item.prompt_messages, candidates={c.id: c.text for c in candidates},
                            trajectories={c.id: c.messages for c in candidates if c.messages})
            result.append((view, by_item[item.id]))
    return result


def ranked_items(store: Store, project_name: str, annotator: str | None = None) -> list[RankedItem]:
    return [RankedItem(**view.model_dump(), rankings=given)
            for view, given in _annotated_items(store, project_name, Ranking, annotator)]


def rated_items(store: Store, project_name: str, annotator: str | None = None) -> list[RatedItem]:
    """A rating project's items with every submitted rating (or one annotator's)."""
    return [RatedItem(**view.model_dump(), ratings=given)
            for view, given in _annotated_items(store, project_name, Rating, annotator)]


class Correction(ItemView):
    """An annotator's correction of a candidate (``original``: its text) or new answer (``original``: None),
    from a submitted task; ``candidates`` holds the item's original answers. A trajectory's correction has
    ``messages`` (the trajectory with ``text`` as its final assistant message) and ``original_messages``."""

    annotator: str
    text: str
    original: str | None = None
    messages: list[dict[str, str]] | None = None
    original_messages: list[dict[str, str]] | None = None

    def corrected(self) -> str | list[dict[str, str]]:
        """The correction as the answer it replaces was imported: a trajectory, or text."""
        return self.messages or self.text

    def replaced(self) -> str | list[dict[str, str]] | None:
        """The answer it corrects: a trajectory, its text, or None for a new answer."""
        return self.original_messages or self.original


def corrections(store: Store, project_name: str) -> list[Correction]:
    """Every correction and new answer of the project's annotators, from tasks they submitted."""
    original = aliased(Candidate)
    with store.transaction(write=False) as session:
        project = get_project(session, project_name)
        rows = session.execute(
            select(Candidate, original.text, original.messages, User.name, Item)
            .join(Item, Item.id == Candidate.item_id)
            .join(User, User.id == Candidate.author_id)
            .join(Assignment, (Assignment.item_id == Item.id) & (Assignment.user_id == Candidate.author_id))
            .outerjoin(original, original.id == Candidate.corrects_id)
            .where(Item.project_id == project.id, Assignment.status == "submitted")
            .order_by(Item.id, User.name, Candidate.id)
        ).all()
        return [
            Correction(item_id=item.id, external_id=item.external_id, prompt=item.prompt,
                       prompt_messages=item.prompt_messages, candidates={}, annotator=name,
                       text=candidate.text, original=original_text, messages=candidate.messages,
                       original_messages=original_messages)
            for candidate, original_text, original_messages, name, item in rows
        ]


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
