"""DPO through real Ray actors and DeepSpeed on the micro model: step-0 loss, metrics, precompute, resume, errors."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from alignment.config import DPOConfig
from alignment.dpo import run_dpo
from alignment.errors import AlignError
from tests.conftest import read_metrics
from tests.preference_helpers import preference_tree, rewind_to

TRL_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
             "logps/chosen", "logps/rejected")


def dpo_config(micro_model, output_dir, **overrides) -> DPOConfig:
    return DPOConfig.model_validate(preference_tree(micro_model, output_dir, **overrides))


def final_weights(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


@pytest.fixture(scope="module")
def on_the_fly(micro_model, ray_runtime, tmp_path_factory):
    output = tmp_path_factory.mktemp("dpo") / "run"
    final = run_dpo(dpo_config(micro_model, output))
    kept = output.parent / "final_copy"
    shutil.copytree(final, kept)
    return output, kept


@pytest.mark.slow
def test_step0_loss_is_ln2_and_metrics_have_trl_names(on_the_fly):
    output, _ = on_the_fly
    rows = read_metrics(output)
    first = rows[0]
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference before any update
    assert first["train/rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert first["train/rewards/accuracies"] == 0.0  # no pair has chosen reward strictly above rejected
    assert all(f"train/{name}" in row for row in rows for name in TRL_NAMES)
    evaluated = [row for row in rows if "eval/loss" in row]
    assert [row["step"] for row in evaluated] == [2, 4]
    assert all(f"eval/{name}" in row for row in evaluated for name in TRL_NAMES)
    assert evaluated[-1]["eval/loss"] < math.log(2)  # it learned to prefer ordered over reversed text
    assert evaluated[-1]["eval/rewards/margins"] > 0


@pytest.mark.slow
def test_precomputed_reference_under_zero3_gives_the_same_run(on_the_fly, micro_model, tmp_path):
    """ZeRO-3 (sharded policy and reference, precomputed log-probs gathered across ranks) vs ZeRO-2 on the fly."""
    output, expected_final = on_the_fly
    final = run_dpo(dpo_config(micro_model, tmp_path / "pre", dpo__precompute_ref_logps=True, strategy__zero_stage=3))
    expected = [row["train/loss"] for row in read_metrics(output)]
    assert [row["train/loss"] for row in read_metrics(tmp_path / "pre")] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    reference = final_weights(expected_final)
    for name, value in final_weights(final).items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=5e-5, msg=name)


@pytest.mark.slow
def test_resume_from_mid_run_checkpoint_gives_identical_weights(on_the_fly, tmp_path, capsys):
    output, expected_final = on_the_fly
    copy = tmp_path / "resumed"
    shutil.copytree(output, copy)
    rewind_to(copy, 2)
    config = DPOConfig.model_validate({**_tree_from(output), "output_dir": str(copy)})
    final = run_dpo(config, resume=True)
    assert "at step 2" in capsys.readouterr().out  # it really continued from the mid-run checkpoint
    reference = final_weights(expected_final)
    for name, value in final_weights(final).items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0, msg=name)


def _tree_from(output) -> dict:
    import yaml

    return yaml.safe_load((output / "config.yaml").read_text())


def test_bad_rows_and_configs_are_clear_errors(micro_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    config = dpo_config(micro_model, tmp_path / "out", data__train=str(bad))
    with pytest.raises(AlignError, match=r"bad.jsonl:2: .*missing \['rejected'\]"):
        run_dpo(config)
    with pytest.raises(Exception, match="global_batch_size"):
        dpo_config(micro_model, tmp_path / "out", train__global_batch_size=6)
    with pytest.raises(Exception, match="loss_type"):
        dpo_config(micro_model, tmp_path / "out", dpo__loss_type="kto")
    with pytest.raises(AlignError, match="does not exist"):
        run_dpo(dpo_config(micro_model, tmp_path / "out", model=str(tmp_path / "nowhere")))
