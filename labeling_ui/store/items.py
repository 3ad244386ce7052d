"""Projects and their items: validated imports (idempotent by item id)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, ValidationInfo, field_validator
from sqlalchemy import (
    select,
)
from sqlalchemy.orm import Session

from alignment.data import row_location
from alignment.errors import AlignError
from labeling_ui.store.engine import Store, audit
from labeling_ui.store.schema import (
    FEEDBACK_KINDS,
    MAX_CANDIDATES,
    RATING_SCALES,
    RENDER_MODES,
    Battle,
    Candidate,
    Item,
    Project,
)
from labeling_ui.store.trajectories import TrajectoryCandidate, final_answer


def _candidate_kind(value: Any) -> str | None:
    """Which form a candidate has: ``text`` (a string), ``trajectory`` (an object with ``messages``) or
    ``object`` (``{"text", "model"}``)."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "trajectory" if "messages" in value else "object"
    return None


CandidateRecord = Annotated[
    Annotated[str, Tag("text")] | Annotated[dict[str, str], Tag("object")]
    | Annotated[TrajectoryCandidate, Tag("trajectory")],
    Discriminator(_candidate_kind, custom_error_type="candidate",
                  custom_error_message='a candidate is a string, {"text", "model"} or {"messages", "model"}'),
]


class ItemRecord(BaseModel):
    """One line of an import file. A ranking needs two candidates or more, a rating one or more
    (validation context ``{"min_candidates": n}``; 2 without one). A candidate is text, ``{"text",
    "model"}``, or a trajectory ``{"messages": [{"role", "content"}, ...], "model"}``
    (labeling_ui.store.trajectories)."""

    id: str | None = None
    prompt: str = Field(min_length=1)
    messages: list[dict[str, Any]] | None = Field(
        None, description="The prompt as chat messages, when it is a chat: exported in this form (TRL's conversational format).")
    candidates: list[CandidateRecord]

    @field_validator("candidates")
    @classmethod
    def _count(cls, value: list, info: ValidationInfo) -> list:
        least = (info.context or {}).get("min_candidates", 2)
        if not least <= len(value) <= MAX_CANDIDATES:
            raise ValueError(f"need {least} to {MAX_CANDIDATES} candidates, got {len(value)}")
        for candidate in value:
            if isinstance(candidate, dict) and not candidate.get("text"):
                raise ValueError("a candidate object needs a non-empty 'text' (or 'messages': a trajectory)")
        return value


class FeedbackSettings(BaseModel):
    """What annotators give for an item: a ranking of its candidates, or a rating of each one."""

    feedback: str | None = None
    rating_scale: int | None = None
    rating_threshold: int | None = None

    def over(self, project: Project) -> FeedbackSettings:
        """These settings where given, the existing project's otherwise (its threshold only on the same scale)."""
        feedback = self.feedback or ("rating" if self.rating_scale or self.rating_threshold else project.feedback)
        same = feedback == project.feedback == "rating"
        scale = self.rating_scale or (project.rating_scale if same else None)
        threshold = self.rating_threshold
        if threshold is None and same and scale == project.rating_scale:
            threshold = project.rating_threshold
        return FeedbackSettings(feedback=feedback, rating_scale=scale, rating_threshold=threshold)

    def checked(self) -> FeedbackSettings:
        """These settings, completed (scale 5, threshold 4; thumbs: 1) and checked; AlignError if wrong."""
        if self.feedback is None and (self.rating_scale or self.rating_threshold is not None):
            return self.model_copy(update={"feedback": "rating"}).checked()
        if self.feedback is None:
            return FeedbackSettings(feedback="ranking")
        if self.feedback not in FEEDBACK_KINDS:
            raise AlignError(f"feedback must be one of {', '.join(FEEDBACK_KINDS)}, not {self.feedback!r}")
        if self.feedback == "ranking":
            return FeedbackSettings(feedback="ranking")
        scale = self.rating_scale or 5
        if scale not in RATING_SCALES:
            raise AlignError(f"rating scale must be 2 (thumbs) or 5 (1 to 5), not {scale!r}")
        threshold = self.rating_threshold if self.rating_threshold is not None else (1 if scale == 2 else 4)
        lowest = 0 if scale == 2 else 1
        if scale == 2 and threshold != 1 or not lowest < threshold <= scale:
            raise AlignError(f"rating threshold must be from {lowest + 1} to {scale} on scale {scale}, not {threshold}"
                             + (" (thumbs: 1, up)" if scale == 2 else ""))
        return FeedbackSettings(feedback="rating", rating_scale=scale, rating_threshold=threshold)


