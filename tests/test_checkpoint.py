"""Checkpoints: atomic commit, and exact resume after SIGKILL."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from alignment.checkpoint import CheckpointManager
from alignment.sft import run_sft
from tests.conftest import resume_run, sft_config, sigkill_after_checkpoint

STEPS = 10


def test_commit_is_atomic_and_prunes(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3):
        (manager.staging_dir(step) / "weights").write_text(str(step))
        manager.commit(step, {"step": step})
    crashed = manager.staging_dir(4)  # a save that never finished
    (crashed / "weights").write_text("partial")
    assert manager.latest().name == "step_00000003"
    assert manager.load_state(manager.latest()) == {"step": 3}
    assert sorted(p.name for p in manager.root.iterdir()) == ["latest", "step_00000002", "step_00000003",
                                                            "step_00000004.tmp"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_exactly_the_uninterrupted_weights(micro_model, ray_runtime, tmp_path):
    overrides = {"train__max_steps": STEPS, "train__save_every": 2, "train__eval_every": 100,
                 "strategy__zero_stage": 2, "train__keep_checkpoints": 3}
    straight = run_sft(sft_config(micro_model, tmp_path / "straight", **overrides))

    config = sft_config(micro_model, tmp_path / "killed", **overrides)
    command = sigkill_after_checkpoint("sft", config.model_dump(mode="json"), tmp_path / "killed", 4)
    manager = CheckpointManager(tmp_path / "killed")
    killed_at = manager.load_state(manager.latest())["step"]
    assert 4 <= killed_at < STEPS

    assert f"at step {killed_at}" in resume_run(command)

    expected = load_file(straight / "model.safetensors")
    actual = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    steps_logged = [__import__("json").loads(line)["step"]
                    for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, STEPS + 1))


def test_resume_keeps_metrics_as_one_uninterrupted_run(tmp_path):
    """Rows past the resumed step go; the resumed step's row comes back from the checkpoint if the run died
    between committing it and logging it (and only on a logging step)."""
    import json

    from alignment.config import TrackingConfig
    from alignment.tracking import Tracker

    config = TrackingConfig(progress=False, tensorboard=False, log_every=2)

    def steps() -> list[int]:
        return [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]

    def run(resume_step: int, metrics: dict | None, log: range) -> None:
        tracker = Tracker(tmp_path, config, resume_step=resume_step, resume_metrics=metrics)
        for step in log:
            tracker.log(step, {"train/loss": 1.0 / step})
        tracker.close()

    run(0, None, range(2, 7, 2))                       # logged 2, 4, 6, then killed after checkpoint 8 committed
    run(8, {"train/loss": 0.125}, range(10, 13, 2))   # resumed at 8: its row restored from the checkpoint
    assert steps() == [2, 4, 6, 8, 10, 12]
    run(4, {"train/loss": 0.25}, [])                   # resumed at 4: later rows dropped, row 4 not doubled
    assert steps() == [2, 4]
    run(3, {"train/loss": 1 / 3}, [])                  # 3 is not a logging step: no row for it
    assert steps() == [2]
