"""Bad input: one clear message, exit code 2, nothing half-written, before any cluster starts."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.conftest import ALIGN, REPO, subprocess_env, write_jsonl


def run_sft_cli(tmp_path, **changes) -> tuple[subprocess.CompletedProcess, object]:
    config = {
        "model": str(changes.pop("model")),
        "output_dir": str(changes.pop("output_dir", tmp_path / "out")),
        "data": {"train": str(changes.pop("train"))},
        "train": {"micro_batch_size": 1, "global_batch_size": 2, "max_steps": 1},
    }
    config.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([*ALIGN, "sft", "--config", str(path)], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=180)
    return result, tmp_path / "out"


GOOD_ROW = {"prompt": "Review X.", "completion": "X is fine."}


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([GOOD_ROW, "{not json"], r"data.jsonl:2: not valid JSON"),
        ([GOOD_ROW, GOOD_ROW, {"prompt": "no completion"}], r"data.jsonl:3: .*missing \['completion'\]"),
        ([], r"data.jsonl holds no rows"),
    ],
    ids=["malformed-line", "missing-field", "empty"],
)
def test_bad_data(rows, expected, micro_model, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join((row if isinstance(row, str) else __import__("json").dumps(row)) + "\n" for row in rows))
    result, out = run_sft_cli(tmp_path, model=micro_model / "model", train=data)
    assert result.returncode == 2, result.stderr
    assert __import__("re").search(expected, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists(), "nothing may be written for a job that never started"


def test_unknown_config_key(micro_model, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [GOOD_ROW] * 4)
    result, out = run_sft_cli(tmp_path, model=micro_model / "model", train=data, optimizer={"lr": 1})
    assert result.returncode == 2
    assert "optimizer: unknown key; allowed here: model, tokenizer, chat_template, output_dir, data" in result.stderr
    assert not out.exists()


def test_model_path_does_not_exist(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [GOOD_ROW] * 4)
    result, out = run_sft_cli(tmp_path, model=tmp_path / "no_such_model", train=data)
    assert result.returncode == 2
    assert "no_such_model does not exist" in result.stderr
    assert not out.exists()


def test_output_dir_not_writable(micro_model, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [GOOD_ROW] * 4)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result, _ = run_sft_cli(tmp_path, model=micro_model / "model", train=data, output_dir=blocker / "out")
    assert result.returncode == 2
    assert "a_file/out is not writable" in result.stderr and "Traceback" not in result.stderr