def _parse_records(records: list[dict[str, Any]], feedback: str, source: str | Path | None) -> list[ItemRecord]:
    """Every record validated; the first bad one stops with ``file:line`` (given the JSONL ``source``) or
    ``record N``."""
    context = {"min_candidates": 1 if feedback == "rating" else 2}
    parsed = []
    for index, record in enumerate(records):
        try:
            parsed.append(ItemRecord.model_validate(record, context=context))
        except ValidationError as error:
            problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                                for e in error.errors())
            where = row_location(source, index) if source is not None else f"record {index + 1}"
            raise AlignError(f"{where}: {problem}") from error
    return parsed


def _candidate_row(candidate: str | dict[str, str] | TrajectoryCandidate) -> dict[str, Any]:
    """A validated candidate as the columns it is stored in: text, source (model) and messages."""
    if isinstance(candidate, str):
        return {"text": candidate, "source": "", "messages": None}
    if isinstance(candidate, TrajectoryCandidate):
        messages = candidate.message_dicts()
        return {"text": final_answer(messages), "source": candidate.model, "messages": messages}
    return {"text": candidate["text"], "source": candidate.get("model", ""), "messages": None}


def _project_for_import(session: Session, name: str, settings: dict[str, Any], feedback: FeedbackSettings) -> Project:
    """The project, created with ``settings`` and ``feedback`` or updated with those not None.

    A project's feedback kind is fixed once it has items; the rating threshold can change (it only
    decides the export's labels).
    """
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(name=name, guidelines=settings["guidelines"] or "",
                          annotations_per_item=settings["annotations_per_item"] or 3,
                          render=settings["render"] or "text", **feedback.checked().model_dump())
        session.add(project)
        session.flush()
        return project
    for key, value in settings.items():
        if value is not None:
            setattr(project, key, value)
    if feedback != FeedbackSettings():
        feedback = feedback.over(project).checked()
        has_items = session.scalar(select(Item.id).where(Item.project_id == project.id).limit(1)) is not None
        if feedback.feedback != project.feedback and has_items:
            raise AlignError(f"project {name!r} collects {project.feedback}s; its items cannot change to "
                             f"{feedback.feedback}s (import into a new project)")
        for key, value in feedback.model_dump().items():
            setattr(project, key, value)
    return project


def import_items(
    store: Store,
    project_name: str,
    records: list[dict[str, Any]],
    *,
    annotations_per_item: int | None = None,
    guidelines: str | None = None,
    render: str | None = None,
    feedback: str | None = None,
    rating_scale: int | None = None,
    rating_threshold: int | None = None,
    source: str | Path | None = None,
    by: str = "cli",
) -> dict[str, int]:
    """Create the project if needed and add items; items whose id already exists are skipped.

    ``source``: the JSONL file the records were read from (:func:`read_jsonl`), so that a bad record is
    named by its file and line; without it, ``record N``.

    ``render`` (``text``, the default for a new project, or ``markdown``) sets how the project's
    prompts and candidates are shown (labeling_ui.display); None keeps an existing project's choice.
    ``feedback``: ``ranking`` (the default for a new project) or ``rating``, with ``rating_scale`` 2
    (thumbs: 0 down, 1 up) or 5 (1 to 5, the default) and ``rating_threshold`` (a rating at or above it
    is desirable; default 4, thumbs 1); None keeps an existing project's choice.
    """
    if render is not None and render not in RENDER_MODES:
        raise AlignError(f"render must be one of {', '.join(RENDER_MODES)}, not {render!r}")
    wanted = FeedbackSettings(feedback=feedback, rating_scale=rating_scale, rating_threshold=rating_threshold)
    settings = {"annotations_per_item": annotations_per_item, "guidelines": guidelines, "render": render}
    with store.transaction() as session:
        project = _project_for_import(session, project_name, settings, wanted)
        if project.annotations_per_item < 1:
            raise AlignError("annotations per item must be at least 1")
        parsed = _parse_records(records, project.feedback, source)
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
                session.add(Candidate(item_id=item.id, position=position, **_candidate_row(candidate)))
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


