"""The arena: battles between two models' answers to one prompt, votes, and the votes for the leaderboard.

A battle pairs two candidates of one item whose models differ. An annotator sees the two answers as A
and B, in an order fixed per (annotator, battle) and without model names; the vote is stored relative to
that order, and only then are the names revealed. ``(battle, annotator)`` is unique, so a vote is stored
at most once; sending the same vote again returns the stored one.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime
from itertools import combinations

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignment.errors import AlignError
from labeling_ui.store import (
    VOTES,
    Battle,
    Candidate,
    Item,
    Store,
    User,
    Vote,
    audit,
    get_project,
)


def model_of(source: str) -> str:
    """The model a candidate counts for; `align label generate` names sample k of checkpoint c ``c#k``."""
    return source.partition("#")[0]


def _candidates(session: Session, project_id: int) -> list[tuple[int, int, str]]:
    """(candidate id, item id, model name or "") of every candidate in the project, by item."""
    return list(
        session.execute(
            select(Candidate.id, Candidate.item_id, Candidate.source)
            .join(Item, Item.id == Candidate.item_id)
            .where(Item.project_id == project_id)
            .order_by(Candidate.item_id, Candidate.id)
        ).tuples()
    )


def create_battles(store: Store, project_name: str, *, by: str = "cli") -> int:
    """Pair every two candidates of each item whose models differ; pairs already there are kept.

    Returns how many battles were added. Candidates without a model name take no part.
    """
    with store.transaction() as session:
        project = get_project(session, project_name)
        existing = {
            tuple(pair)
            for pair in session.execute(
                select(Battle.candidate_a_id, Battle.candidate_b_id)
                .join(Item, Item.id == Battle.item_id)
                .where(Item.project_id == project.id)
            )
        }
        by_item: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for candidate_id, item_id, source in _candidates(session, project.id):
            if source:
                by_item[item_id].append((candidate_id, model_of(source)))
        added = 0
        for item_id, candidates in by_item.items():
            for (first, first_model), (second, second_model) in combinations(candidates, 2):
                if first_model != second_model and (first, second) not in existing:
                    session.add(Battle(item_id=item_id, candidate_a_id=first, candidate_b_id=second))
                    added += 1
        if not added and not existing:
            raise AlignError(
                f"project {project_name!r} has no item with candidates from two different models: "
                'import candidates as {"text": ..., "model": ...} or use `align label generate --arena`'
            )
        audit(session, by, "arena_battles", project=project_name, added=added)
    return added


class BattleView(BaseModel):
    """What an annotator sees before voting: two answers, no model names."""

    battle_id: int
    project: str
    guidelines: str
    prompt: str
    a: str
    b: str
    render: str = "text"  # the project's display mode: "text" (as written) or "markdown"
    a_messages: list[dict[str, str]] | None = None  # a trajectory answer's messages (``a``: its final message)
    b_messages: list[dict[str, str]] | None = None


class Reveal(BaseModel):
    """What an annotator sees after voting: the vote and which model was A and which B."""

    battle_id: int
    vote: str
    model_a: str
    model_b: str


def _shown(session: Session, battle: Battle, user_id: int) -> tuple[Candidate, Candidate]:
    """The battle's candidates as (A, B) for this annotator: a coin flip fixed per (annotator, battle)."""
    first = session.get(Candidate, battle.candidate_a_id)
    second = session.get(Candidate, battle.candidate_b_id)
    swap = random.Random(f"arena:{user_id}:{battle.id}").random() < 0.5
    return (second, first) if swap else (first, second)


