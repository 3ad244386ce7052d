"""Metrics to JSONL, TensorBoard and (when configured) Weights & Biases; per-phase timings."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignment.config import TrackingConfig


class Tracker:
    """Writes one JSON object per logged step to ``<output_dir>/metrics.jsonl`` and mirrors it elsewhere.

    On resume the JSONL is appended to, after dropping lines past the resumed step, so the
    file always reads as one uninterrupted run.
    """

    def __init__(self, output_dir: Path, config: TrackingConfig, run_config: dict | None = None, resume_step: int = 0,
                 resume_metrics: dict[str, Any] | None = None):
        """On resume, rows after ``resume_step`` are dropped; ``resume_metrics`` (the checkpoint's copy of
        that step's row) restores the row if the run died between committing the checkpoint and logging it."""
        self.path = output_dir / "metrics.jsonl"
        self.config = config
        rows = self._truncate_after(resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        self._tensorboard = None
        self._wandb = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resume_step + 1 or None)
        if config.wandb_project:
            import wandb

            self._wandb = wandb.init(project=config.wandb_project, dir=str(output_dir), config=run_config or {})
        logged = any(row.get("step") == resume_step for row in rows)
        if resume_step and resume_metrics is not None and not logged and resume_step % config.log_every == 0:
            self.log(resume_step, resume_metrics)

    def _truncate_after(self, step: int) -> list[dict]:
        if not self.path.exists():
            return []
        kept = [row for line in self.path.read_text().splitlines() if line and (row := json.loads(line)).get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        return kept

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for key, value in row.items():
            if key != "step" and isinstance(value, float | int) and self._tensorboard is not None:
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class PhaseTimer:
    """Accumulates wall time per named phase: ``with timer.phase("train"): ...``; ``timer.pop()`` -> {time/train_s: ...}."""

    def __init__(self) -> None:
        self._totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._totals[name] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        totals = {f"time/{name}_s": round(seconds, 4) for name, seconds in self._totals.items()}
        self._totals.clear()
        return totals
