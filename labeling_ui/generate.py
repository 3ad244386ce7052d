"""Candidates straight from checkpoints: `align generate` through the rollout engine, grouped into import items."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from alignment.errors import AlignError
from labeling_ui.store import MAX_CANDIDATES


def prompt_text(prompt: Any) -> str:
    """What annotators read: plain text, or the conversation's turns (token-id prompts are refused)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        if len(prompt) == 1:
            return str(prompt[0].get("content", ""))
        return "\n\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)
    raise AlignError("labeling needs text or chat-message prompts, not token ids")


def records_from_generations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One import record per prompt, one candidate per (checkpoint, sample); the id is a hash of the prompt,
    so generating again for the same prompts adds nothing twice. A chat prompt keeps its messages
    (``messages``), so the exported pairs are conversational as the prompts were."""
    items: dict[int, dict[str, Any]] = {}
    for row in rows:
        text = prompt_text(row["prompt"])
        item = items.setdefault(row["prompt_index"], {
            "id": "gen-" + hashlib.sha256(json.dumps(row["prompt"], sort_keys=True).encode()).hexdigest()[:16],
            "prompt": text,
            **({"messages": row["prompt"]} if isinstance(row["prompt"], list) else {}),  # exported in this form
            "candidates": [],
        })
        model = Path(row["checkpoint"]).name + (f"#{row['sample_index']}" if row["sample_index"] else "")
        item["candidates"].append({"text": row["completion"] or "(empty response)", "model": model})
    return [items[index] for index in sorted(items)]


def generate_candidates(prompts_file: str, checkpoints: list[str], samples: int = 1, max_prompts: int | None = None,
                        max_tokens: int = 64, temperature: float = 1.0, seed: int = 0,
                        backend: str = "vllm", chat_template: str | None = None) -> list[dict[str, Any]]:
    """Sample ``samples`` responses per prompt from every checkpoint; return import records.

    ``chat_template`` (a built-in name or a Jinja file) renders chat prompts for checkpoints without one."""
    from alignment.config import align_home
    from alignment.generation import GenerateConfig, generate
    from alignment.logs import open_job_log
    from alignment.models import check_model_dir

    count = len(checkpoints) * samples
    if not 2 <= count <= MAX_CANDIDATES:
        raise AlignError(f"checkpoints x samples must give 2 to {MAX_CANDIDATES} candidates per prompt, got {count}")
    for checkpoint in checkpoints:  # every path is checked before any generation starts
        check_model_dir(checkpoint)
    # The libraries log to $ALIGN_HOME/logs/label-generate (unless this is part of a run that keeps
    # a log already, such as the demo).
    open_job_log(align_home() / "logs" / "label-generate")
    config = GenerateConfig(
        checkpoints=checkpoints, prompts=prompts_file, max_prompts=max_prompts, chat_template=chat_template,
        rollout={"backend": backend}, sampling={"n": samples, "max_tokens": max_tokens, "temperature": temperature,
                                                "seed": seed},
    )
    return records_from_generations(generate(config)[0])
