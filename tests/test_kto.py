"""KTO: the loss against a float64 formula, a step through Ray and DeepSpeed against TRL 1.16's KTOTrainer,
learning, SIGKILL and resume, LoRA's reference for free, and bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from alignment.config import KTOConfig
from alignment.errors import AlignError
from alignment.kto import run_kto
from alignment.losses import kto_loss, kto_reference_point
from tests.conftest import read_metrics, resume_run, sigkill_after_checkpoint, write_jsonl
from tests.preference_helpers import preference_tree


def feedback_rows(micro_model, count: int) -> list[dict]:
    """Text rows from the micro model's SFT data: the review is desirable, its words reversed undesirable
    (alternating, so every batch holds both kinds)."""
    rows = [json.loads(line) for line in (micro_model / "sft.jsonl").read_text().splitlines()]
    out = []
    for i in range(count):
        prompt = next(m["content"] for m in rows[i]["messages"] if m["role"] == "user")
        review = rows[i]["messages"][-1]["content"]
        desirable = i % 3 != 2
        out.append({"prompt": prompt, "completion": " " + (review if desirable else " ".join(reversed(review.split()))),
                    "label": desirable})
    return out


def kto_tree(micro_model, output_dir, rows: list[dict], **overrides) -> dict:
    """The DPO tests' tree (4 steps of 8, micro-batch 2 on 2 ranks, ZeRO-2) on feedback rows, in file order."""
    data = write_jsonl(output_dir.parent / f"{output_dir.name}.jsonl", rows)
    return preference_tree(micro_model, output_dir, **{"data__train": str(data), "data__eval_fraction": 0.0,
                                                       "data__shuffle": False, "kto__beta": 0.5, **overrides})


def test_kto_loss_equals_the_float64_formula():
    generator = torch.Generator().manual_seed(0)
    logratios = torch.randn(64, generator=generator, dtype=torch.float64) * 3
    desirable = torch.rand(64, generator=generator) < 0.6
    kl = torch.randn(64, generator=generator, dtype=torch.float64)
    z0 = kto_reference_point(kl)
    assert float(z0) == pytest.approx(max(0.0, sum(kl.tolist()) / 64))
    assert float(kto_reference_point(kl - 10)) == 0.0  # never below zero
    beta, w_d, w_u = 0.3, 1.5, 0.7
    losses = kto_loss(logratios.float(), desirable, float(z0), beta, w_d, w_u)
    for value, r, good in zip(losses.tolist(), logratios.tolist(), desirable.tolist(), strict=True):
        v = 1 / (1 + math.exp(-beta * ((r - float(z0)) if good else (float(z0) - r))))
        assert value == pytest.approx((w_d if good else w_u) * (1 - v), abs=1e-6)
    apo = kto_loss(logratios.float(), desirable, 123.0, beta, loss_type="apo_zero_unpaired")  # z0 plays no part
    for value, r, good in zip(apo.tolist(), logratios.tolist(), desirable.tolist(), strict=True):
        sigma = 1 / (1 + math.exp(-beta * r))
        assert value == pytest.approx(1 - sigma if good else sigma, abs=1e-6)


def perturbed_reference(micro_model, directory):
    """The micro model with noise on every weight: a reference that differs from the policy, so that
    log-ratios and the KL estimate are not all zero."""
    from alignment.models import load_causal_lm, load_tokenizer

    torch.manual_seed(1)
    model = load_causal_lm(micro_model / "model")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(directory)
    load_tokenizer(micro_model / "model").save_pretrained(directory)
    return directory


def trl_first_step(model, reference, rows: list[dict], tmp_path, beta: float) -> dict:
    """TRL 1.16's KTOTrainer on ``rows`` as one batch: its logged loss and KL of step 1."""
    import datasets
    from trl import KTOConfig as TRLKTOConfig
    from trl import KTOTrainer

    from alignment.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    args = TRLKTOConfig(output_dir=str(tmp_path / "trl"), report_to=[], bf16=False, use_cpu=True, beta=beta,
                        per_device_train_batch_size=len(rows), max_steps=1, logging_steps=1, learning_rate=1e-3,
                        max_length=96, dataset_num_proc=None, save_strategy="no", train_sampling_strategy="sequential")
    trainer = KTOTrainer(model=load_causal_lm(model), ref_model=load_causal_lm(reference),
                         args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=load_tokenizer(model))
    trainer.train()
    return trainer.state.log_history[0]


@pytest.mark.slow
def test_a_step_on_two_zero3_ranks_equals_trl_kto_trainer(micro_model, ray_runtime, tmp_path):
    """8 rows in one global batch, split over 2 ranks x 2 micro-batches under ZeRO-3, against a reference
    that differs from the policy: z0 is estimated over the whole batch, so loss and KL are those of TRL's
    single batch of 8."""
    rows = feedback_rows(micro_model, 8)
    reference = perturbed_reference(micro_model, tmp_path / "reference")
    theirs = trl_first_step(micro_model / "model", reference, rows, tmp_path, beta=0.5)
    output = tmp_path / "ours"
    run_kto(KTOConfig.model_validate(kto_tree(micro_model, output, rows, strategy__zero_stage=3, train__max_steps=1,
                                              kto__reference=str(reference))))
    first = read_metrics(output)[0]
    assert theirs["kl"] > 0.1  # a real KL term, not the clamp at 0
    assert first["train/kl"] == pytest.approx(theirs["kl"], rel=1e-5)  # sums of ~100 float32 log-probs each
    assert first["train/loss"] == pytest.approx(theirs["loss"], abs=1e-5)
    assert abs(first["train/loss"] - 0.5) > 1e-3  # not the policy == reference value


