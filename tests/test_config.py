import subprocess

import pytest

from alignment.config import SFTConfig, load_config, parse_override
from alignment.errors import AlignError
from tests.conftest import ALIGN, REPO, subprocess_env

MINIMAL = ["model=/m", "output_dir=/o", "data.train=/t.jsonl"]


def test_overrides_parse_as_yaml_values():
    assert parse_override("optim.lr=0.5") == (["optim", "lr"], 0.5)
    assert parse_override("cluster.address=auto") == (["cluster", "address"], "auto")
    assert parse_override("strategy.zero_stage=3") == (["strategy", "zero_stage"], 3)
    with pytest.raises(AlignError, match="dotted.key=value"):
        parse_override("optim.lr")


def test_override_replaces_yaml_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: /m\noutput_dir: /o\ndata: {train: /t.jsonl}\noptim: {lr: 0.1}\n")
    config = load_config(SFTConfig, path, ["optim.lr=1e-5", "strategy.zero_stage=3"])
    assert config.optim.lr == 1e-5 and config.strategy.zero_stage == 3


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(AlignError) as error:
        load_config(SFTConfig, None, [*MINIMAL, "optim.learning_rate=1"])
    message = str(error.value)
    assert "optim.learning_rate: unknown key" in message
    assert "lr" in message and "scheduler" in message


def test_wrong_literal_lists_allowed_values():
    with pytest.raises(AlignError) as error:
        load_config(SFTConfig, None, [*MINIMAL, "strategy.zero_stage=4"])
    assert "strategy.zero_stage" in str(error.value) and "0, 1, 2 or 3" in str(error.value)


def test_wrong_type_names_key_and_value():
    with pytest.raises(AlignError, match=r"optim.lr: .*number.*'fast'"):
        load_config(SFTConfig, None, [*MINIMAL, "optim.lr=fast"])


def test_missing_required_key():
    with pytest.raises(AlignError, match="data: required key is missing"):
        load_config(SFTConfig, None, ["model=/m", "output_dir=/o"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.global_batch_size=10", "train.micro_batch_size=4"], "multiple of"),
        (["strategy.offload_params=true", "strategy.zero_stage=2"], "needs strategy.zero_stage=3"),
    ],
)
def test_impossible_combinations(overrides, expected):
    with pytest.raises(AlignError, match=expected):
        load_config(SFTConfig, None, [*MINIMAL, *overrides])


def test_every_field_is_documented():
    from pydantic import BaseModel

    from alignment.compare import CompareConfig
    from alignment.config import DPOConfig, RMConfig
    from alignment.demo import DemoConfig
    from alignment.ppo.config import PPOConfig
    from alignment.tiny.build import TinyBuildConfig

    def walk(schema: type[BaseModel]):
        for name, field in schema.model_fields.items():
            assert field.description, f"{schema.__name__}.{name} has no description"
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(field.annotation)

    for schema in (SFTConfig, RMConfig, DPOConfig, PPOConfig, TinyBuildConfig, CompareConfig, DemoConfig):
        walk(schema)


def test_cli_print_config_and_help():
    result = subprocess.run([*ALIGN, "sft", "--config", "configs/sft_tiny.yaml", "--print-config", "optim.lr=0.25"],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "lr: 0.25" in result.stdout and "zero_stage" in result.stdout
    help_text = subprocess.run([*ALIGN, "--help"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                               timeout=60).stdout
    for job in ("sft", "rm", "dpo", "ppo", "tiny", "generate", "compare", "demo", "label"):
        assert f"    {job} " in help_text, job


def test_cli_config_error_exits_2_with_one_message():
    result = subprocess.run([*ALIGN, "sft", "--config", "configs/sft_tiny.yaml", "strategy.zero_stage=5"],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "strategy.zero_stage" in result.stderr and "Traceback" not in result.stderr
