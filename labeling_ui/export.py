"""Feedback -> training data in TRL's formats (JSONL or Parquet).

- ``pairs``: rankings -> preference pairs, ``prompt``/``chosen``/``rejected`` (DPO, reward models).
- ``kto``: ratings -> unpaired feedback, ``prompt``/``completion``/``label`` (KTO): one row per rated
  candidate, labelled by the majority of its annotators.
- ``sft``: annotators' corrections and own answers -> ``prompt``/``completion`` (SFT). The pairs
  include each correction over the answer it corrects.

The prompt is exported in the form it was imported: text (TRL's standard format, trained without a
chat template) or, for items imported with ``messages``, the chat messages, with every answer as one
assistant message (TRL's conversational format). An item with a trajectory candidate (a multi-turn,
tool-using conversation) is conversational too: its trajectories are exported as their message lists,
its other answers as one assistant message each, a text prompt as one user message; the SFT row of a
trajectory's correction is ``{"messages": prompt + corrected trajectory}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from alignment.errors import AlignError
from alignment.preference_data import ranking_pairs
from labeling_ui.agreement import consensus
from labeling_ui.store import (
    Correction,
    ItemView,
    RankedItem,
    RatedItem,
    Store,
    audit,
    corrections,
    get_project,
    ranked_items,
    rated_items,
)

Mode = Literal["all", "consensus"]
Kind = Literal["pairs", "kto", "sft"]
KINDS = ("pairs", "kto", "sft")
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


Answer = str | list[dict[str, str]]  # a candidate's text, or a trajectory's messages


def _is_chat(item: ItemView, *answers: Answer | None) -> bool:
    """Whether the item's rows are conversational: a chat prompt, or a trajectory among its answers."""
    return bool(item.prompt_messages or item.trajectories) or any(isinstance(answer, list) for answer in answers)


def _prompt(item: ItemView, chat: bool) -> str | list[dict[str, Any]]:
    """The prompt as imported (its chat messages, or its text); a text prompt of a chat row as one user message."""
    if item.prompt_messages:
        return item.prompt_messages
    return [{"role": "user", "content": item.prompt}] if chat else item.prompt


def _response(answer: Answer, chat: bool) -> Answer:
    """A candidate as the row's format needs it: a trajectory's messages, text, or one assistant message in a chat row."""
    if isinstance(answer, list):
        return answer
    return [{"role": "assistant", "content": answer}] if chat else answer


def preference_rows(items: Sequence[RankedItem], mode: Mode = "all") -> list[dict[str, Any]]:
    """``all``: every pair of every annotator's ranking; ``consensus``: the pairs of the mean-rank consensus."""
    if mode not in ("all", "consensus"):
        raise AlignError(f"export mode must be 'all' or 'consensus', not {mode!r}")
    rows = []
    for item in items:
        chat = _is_chat(item)
        rankings = [consensus(item.rankings)] if mode == "consensus" else list(item.rankings.values())
        for ranks in rankings:
            for better, worse in ranking_pairs(ranks):
                rows.append(
                    {
                        "prompt": _prompt(item, chat),
                        "chosen": _response(item.answer(better), chat),
                        "rejected": _response(item.answer(worse), chat),
                    }
                )
    return rows


def desirable(ratings: Sequence[int], threshold: int) -> bool | None:
    """The majority label of one candidate: True when more annotators rated it at or above ``threshold``
    (thumbs: 1, up) than below, False when fewer, None on an exact tie (the candidate is left out)."""
    up = sum(rating >= threshold for rating in ratings)
    down = len(ratings) - up
    return None if up == down else up > down


def kto_rows(items: Sequence[RatedItem], threshold: int) -> list[dict[str, Any]]:
    """TRL's unpaired format: ``{"prompt", "completion", "label"}`` per rated candidate (ties left out)."""
    rows = []
    for item in items:
        chat = _is_chat(item)
        for candidate in item.candidates:
            given = [scores[candidate] for scores in item.ratings.values() if candidate in scores]
            label = desirable(given, threshold) if given else None
            if label is not None:
                rows.append({"prompt": _prompt(item, chat), "completion": _response(item.answer(candidate), chat),
                             "label": label})
    return rows


def _column_type(name: str, values: list[Any]):
    """A Parquet column: booleans (``label``), chat messages, or text; one type per column."""
    import pyarrow as pa

    if values and all(isinstance(value, bool) for value in values):
        return pa.bool_()
    if any(isinstance(value, list) for value in values):
        if not all(isinstance(value, list) for value in values):
            raise AlignError("the project mixes text and chat rows (chat prompts or trajectories); export it as "
                             ".jsonl (Parquet needs one type)")
        return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.string()