def next_battle(store: Store, user: User, project_name: str) -> BattleView | None:
    """A battle of the project the annotator has not voted on, among the least-voted; None when none is left."""
    with store.transaction(write=False) as session:
        project = get_project(session, project_name)
        voted = select(Vote.battle_id).where(Vote.user_id == user.id)
        counts = select(Vote.battle_id, func.count().label("votes")).group_by(Vote.battle_id).subquery()
        least_voted = list(
            session.scalars(
                select(Battle.id)
                .join(Item, Item.id == Battle.item_id)
                .outerjoin(counts, counts.c.battle_id == Battle.id)
                .where(Item.project_id == project.id, Battle.id.not_in(voted))
                .order_by(func.coalesce(counts.c.votes, 0), Battle.id)
                .limit(16)
            )
        )
        if not least_voted:
            return None
        battle = session.get(Battle, random.choice(least_voted))  # spread annotators over battles
        first, second = _shown(session, battle, user.id)
        item = session.get(Item, battle.item_id)
        return BattleView(
            battle_id=battle.id,
            project=project.name,
            guidelines=project.guidelines,
            prompt=item.prompt,
            a=first.text,
            b=second.text,
            render=project.render,
            a_messages=first.messages,
            b_messages=second.messages,
        )


def cast_vote(store: Store, user: User, battle_id: int, vote: str) -> Reveal:
    """Store a vote (a, b, tie or both_bad, relative to the order shown) and reveal the models."""
    if vote not in VOTES:
        raise AlignError(f"vote must be one of {', '.join(VOTES)}, not {vote!r}")
    for _ in range(2):  # on PostgreSQL a vote sent twice at the same moment fails once on the unique key
        try:
            with store.transaction() as session:
                battle = session.get(Battle, battle_id)
                if battle is None:
                    raise AlignError(f"no battle {battle_id}")
                first, second = _shown(session, battle, user.id)
                stored = session.scalar(
                    select(Vote).where(Vote.battle_id == battle.id, Vote.user_id == user.id)
                )
                if stored is None:
                    session.add(
                        Vote(battle_id=battle.id, user_id=user.id, left_candidate_id=first.id, vote=vote)
                    )
                    audit(session, user.name, "vote", battle_id=battle.id, vote=vote)
                elif stored.vote != vote:
                    raise AlignError(f"you already voted {stored.vote!r} on battle {battle.id}")
                return Reveal(
                    battle_id=battle.id,
                    vote=vote,
                    model_a=model_of(first.source),
                    model_b=model_of(second.source),
                )
        except IntegrityError:
            continue
    raise AlignError(f"could not store the vote on battle {battle_id}; send it again")


def arena_progress(store: Store, user: User, project_name: str) -> dict[str, int]:
    """How many of the project's battles this annotator has voted on."""
    with store.transaction(write=False) as session:
        project = get_project(session, project_name)
        battles = select(Battle.id).join(Item, Item.id == Battle.item_id).where(Item.project_id == project.id)
        total = session.scalar(select(func.count()).select_from(battles.subquery())) or 0
        voted = session.scalar(
            select(func.count()).select_from(Vote).where(Vote.user_id == user.id, Vote.battle_id.in_(battles))
        )
    return {"voted": voted or 0, "battles": total}


def arena_votes(store: Store, project_name: str) -> list[tuple[str, str, str, datetime]]:
    """Every vote of the project as (model shown as A, model shown as B, vote, time), oldest first."""
    with store.transaction(write=False) as session:
        project = get_project(session, project_name)
        rows = session.execute(
            select(Vote, Battle)
            .join(Battle, Battle.id == Vote.battle_id)
            .join(Item, Item.id == Battle.item_id)
            .where(Item.project_id == project.id)
            .order_by(Vote.created_at, Vote.id)
        ).all()
        sources = {candidate_id: source for candidate_id, _, source in _candidates(session, project.id)}
    votes = []
    for vote, battle in rows:
        right = (
            battle.candidate_b_id
            if vote.left_candidate_id == battle.candidate_a_id
            else battle.candidate_a_id
        )
        votes.append(
            (model_of(sources[vote.left_candidate_id]), model_of(sources[right]), vote.vote, vote.created_at)
        )
    return votes