@pytest.fixture(scope="module")
def uninterrupted(micro_model, ray_runtime, tmp_path_factory):
    root = tmp_path_factory.mktemp("kto")
    rows = feedback_rows(micro_model, 40)
    output = root / "run"
    final = run_kto(KTOConfig.model_validate(kto_tree(micro_model, output, rows, data__eval_fraction=0.2)))
    kept = root / "final_copy"
    shutil.copytree(final, kept)
    return rows, output, kept


@pytest.mark.slow
def test_kto_learns_to_raise_desirable_and_lower_undesirable_answers(uninterrupted):
    _, output, _ = uninterrupted
    rows = read_metrics(output)
    evaluated = [row for row in rows if "eval/loss" in row]
    assert [row["step"] for row in evaluated] == [2, 4]
    assert evaluated[-1]["eval/loss"] < 0.5  # below the starting 1 - sigmoid(0)
    assert evaluated[-1]["eval/rewards/signed"] > 0
    assert rows[-1]["train/kl"] >= 0 and rows[0]["train/kl"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < rows[0]["train/desirable"] < 1


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_gives_identical_weights(uninterrupted, micro_model, tmp_path):
    from safetensors.torch import load_file

    rows, _, expected_final = uninterrupted
    output = tmp_path / "killed"
    command = sigkill_after_checkpoint("kto", kto_tree(micro_model, output, rows, data__eval_fraction=0.2), output, 2)
    assert not (output / "final").exists()
    assert "at step 2" in resume_run(command)
    reference = load_file(expected_final / "model.safetensors")
    for name, value in load_file(output / "final" / "model.safetensors").items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0, msg=name)
    assert [row["step"] for row in read_metrics(output)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_lora_kto_uses_the_policy_without_adapters_as_reference(micro_model, ray_runtime, tmp_path):
    """With LoRA there is no reference engine; at step 1 policy == reference, so the loss is 0.5 and
    z0 is 0, and precomputed reference log-probs give the same run."""
    rows = feedback_rows(micro_model, 16)
    losses = []
    for name, precompute in (("fly", False), ("pre", True)):
        output = tmp_path / name
        run_kto(KTOConfig.model_validate(kto_tree(micro_model, output, rows, lora={"rank": 4, "alpha": 8},
                                                  kto__precompute_ref_logps=precompute, train__max_steps=2)))
        metrics = read_metrics(output)
        assert metrics[0]["train/loss"] == pytest.approx(0.5, abs=1e-6)
        losses.append([row["train/loss"] for row in metrics])
        assert (output / "final" / "adapter" / "adapter_config.json").is_file()
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert losses[0][1] < 0.5


def test_bad_rows_and_configs_are_clear_errors(micro_model, tmp_path):
    rows = feedback_rows(micro_model, 4)
    rows[2]["label"] = "yes"
    config = KTOConfig.model_validate(kto_tree(micro_model, tmp_path / "out", rows))
    with pytest.raises(AlignError, match=r"out.jsonl:3: field 'label' must be true or false, got 'yes'"):
        run_kto(config)
    del rows[2]["label"]
    with pytest.raises(AlignError, match=r"out.jsonl:3: .*missing \['label'\]"):
        run_kto(KTOConfig.model_validate(kto_tree(micro_model, tmp_path / "out", rows)))
    assert not (tmp_path / "out").exists()  # nothing started
    with pytest.raises(Exception, match="global_batch_size must be at least 2"):
        KTOConfig.model_validate(kto_tree(micro_model, tmp_path / "out", rows, train__global_batch_size=1,
                                          train__micro_batch_size=1, cluster__num_workers=1))
    with pytest.raises(Exception, match="loss_type"):
        KTOConfig.model_validate(kto_tree(micro_model, tmp_path / "out", rows, kto__loss_type="sigmoid"))


def test_pair_rows_unpair_and_mismatched_sequences_cross_prompts(micro_model, tmp_path):
    from alignment.config import FeedbackDataConfig
    from alignment.data import IGNORE_INDEX
    from alignment.feedback_data import load_train_eval, prompt_length
    from alignment.models import load_tokenizer

    rows = [{"prompt": "Review A.", "chosen": " A is good.", "rejected": " Bad."},
            {"prompt": "Review B.", "completion": " B is fine.", "label": False}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    tokenizer = load_tokenizer(micro_model / "model")
    train, held_out = load_train_eval(FeedbackDataConfig(train=str(path), eval_fraction=0), tokenizer, 0)
    assert held_out == [] and [e.desirable for e in train] == [True, False, False]
    # Examples 0 and 1 share prompt A: each pairs with the nearest earlier example of another prompt (B).
    completion_b = train[2].example.input_ids[prompt_length(train[2].example):]
    for example in train[:2]:
        prompt_a = example.example.input_ids[: prompt_length(example.example)]
        assert example.mismatched.input_ids == prompt_a + completion_b
        assert example.mismatched.labels == [IGNORE_INDEX] * len(prompt_a) + completion_b
    completion_a_bad = train[1].example.input_ids[prompt_length(train[1].example):]
    assert train[2].mismatched.input_ids[-len(completion_a_bad):] == completion_a_bad
