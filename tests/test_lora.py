"""LoRA through PEFT in SFT, RM and DPO: real Ray actors and DeepSpeed, checked against single-process PEFT."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from alignment.config import DPOConfig, LoRAConfig, RMConfig, SFTConfig, load_config
from alignment.dpo import run_dpo
from alignment.errors import AlignError
from alignment.lora import adapters_disabled, add_adapters, check_lora
from alignment.models import load_causal_lm
from tests.conftest import REPO, read_metrics, tiny_overrides
from tests.preference_helpers import preference_tree

LORA = {"rank": 4, "alpha": 8.0}
STEPS = 2


def adapter_tensors(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "adapter" / "adapter_model.safetensors")


def sequence_logps(model, batch) -> torch.Tensor:
    """Summed log-probs of the labelled tokens of each padded row (written out here, independently of ours)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    picked = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def test_config_errors_name_the_key_before_any_work(micro_model, tmp_path):
    with pytest.raises(AlignError, match=r"lora\.r: unknown key; allowed here: rank, alpha, dropout, target_modules"):
        load_config(DPOConfig, None, [f"model={micro_model / 'model'}", "output_dir=x", "data.train=x", "lora.r=4"])
    with pytest.raises(AlignError, match=r"lora\.target_modules: .*qproj.* are: down_proj, gate_proj, k_proj"):
        check_lora(LoRAConfig(target_modules=["q_proj", "qproj"]), micro_model / "model")
    output = tmp_path / "out"
    config = DPOConfig.model_validate(preference_tree(micro_model, output, lora={"load_in_4bit": True}))
    with pytest.raises(AlignError, match=r"lora\.load_in_4bit: QLoRA .* needs a CUDA GPU"):
        run_dpo(config)
    assert not output.exists()  # refused before the job opened its output directory
    assert SFTConfig.model_validate({"model": "m", "output_dir": "o", "data": {"train": "t"}, "lora": {}}).lora == LoRAConfig()


def test_disabled_adapters_give_exactly_the_base_models_log_probs(micro_model):
    """Adapters that change the model (B random, not 0): off, the log-probs equal a separate base copy's bit
    for bit; on, they differ."""
    from alignment.data import IGNORE_INDEX, TokenizedExample, pad_batch

    policy = add_adapters(load_causal_lm(micro_model / "model"), LoRAConfig(**LORA), seed=0)
    for name, param in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    base = load_causal_lm(micro_model / "model").eval()
    generator = torch.Generator().manual_seed(3)
    examples = [TokenizedExample(ids, [IGNORE_INDEX] * 4 + ids[4:])
                for ids in (torch.randint(3, 300, (n,), generator=generator).tolist() for n in (9, 14, 6))]
    batch = pad_batch(examples, pad_id=0)
    policy.train()
    with torch.no_grad():
        with adapters_disabled(policy):
            reference = sequence_logps(policy, batch)
        assert policy.training  # the mode is restored
        assert torch.equal(reference, sequence_logps(base, batch))
        assert not torch.allclose(reference, sequence_logps(policy.eval(), batch), atol=1e-3)