def correction_pairs(items: Sequence[Correction]) -> list[dict[str, Any]]:
    """Each correction over the answer it corrects (new answers of an annotator's own make no pair)."""
    rows = []
    for item in items:
        corrected, replaced = item.corrected(), item.replaced()
        if replaced is not None:
            chat = _is_chat(item, corrected, replaced)
            rows.append({"prompt": _prompt(item, chat), "chosen": _response(corrected, chat),
                         "rejected": _response(replaced, chat)})
    return rows


def sft_row(item: Correction) -> dict[str, Any]:
    """TRL's prompt-completion row of a correction or new answer, the text exactly as written; a trajectory's
    correction as TRL's conversational ``messages`` (the prompt's messages, then the corrected trajectory)."""
    if item.messages:
        return {"messages": _prompt(item, chat=True) + item.messages}
    chat = _is_chat(item)
    return {"prompt": _prompt(item, chat), "completion": _response(item.text, chat)}


def sft_rows(items: Sequence[Correction]) -> list[dict[str, Any]]:
    """One SFT row (:func:`sft_row`) per correction or new answer."""
    return [sft_row(item) for item in items]


def write_rows(rows: list[dict[str, Any]], path: str | Path, file_format: str | None = None) -> Path:
    """Write rows as JSONL or Parquet, chosen by ``file_format`` or the file suffix; atomic (temp file, rename)."""
    path = Path(path)
    file_format = file_format or FORMATS.get(path.suffix.lower())
    if file_format not in ("jsonl", "parquet"):
        raise AlignError(f"cannot tell the format of {path}: use a .jsonl or .parquet file name, or --format")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    if file_format == "jsonl":
        with temporary.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = list(rows[0]) if rows else ["prompt", "chosen", "rejected"]
        if any(set(row) != set(columns) for row in rows):
            raise AlignError("the rows differ in their columns (SFT rows of trajectories are `messages`, the others "
                             "prompt/completion); export them as .jsonl (Parquet needs one set of columns)")
        schema = pa.schema([(name, _column_type(name, [row[name] for row in rows])) for name in columns])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), temporary)
    temporary.replace(path)
    return path


def export_project(
    store: Store,
    project: str,
    out: str | Path,
    *,
    mode: Mode = "all",
    file_format: str | None = None,
    kind: Kind = "pairs",
    by: str = "cli",
) -> int:
    """Export a project's feedback as ``kind`` rows (pairs, kto or sft) to a file; returns the number of rows."""
    def deliver(rows: list[dict[str, Any]]) -> str:
        return write_rows(rows, out, file_format).name

    return len(export_rows(store, project, kind, by, deliver, mode))


def export_kto(store: Store, project: str, out: str | Path, *, by: str = "cli") -> int:
    """Export a rating project as TRL's unpaired KTO rows; returns the number of rows written."""
    return export_project(store, project, out, kind="kto", by=by)


def project_rows(store: Store, project: str, kind: Kind, mode: Mode = "all") -> list[dict[str, Any]]:
    """A project's rows of one kind: ``pairs`` from rankings and corrections, ``kto`` from ratings,
    ``sft`` from corrections."""
    if kind == "pairs":
        return preference_rows(ranked_items(store, project), mode) + correction_pairs(corrections(store, project))
    if kind == "sft":
        return sft_rows(corrections(store, project))
    if kind == "kto":
        with store.transaction(write=False) as session:
            settings = get_project(session, project)
        if settings.feedback != "rating":
            raise AlignError(f"project {project!r} collects rankings: export it as preference pairs, not kto")
        return kto_rows(rated_items(store, project), settings.rating_threshold)
    raise AlignError(f"export format must be one of {', '.join(KINDS)}, not {kind!r}")


def export_rows(store: Store, project: str, kind: Kind, by: str, deliver: Callable[[list[dict[str, Any]]], str],
                mode: Mode = "all") -> list[dict[str, Any]]:
    """A project's rows, handed to ``deliver`` (which returns where they went: a file name, ``(http)``),
    then recorded in the audit log. Every export (CLI, HTTP API, Gradio API, admin tab) comes here."""
    rows = project_rows(store, project, kind, mode)
    target = deliver(rows)
    with store.transaction() as session:
        audit(session, by, "export", project=project, kind=kind, mode=mode, rows=len(rows), file=target)
    return rows


def export_pairs(store: Store, project: str, mode: Mode, by: str, deliver: Callable[[list[dict[str, Any]]], str]
                 ) -> list[dict[str, Any]]:
    """A project's preference pairs, delivered and audit-logged as :func:`export_rows` does."""
    return export_rows(store, project, "pairs", by, deliver, mode)


def jsonl_text(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as JSON Lines text (UTF-8 kept as is)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
