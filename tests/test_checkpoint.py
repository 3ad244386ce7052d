"""Checkpoints: atomic commit, and exact resume after SIGKILL."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from alignment.checkpoint import CheckpointManager
from alignment.sft import run_sft
from tests.conftest import ALIGN, REPO, sft_config, subprocess_env

STEPS = 24


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


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started (Ray's processes included)."""
    parent = psutil.Process(process.pid)
    for child in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_then_resume_gives_exactly_the_uninterrupted_weights(micro_model, ray_runtime, tmp_path):
    overrides = {"train__max_steps": STEPS, "train__save_every": 2, "train__eval_every": 100,
                 "strategy__zero_stage": 2, "train__keep_checkpoints": 3}
    straight = run_sft(sft_config(micro_model, tmp_path / "straight", **overrides))

    config = sft_config(micro_model, tmp_path / "killed", **overrides)
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    command = [*ALIGN, "sft", "--config", str(config_path)]
    process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    manager = CheckpointManager(tmp_path / "killed")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        latest = manager.root / "latest"
        if latest.exists() and latest.read_text().strip() >= "step_00000004":
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    kill_tree(process)
    killed_at = manager.load_state(manager.latest())["step"]
    assert 4 <= killed_at < STEPS

    resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=subprocess_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {killed_at}" in resumed.stdout

    expected = load_file(straight / "model.safetensors")
    actual = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    steps_logged = [__import__("json").loads(line)["step"]
                    for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, STEPS + 1))
