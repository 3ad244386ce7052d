"""Rankings -> preference pairs in TRL's ``prompt``/``chosen``/``rejected`` format (JSONL or Parquet).

The prompt is exported in the form it was imported: text (TRL's standard format, trained without a
chat template) or, for items imported with ``messages``, the chat messages, with chosen and rejected
as one assistant message each (TRL's conversational format).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from alignment.errors import AlignError
from alignment.preference_data import ranking_pairs
from labeling_ui.agreement import consensus
from labeling_ui.store import RankedItem, Store, audit, ranked_items

Mode = Literal["all", "consensus"]
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def _response(item: RankedItem, text: str) -> str | list[dict[str, str]]:
    """A candidate as the row's format needs it: text, or one assistant message after a chat prompt."""
    return [{"role": "assistant", "content": text}] if item.prompt_messages else text


def preference_rows(items: Sequence[RankedItem], mode: Mode = "all") -> list[dict[str, Any]]:
    """``all``: every pair of every annotator's ranking; ``consensus``: the pairs of the mean-rank consensus."""
    if mode not in ("all", "consensus"):
        raise AlignError(f"export mode must be 'all' or 'consensus', not {mode!r}")
    rows = []
    for item in items:
        rankings = [consensus(item.rankings)] if mode == "consensus" else list(item.rankings.values())
        for ranks in rankings:
            for better, worse in ranking_pairs(ranks):
                rows.append(
                    {
                        "prompt": item.prompt_messages or item.prompt,
                        "chosen": _response(item, item.candidates[better]),
                        "rejected": _response(item, item.candidates[worse]),
                    }
                )
    return rows


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

        if any(isinstance(row["prompt"], list) for row in rows):
            if not all(isinstance(row["prompt"], list) for row in rows):
                raise AlignError("the project mixes text and chat prompts; export it as .jsonl (Parquet needs one type)")
            column = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        else:
            column = pa.string()
        schema = pa.schema([("prompt", column), ("chosen", column), ("rejected", column)])
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
    by: str = "cli",
) -> int:
    """Export a project's rankings as preference pairs; returns the number of pairs written."""
    return len(export_pairs(store, project, mode, by, lambda rows: write_rows(rows, out, file_format).name))


def export_pairs(store: Store, project: str, mode: Mode, by: str, deliver: Callable[[list[dict[str, Any]]], str]
                 ) -> list[dict[str, Any]]:
    """A project's preference pairs, handed to ``deliver`` (which returns where they went: a file name,
    ``(http)``), then recorded in the audit log. Every export (CLI, HTTP API, Gradio API) comes here."""
    rows = preference_rows(ranked_items(store, project), mode)
    target = deliver(rows)
    with store.transaction() as session:
        audit(session, by, "export", project=project, mode=mode, pairs=len(rows), file=target)
    return rows


def jsonl_text(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as JSON Lines text (UTF-8 kept as is)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
