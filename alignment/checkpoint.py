"""Atomic, resumable checkpoints: ranks write into ``step_N.tmp``, the driver renames it when complete.

Layout under ``<output_dir>/checkpoints``::

    step_00000100/deepspeed/...   model, optimizer, scheduler (DeepSpeed, every rank)
    step_00000100/rng_rank*.pt    RNG states per rank
    step_00000100/hf/             plain Hugging Face weights + tokenizer
    step_00000100/trainer_state.json   step, data position, metrics (written last)
    latest                        name of the newest complete checkpoint (replaced atomically)

A directory without the rename, or without trainer_state.json, is never resumed from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from alignment.errors import AlignError


class CheckpointManager:
    def __init__(self, output_dir: Path, keep: int = 2) -> None:
        self.root = output_dir / "checkpoints"
        self.keep = keep

    def staging_dir(self, step: int) -> Path:
        """Where the ranks write checkpoint ``step`` (cleared first)."""
        path = self.root / f"step_{step:08d}.tmp"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def commit(self, step: int, state: dict[str, Any]) -> Path:
        """Seal the staged checkpoint: write its state, rename it into place, point ``latest`` at it."""
        staged = self.root / f"step_{step:08d}.tmp"
        _write_atomic(staged / "trainer_state.json", json.dumps(state, indent=2))
        final = self.root / f"step_{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
        _write_atomic(self.root / "latest", final.name)
        self._prune()
        return final

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        if not (path / "trainer_state.json").is_file():
            raise AlignError(f"checkpoint {path} named by {pointer} is incomplete")
        return path

    def load_state(self, path: Path) -> dict[str, Any]:
        return json.loads((path / "trainer_state.json").read_text())

    def _prune(self) -> None:
        complete = sorted(p for p in self.root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in complete[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob("step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def check_output_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and prove it is writable, before any work starts."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise AlignError(f"output_dir {path} is not writable: {error.strerror}") from None
    return path