def peft_dpo_reference(config: DPOConfig) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The same LoRA DPO job in one process: PEFT model, a separate base copy as the reference, AdamW."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from alignment.data import StepSampler
    from alignment.models import load_tokenizer
    from alignment.preference_data import load_train_eval, pair_batch

    tokenizer = load_tokenizer(config.model)
    train, _ = load_train_eval(config.data, tokenizer, config.train.seed)
    torch.manual_seed(config.train.seed)
    policy = get_peft_model(load_causal_lm(config.model), LoraConfig(
        r=config.lora.rank, lora_alpha=config.lora.alpha, target_modules="all-linear", task_type="CAUSAL_LM"))
    base = load_causal_lm(config.model).eval()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.optim.lr, betas=config.optim.betas, eps=config.optim.eps,
                                  weight_decay=config.optim.weight_decay)
    sampler = StepSampler(len(train), config.train.global_batch_size, config.train.seed, config.data.shuffle)
    losses = []
    for step in range(STEPS):
        pairs = [train[i] for i in sampler.indices(step)]
        batch, n = pair_batch(pairs, tokenizer.pad_token_id), len(pairs)
        logps = sequence_logps(policy, batch)
        with torch.no_grad():
            ref = sequence_logps(base, batch)
        margin = (logps[:n] - ref[:n]) - (logps[n:] - ref[n:])
        loss = -F.logsigmoid(config.dpo.beta * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.strategy.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.detach() for k, v in get_peft_model_state_dict(policy).items()}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_lora_dpo_steps_equal_single_process_peft_and_resume_exactly(stage, micro_model, ray_runtime, tmp_path):
    """Two LoRA DPO steps on 2 ranks (the reference: adapters disabled) = one PEFT process with a separate base
    copy as reference: losses to 1e-5 relative, adapters within a tenth of one Adam step (lr 3e-3) with all but
    0.1% (of all adapter weights) within 1e-5. The merged final/ loads in plain transformers and equals base + adapter through PEFT.
    Under ZeRO-3, resuming from checkpoint 1 gives the adapters of the uninterrupted run bit for bit."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = DPOConfig.model_validate(preference_tree(
        micro_model, tmp_path / "run", lora=LORA, strategy__zero_stage=stage,
        train__max_steps=STEPS, train__save_every=1, train__eval_every=STEPS))
    final = run_dpo(config)
    losses, adapters = peft_dpo_reference(config)
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)  # B = 0: the policy is the base
    assert [row["train/loss"] for row in rows] == pytest.approx(losses, rel=1e-5)
    trained = adapter_tensors(final)
    assert trained.keys() == adapters.keys()
    differences = torch.cat([(trained[name] - value).abs().flatten() for name, value in adapters.items()])
    assert float(differences.max()) < 3e-4
    assert int((differences > 1e-5).sum()) <= differences.numel() // 1000
    assert max(float(v.abs().max()) for n, v in adapters.items() if "lora_B" in n) > 1e-3  # the adapters trained

    merged = AutoModelForCausalLM.from_pretrained(str(final)).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    through_peft = PeftModel.from_pretrained(load_causal_lm(config.model), str(final / "adapter")).eval()
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, through_peft(ids).logits, rtol=0, atol=1e-5)
    assert json.loads((final / "adapter" / "adapter_config.json").read_text())["r"] == LORA["rank"]

    if stage == 3:  # exact resume: back to checkpoint 1, run step 2 again
        resumed = tmp_path / "resumed"
        shutil.copytree(tmp_path / "run", resumed)
        shutil.rmtree(resumed / "final")
        shutil.rmtree(resumed / "checkpoints" / "step_00000002")
        (resumed / "checkpoints" / "latest").write_text("step_00000001")
        again = run_dpo(config.model_copy(update={"output_dir": str(resumed)}), resume=True)
        for name, value in adapter_tensors(again).items():
            torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def tiny_runs(tiny_task, tiny_prefs, ray_runtime, tmp_path_factory):
    """LoRA SFT, RM and DPO on the tiny task, a few steps each (ZeRO-1 as the tiny configs): their output dirs."""
    from alignment.sft import run_sft
    from reward.train import run_rm

    root = tmp_path_factory.mktemp("lora_tiny")
    short = ["train.max_steps=4", "train.eval_every=4", "train.save_every=4", "lora.rank=8"]
    sft = [f"model={tiny_task / 'base'}", f"output_dir={root / 'sft'}", "tracking.progress=false",
           "tracking.tensorboard=false", *short, "optim.lr=1e-3"]
    run_sft(load_config(SFTConfig, REPO / "configs" / "sft_tiny.yaml", sft))
    rm = [*tiny_overrides(tiny_task, tiny_prefs, root / "rm"), f"data.train={tiny_prefs / 'pairs_train.jsonl'}", *short]
    run_rm(load_config(RMConfig, REPO / "configs" / "rm_tiny.yaml", rm))
    # The whole dpo_tiny run (60 steps) with rank-16 adapters and a LoRA-sized learning rate (~1 min).
    dpo = [*tiny_overrides(tiny_task, tiny_prefs, root / "dpo"), "lora.rank=16", "lora.alpha=32", "optim.lr=1e-3",
           "dpo.precompute_ref_logps=true"]
    run_dpo(load_config(DPOConfig, REPO / "configs" / "dpo_tiny.yaml", dpo))
    return root


@pytest.mark.slow
def test_lora_dpo_beats_the_base_on_the_gold_judge_compared_from_its_adapter_directory(tiny_runs, tiny_task, tmp_path):
    """`align compare` takes the PEFT adapter directory itself (merged once into $ALIGN_HOME/merged): the LoRA DPO
    model's mean gold score beats the base's on at least 70% of the held-out prompts (measured: 114 of 116)."""
    from alignment.compare import CompareConfig, run_compare

    config = load_config(CompareConfig, REPO / "configs" / "compare_tiny.yaml", [
        f"checkpoints=[{tiny_task / 'base'},{tiny_runs / 'dpo' / 'final' / 'adapter'}]", "names=[base,lora_dpo]",
        f"reference={tiny_task / 'base'}", f"prompts={tiny_task / 'data' / 'prompts_eval.jsonl'}", "reward_models=[]",
        f"output={tmp_path / 'compare'}", "progress=false"])
    run_compare(config)
    metrics = json.loads((tmp_path / "compare" / "metrics.json").read_text())
    wins = metrics["win_rates"]["gold"]["lora_dpo"]["base"]
    print(f"LoRA DPO vs base on the gold judge: {wins}")
    assert wins["rate"] >= 0.70 and wins["ci_low"] > 0.5
    assert "/merged/" in metrics["checkpoints"]["lora_dpo"]["path"]


@pytest.mark.slow
def test_lora_sft_and_dpo_on_the_tiny_task_give_plain_models(tiny_runs, tiny_task):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for job in ("sft", "dpo"):
        rows = read_metrics(tiny_runs / job)
        assert all(math.isfinite(row["train/loss"]) for row in rows) and "eval/loss" in rows[-1], job
        final = tiny_runs / job / "final"
        merged = AutoModelForCausalLM.from_pretrained(str(final)).eval()
        through_peft = PeftModel.from_pretrained(load_causal_lm(tiny_task / "base"), str(final / "adapter")).eval()
        ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(merged(ids).logits, through_peft(ids).logits, rtol=0, atol=1e-5)
            assert (merged(ids).logits - load_causal_lm(tiny_task / "base")(ids).logits).abs().max() > 1e-4, job
    dpo = read_metrics(tiny_runs / "dpo")
    assert dpo[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)  # precomputed reference = the base
    assert dpo[-1]["train/rewards/margins"] > 0


@pytest.mark.slow
def test_lora_reward_model_trains_its_score_head_and_loads_as_a_plain_reward_model(tiny_runs, tiny_task):
    from peft import PeftModel
    from safetensors.torch import load_file

    from reward.model import load_reward_model, reward_head_model

    final = tiny_runs / "rm" / "final"
    rows = read_metrics(tiny_runs / "rm")
    assert "eval/accuracy" in rows[-1] and math.isfinite(rows[-1]["train/loss"])
    saved = load_file(final / "adapter" / "adapter_model.safetensors")
    assert any("score" in name for name in saved)  # the head is saved whole beside the adapters
    model, tokenizer = load_reward_model(final)
    base = reward_head_model(tiny_task / "base", torch.float32, tokenizer.pad_token_id)
    through_peft = PeftModel.from_pretrained(base, str(final / "adapter")).eval()
    ids = torch.randint(3, 200, (3, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, through_peft(ids).logits, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def ppo_runs(micro_model, ray_runtime, tmp_path_factory):
    """LoRA PPO (actor and critic adapters, the reference = the actor without them) for 4 steps, twice:
    uninterrupted, and SIGKILLed after checkpoint 2 then resumed. Both through the CLI."""
    from tests.conftest import resume_run, sigkill_after_checkpoint
    from tests.test_ppo import ppo_tree, run_align, write_config

    root = tmp_path_factory.mktemp("lora_ppo")
    settings = {"lora": LORA, "train__max_steps": 4, "train__save_every": 2, "optim__lr": 3e-3}
    straight = root / "straight"
    result = run_align("--config", str(write_config(micro_model, straight, **settings)))
    assert result.returncode == 0, result.stderr[-3000:]
    killed = root / "killed"
    resume_run(sigkill_after_checkpoint("ppo", ppo_tree(micro_model, killed, **settings), killed, 2))
    return straight, killed, result.stdout


@pytest.mark.slow
def test_lora_ppo_reference_is_the_base_weights_reach_the_engine_and_resume_is_exact(ppo_runs, micro_model):
    """Step 1: KL 0 to the adapter-free reference (B = 0); later steps: the engine's log-probs still agree
    with the trainer's (merged weights synced), though the policy moved; final/ is the merged actor and
    final/adapter its PEFT adapter; the killed-and-resumed run ends with the same adapters."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    straight, killed, stdout = ppo_runs
    assert re.search(r"actor trainable [\d.]+M", stdout) and not re.search(r"reference [\d.]+M", stdout), stdout
    rows = read_metrics(straight)
    assert rows[1]["kl/sequence"] == 0.0 and rows[1]["policy/ratio"] == pytest.approx(1.0, abs=1e-5)
    assert rows[-1]["kl/sequence"] != 0.0
    moved = [row["kl/token_estimate"] for row in rows[2:]]
    assert all(row["rollout/mismatch"] < 1.0001 for row in rows[1:]), [r["rollout/mismatch"] for r in rows[1:]]
    assert max(abs(x) for x in moved) > 1e-4, moved  # the policy moved: a stale engine would disagree
    final = straight / "final"
    merged = AutoModelForCausalLM.from_pretrained(str(final)).eval()
    through_peft = PeftModel.from_pretrained(load_causal_lm(micro_model / "model"), str(final / "adapter")).eval()
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, through_peft(ids).logits, rtol=0, atol=1e-5)
    expected, actual = adapter_tensors(final), adapter_tensors(killed / "final")
    assert expected.keys() == actual.keys() and any("lora_B" in name for name in expected)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_lora_ppo_adapter_sync_serves_each_new_adapter_from_vllm(micro_model, ray_runtime, tmp_path):
    """`rollout.lora_sync: adapter`: the engines start with vLLM's LoRA support and get only the adapter's
    files after each step; their log-probs agree with the trainer's on every step while the policy moves
    (a stale adapter would disagree), and each sync sends a fraction of the model's bytes."""
    from tests.test_ppo import run_align, write_config

    output = tmp_path / "adapter_sync"
    settings = {"lora": LORA, "train__max_steps": 4, "train__save_every": 4, "optim__lr": 3e-3,
                "rollout__lora_sync": "adapter"}
    result = run_align("--config", str(write_config(micro_model, output, **settings)))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(output)
    assert all(row["rollout/mismatch"] < 1.0001 for row in rows[1:]), [r["rollout/mismatch"] for r in rows[1:]]
    moved = [row["kl/token_estimate"] for row in rows[2:]]
    assert max(abs(x) for x in moved) > 1e-4, moved
    model_mib = sum(f.stat().st_size for f in (micro_model / "model").glob("*.safetensors")) / 2**20
    synced = [row["sync/mib"] for row in rows[1:]]
    assert all(0 < mib < model_mib / 2 for mib in synced), (synced, model_mib)
