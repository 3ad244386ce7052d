"""The frame every training job shares, written once: SFT, reward models, DPO and PPO keep only their steps.

``TrainingRun(config, resume)`` checks the output directory, opens the job's library log, finds the
checkpoint to resume from and writes ``config.yaml``; :meth:`TrainingRun.loop` then runs the steps
with the tracker, the progress bar, the eval / save / log cadence of ``config.train`` and
``config.tracking``, the stop on a non-finite loss, and the export of the last checkpoint's ``hf/``
as ``final/``.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignment.checkpoint import CheckpointManager, check_output_dir
from alignment.config import dump_config
from alignment.errors import AlignError
from alignment.logs import open_job_log
from alignment.tracking import PhaseTimer, Tracker


class TrainingRun:
    """One job's output directory, checkpoints, timer and step loop."""

    def __init__(self, config: Any, resume: bool) -> None:
        self.config = config
        self.output_dir = check_output_dir(config.output_dir)
        open_job_log(self.output_dir)
        self.checkpoints = CheckpointManager(self.output_dir, keep=config.train.keep_checkpoints)
        self.resume_from = self.checkpoints.latest() if resume else None
        if resume and self.resume_from is None:
            print(f"no checkpoint under {self.checkpoints.root}; starting from scratch")
        (self.output_dir / "config.yaml").write_text(dump_config(config))
        self.timer = PhaseTimer()
        self.tracker: Tracker | None = None

    def resume_state(self) -> dict[str, Any]:
        """The committed state of the checkpoint resumed from ({} when starting afresh)."""
        return self.checkpoints.load_state(self.resume_from) if self.resume_from is not None else {}

    def open_tracker(self, start_step: int, state: dict[str, Any]) -> Tracker:
        """Metrics to JSONL / TensorBoard / W&B, continuing the resumed run's rows."""
        self.tracker = Tracker(self.output_dir, self.config.tracking, self.config.model_dump(mode="json"),
                               resume_step=start_step, resume_metrics=state.get("metrics"))
        return self.tracker

    def save(self, step: int, metrics: dict[str, Any], write: Callable[[Path], dict[str, Any] | None]) -> Path:
        """``write(staging)`` puts the model state and ``hf/`` there; then the checkpoint is committed
        atomically with the step, the metrics and whatever ``write`` returned."""
        staging = self.checkpoints.staging_dir(step)
        extra = write(staging) or {}
        return self.checkpoints.commit(step, {"step": step, "metrics": metrics, **extra})

    def loop(self, start_step: int, total_steps: int, step: Callable[[int], dict[str, Any]],
             write: Callable[[Path], dict[str, Any] | None], evaluate: Callable[[], dict[str, Any]] | None = None,
             finite: Sequence[str] = ("train/loss",), postfix: Callable[[dict], dict[str, str]] | None = None,
             after_log: Callable[[int], None] | None = None, samples_per_step: int | None = None,
             desc: str = "train") -> Path:
        """Run steps ``start_step + 1 .. total_steps``; returns ``final/`` (the last checkpoint's HF model).

        ``step(n)`` does one step's work (timing its phases with ``self.timer``) and returns its metrics;
        ``evaluate()`` and ``write(staging)`` run on the cadence of ``config.train``; ``finite`` names the
        losses that stop the job when NaN or infinite; ``after_log(n)`` runs after step n's metrics are
        logged; with ``samples_per_step`` the metrics get ``time/samples_per_s``.
        """
        from tqdm import tqdm

        train, tracking = self.config.train, self.config.tracking
        tracker = self.tracker or self.open_tracker(start_step, {})
        progress = tqdm(total=total_steps, initial=start_step, desc=desc, disable=not tracking.progress,
                        dynamic_ncols=True)
        try:
            for number in range(start_step + 1, total_steps + 1):
                started = time.perf_counter()
                metrics = step(number)
                self.stop_if_not_finite(metrics, finite, number)
                last = number == total_steps
                if evaluate is not None and (number % train.eval_every == 0 or last):
                    with self.timer.phase("eval"):
                        metrics.update(evaluate())
                if number % train.save_every == 0 or last:
                    with self.timer.phase("checkpoint"):
                        self.save(number, metrics, write)
                metrics.update(self.timer.pop())
                metrics["time/step_s"] = round(time.perf_counter() - started, 4)
                if samples_per_step is not None:
                    metrics["time/samples_per_s"] = samples_per_step / metrics["time/step_s"]
                if number % tracking.log_every == 0 or last:
                    tracker.log(number, metrics)
                if after_log is not None:
                    after_log(number)
                progress.update(1)
                if postfix is not None:
                    progress.set_postfix(postfix(metrics))
            progress.close()
            return self.export_final()
        finally:
            progress.close()
            tracker.close()

    def stop_if_not_finite(self, metrics: dict[str, Any], keys: Sequence[str], step: int) -> None:
        for key in keys:
            if key in metrics and not math.isfinite(metrics[key]):
                raise AlignError(f"{key} is {metrics[key]} at step {step}; stopping without saving. "
                                 f"The last good checkpoint is {self.checkpoints.latest()}")

    def export_final(self) -> Path:
        """Copy the last checkpoint's ``hf/`` to ``final/`` (atomically: a partial copy never shows)."""
        final = self.output_dir / "final"
        latest = self.checkpoints.latest()
        if latest is not None:
            replace_dir(latest / "hf", final)
        return final


def replace_dir(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source``: copied beside it, then swapped in."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
