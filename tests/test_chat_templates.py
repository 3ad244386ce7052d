"""The `chat_template` setting: built-ins and files, the pre-flight error on a model without a template,
and jobs on such a model: chat data with `chat_template=chatml`, plain-text (standard) pairs with none."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from alignment.chat_templates import CHATML, has_chat_template, resolve_chat_template
from alignment.errors import AlignError
from tests.conftest import ALIGN, REPO, read_metrics, sft_config, subprocess_env, write_jsonl
from tests.preference_helpers import preference_tree

CHAT_PROMPTS = [{"prompt": [{"role": "user", "content": f"Review the film number {i}."}]} for i in range(8)]


@pytest.fixture(scope="module")
def bare_model(micro_model, tmp_path_factory) -> Path:
    """The micro model with its chat template removed: a base model as users bring them."""
    bare = tmp_path_factory.mktemp("bare") / "model"
    shutil.copytree(micro_model / "model", bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    assert not has_chat_template(bare) and has_chat_template(micro_model / "model")
    return bare


def text_pairs(micro_model: Path, count: int = 48) -> Path:
    """Standard-format pairs (all text): the review as chosen, its words reversed as rejected."""
    rows = [json.loads(line) for line in (micro_model / "sft.jsonl").read_text().splitlines()][:count]
    pairs = [{"prompt": row["messages"][0]["content"] + "\n", "chosen": row["messages"][-1]["content"],
              "rejected": " ".join(reversed(row["messages"][-1]["content"].split()))} for row in rows]
    return write_jsonl(micro_model / "text_pairs.jsonl", pairs)


def test_builtin_names_and_jinja_files_resolve(tmp_path):
    assert resolve_chat_template(None) is None
    assert resolve_chat_template("chatml") == CHATML
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert resolve_chat_template(str(path)) == path.read_text()
    with pytest.raises(AlignError, match=r"chat_template='nope' is neither a built-in \(chatml\) nor an existing"):
        resolve_chat_template("nope")


def no_ray(monkeypatch) -> None:
    """Starting Ray (any worker or engine) is a test failure from here on."""
    import alignment.cluster.runtime as runtime

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the chat-template check")

    monkeypatch.setattr(runtime, "start_ray", refuse)


def job(kind: str, model: Path, micro_model: Path, tmp_path: Path, **extra):
    """A job of ``kind`` with chat-format data on ``model``: (runner, config)."""
    from alignment.config import DPOConfig, RMConfig

    output = tmp_path / kind
    if kind == "sft":
        from alignment.sft import run_sft

        return run_sft, sft_config(micro_model, output, model=str(model), **extra)
    if kind in ("dpo", "rm"):
        from alignment.dpo import run_dpo
        from reward.train import run_rm

        tree = preference_tree(micro_model, output, model=str(model), **extra)
        return (run_dpo, DPOConfig.model_validate(tree)) if kind == "dpo" else (run_rm, RMConfig.model_validate(tree))
    prompts = write_jsonl(tmp_path / "chat_prompts.jsonl", CHAT_PROMPTS)
    if kind == "ppo":
        from alignment.ppo.config import PPOConfig
        from alignment.ppo.trainer import run_ppo
        from tests.test_ppo import ppo_tree

        tree = ppo_tree(micro_model, output, model=str(model), data__train=str(prompts), data__eval=None, **extra)
        return run_ppo, PPOConfig.model_validate(tree)
    if kind == "generate":
        from alignment.generation import GenerateConfig, generate_to_file

        return generate_to_file, GenerateConfig(checkpoints=[str(model)], prompts=str(prompts),
                                                output=str(output / "out.jsonl"), **extra)
    from alignment.compare import CompareConfig, run_compare

    return run_compare, CompareConfig(checkpoints=[str(model)], prompts=str(prompts), output=str(output), **extra)


@pytest.mark.parametrize("kind", ["sft", "dpo", "rm", "ppo", "generate", "compare"])
def test_chat_data_on_a_model_without_template_fails_before_any_worker(kind, bare_model, micro_model, tmp_path,
                                                                      monkeypatch):
    no_ray(monkeypatch)
    runner, config = job(kind, bare_model, micro_model, tmp_path)
    started = time.perf_counter()
    with pytest.raises(AlignError) as error:
        runner(config)
    assert time.perf_counter() - started < 20  # the checks read files; no model, worker or engine starts
    message = str(error.value)
    assert str(bare_model) in message and "has no chat template" in message and "set chat_template" in message
    assert "chatml" in message
    # With the setting, the same job passes the check (and would start Ray: refused here).
    runner, config = job(kind, bare_model, micro_model, tmp_path, chat_template="chatml")
    with pytest.raises(AssertionError, match="Ray was started"):
        runner(config)


def test_a_bad_chat_template_value_fails_before_any_worker(bare_model, micro_model, tmp_path, monkeypatch):
    no_ray(monkeypatch)
    runner, config = job("sft", bare_model, micro_model, tmp_path, chat_template=str(tmp_path / "missing.jinja"))
    with pytest.raises(AlignError, match="neither a built-in"):
        runner(config)


def saved_template(directory: Path) -> str | None:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory)).chat_template


def test_chatml_sft_on_a_model_without_template_saves_the_template(bare_model, micro_model, ray_runtime, tmp_path):
    from alignment.sft import run_sft

    config = sft_config(micro_model, tmp_path / "sft", model=str(bare_model), chat_template="chatml",
                        train__max_steps=2, train__save_every=2, train__eval_every=2)
    final = run_sft(config)
    assert saved_template(final) == CHATML
    assert all(saved_template(hf) == CHATML for hf in (tmp_path / "sft" / "checkpoints").glob("step_*/hf"))
    losses = [row["train/loss"] for row in read_metrics(tmp_path / "sft") if "train/loss" in row]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_plain_text_pairs_train_dpo_on_a_model_without_template(bare_model, micro_model, ray_runtime, tmp_path):
    from alignment.config import DPOConfig
    from alignment.dpo import run_dpo
    from tests.test_dpo import final_weights

    tree = preference_tree(micro_model, tmp_path / "dpo", model=str(bare_model), data__train=str(text_pairs(micro_model)),
                           train__max_steps=2, train__save_every=2, train__eval_every=2)
    final = run_dpo(DPOConfig.model_validate(tree))
    first = read_metrics(tmp_path / "dpo")[0]
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 0
    assert saved_template(final) is None  # standard rows need no template, and none was added
    before, after = final_weights(bare_model), final_weights(final)
    assert all(not (before[k] == after[k]).all() for k in before if k in after)  # every tensor trained


def test_chatml_dpo_on_a_model_without_template(bare_model, micro_model, ray_runtime, tmp_path):
    from alignment.config import DPOConfig
    from alignment.dpo import run_dpo

    tree = preference_tree(micro_model, tmp_path / "dpo", model=str(bare_model), chat_template="chatml",
                           train__max_steps=2, train__save_every=2, train__eval_every=2)
    final = run_dpo(DPOConfig.model_validate(tree))  # conversational pairs (message-list prompts)
    rows = read_metrics(tmp_path / "dpo")
    assert rows[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-5) and rows[1]["train/loss"] < math.log(2)
    assert saved_template(final) == CHATML


@pytest.mark.slow
def test_chatml_ppo_and_generate_on_a_model_without_template(bare_model, micro_model, tmp_path):
    """GRPO (hf rollout backend) with chat prompts and `chat_template=chatml`, then `align generate` on its final
    policy, which carries the template (no setting needed the second time)."""
    prompts = write_jsonl(tmp_path / "chat_prompts.jsonl", CHAT_PROMPTS)
    from tests.test_ppo import ppo_tree

    tree = ppo_tree(micro_model, tmp_path / "ppo", model=str(bare_model), chat_template="chatml",
                    data__train=str(prompts), data__eval=None, reward__model=None, kl__coef=0.0,
                    algorithm__advantage="grpo", train__max_steps=1, train__save_every=1, rollout__backend="hf",
                    rollout__cpus_per_engine=1)
    config = tmp_path / "ppo.yaml"
    config.write_text(yaml.safe_dump(tree))
    result = subprocess.run([*ALIGN, "ppo", "--config", str(config)], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    final = tmp_path / "ppo" / "final"
    assert saved_template(final) == CHATML
    result = subprocess.run([*ALIGN, "generate", f"checkpoints=[{final}]", f"prompts={prompts}",
                             f"output={tmp_path / 'gen.jsonl'}", "rollout.backend=hf", "rollout.cpus_per_engine=1",
                             "sampling.max_tokens=8", "progress=false"],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert len(rows) == len(CHAT_PROMPTS) and all(row["token_ids"] for row in rows)
