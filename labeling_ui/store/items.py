"""Projects and their items: validated imports (idempotent by item id)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy import (
    select,
)
from sqlalchemy.orm import Session

from alignment.errors import AlignError
from labeling_ui.store.engine import Store, audit
from labeling_ui.store.schema import (
    MAX_CANDIDATES,
    RENDER_MODES,
    Battle,
    Candidate,
    Item,
    Project,
)


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
    render: str | None = None,
    by: str = "cli",
) -> dict[str, int]:
    """Create the project if needed and add items; items whose id already exists are skipped.

    ``render`` (``text``, the default for a new project, or ``markdown``) sets how the project's
    prompts and candidates are shown (labeling_ui.display); None keeps an existing project's choice.
    """
    if render is not None and render not in RENDER_MODES:
        raise AlignError(f"render must be one of {', '.join(RENDER_MODES)}, not {render!r}")
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
                name=project_name,
                guidelines=guidelines or "",
                annotations_per_item=annotations_per_item or 3,
                render=render or "text",
            )
            session.add(project)
            session.flush()
        else:
            if annotations_per_item is not None:
                project.annotations_per_item = annotations_per_item
            if guidelines is not None:
                project.guidelines = guidelines
            if render is not None:
                project.render = render
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


