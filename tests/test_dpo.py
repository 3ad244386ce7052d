"""DPO through real Ray actors and DeepSpeed on the micro model: step-0 loss, metrics, precompute, resume, errors."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from alignment.config import DPOConfig
from alignment.dpo import run_dpo
from alignment.errors import AlignError
from tests.conftest import read_metrics, resume_run, sigkill_after_checkpoint
from tests.preference_helpers import preference_tree

TRL_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
             "logps/chosen", "logps/rejected")


def dpo_config(micro_model, output_dir, **overrides) -> DPOConfig:
    return DPOConfig.model_validate(preference_tree(micro_model, output_dir, **overrides))


def final_weights(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def test_sequence_logps_equal_a_float64_per_sequence_recomputation(micro_model):
    """Response-token log-prob sums with prompts of different lengths and right padding (logits only
    from the first response position on) = full-logit float64 sums, one sequence at a time."""
    from alignment.data import IGNORE_INDEX, TokenizedExample, pad_batch
    from alignment.dpo import sequence_logps
    from alignment.models import load_causal_lm

    model = load_causal_lm(micro_model / "model").eval()
    generator = torch.Generator().manual_seed(1)
    examples = []
    for prompt_len, response_len in [(6, 5), (3, 9), (11, 2), (4, 1)]:
        ids = torch.randint(3, 300, (prompt_len + response_len,), generator=generator).tolist()
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt_len + ids[prompt_len:]))
    with torch.no_grad():
        logps, counts = sequence_logps(model, pad_batch(examples, pad_id=0))
        model64 = model.double()
        for row, example in enumerate(examples):
            log_probs = torch.log_softmax(model64(input_ids=torch.tensor([example.input_ids])).logits[0], -1)
            expected = sum(log_probs[t - 1, token].item() for t, token in enumerate(example.labels) if token != IGNORE_INDEX)
            assert logps[row].item() == pytest.approx(expected, abs=1e-4)
            assert counts[row].item() == sum(token != IGNORE_INDEX for token in example.labels)


def test_prefix_shared_rows_give_each_sequence_its_own_log_probs(micro_model):
    """Pairs packed one row each (shared prefix once, 4D mask, own positions) = float64 sums over each
    sequence alone: prompts of different lengths, responses that open alike, a rejected that is a
    prefix of chosen, identical responses, and padding rows."""
    from alignment.data import IGNORE_INDEX, TokenizedExample
    from alignment.models import load_causal_lm
    from alignment.pair_packing import pack_pairs, packed_logps, shared_prefix_length

    model = load_causal_lm(micro_model / "model").eval()
    generator = torch.Generator().manual_seed(2)

    def tokens(n: int) -> list[int]:
        return torch.randint(3, 300, (n,), generator=generator).tolist()

    def example(prompt: list[int], response: list[int]) -> TokenizedExample:
        return TokenizedExample(prompt + response, [IGNORE_INDEX] * len(prompt) + response)

    pairs, shared = [], []
    for prompt_len, chosen, rejected in [(6, tokens(5), tokens(9)), (3, tokens(2), tokens(2))]:
        prompt = tokens(prompt_len)
        pairs.append((example(prompt, chosen), example(prompt, rejected)))
    opening, prompt = tokens(4), tokens(5)
    pairs.append((example(prompt, opening + tokens(3)), example(prompt, opening + tokens(6))))  # responses open alike
    response = tokens(7)
    pairs.append((example(prompt, response), example(prompt, response[:3])))  # rejected = a prefix of chosen
    pairs.append((example(prompt, response), example(prompt, response)))  # identical: one own token each
    shared = [shared_prefix_length(c.input_ids, r.input_ids) for c, r in pairs]
    assert shared[2] == 9 and shared[3] == 7 and shared[4] == 11
    with torch.no_grad():
        logps, counts = packed_logps(model, pack_pairs(pairs, pad_id=0))
        model64 = model.double()
        sequences = [c for c, _ in pairs] + [r for _, r in pairs]
        for row, sequence in enumerate(sequences):
            log_probs = torch.log_softmax(model64(input_ids=torch.tensor([sequence.input_ids])).logits[0], -1)
            expected = sum(log_probs[t - 1, token].item() for t, token in enumerate(sequence.labels) if token != IGNORE_INDEX)
            assert logps[row].item() == pytest.approx(expected, abs=1e-4), row
            assert counts[row].item() == sum(token != IGNORE_INDEX for token in sequence.labels)


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
    """ZeRO-3 (sharded policy and reference, precomputed log-probs gathered across ranks, one padded
    row per sequence) vs ZeRO-2 on the fly with chosen and rejected sharing their prefix in one row."""
    output, expected_final = on_the_fly
    final = run_dpo(dpo_config(micro_model, tmp_path / "pre", dpo__precompute_ref_logps=True, strategy__zero_stage=3,
                               data__share_prefix=False))
    expected = [row["train/loss"] for row in read_metrics(output)]
    assert [row["train/loss"] for row in read_metrics(tmp_path / "pre")] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    reference = final_weights(expected_final)
    # Different batch shapes round differently (~1e-7 in log-probs); Adam turns that into up to ~1e-4 on
    # the few weights whose gradient is near 0 (its first steps move each weight by ~lr = 3e-3 whatever
    # the gradient's size). So: every weight within a tenth of one step, all but 0.1% within 1e-5.
    differences = torch.cat([(value - reference[name]).abs().flatten() for name, value in final_weights(final).items()])
    assert float(differences.max()) < 3e-4
    assert int((differences > 1e-5).sum()) <= differences.numel() // 1000


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_gives_identical_weights(on_the_fly, micro_model, tmp_path):
    """`align dpo` killed (SIGKILL, whole process tree) right after checkpoint 2, then `--resume`: the
    uninterrupted run's weights, bit for bit."""
    _, expected_final = on_the_fly
    output = tmp_path / "killed"
    command = sigkill_after_checkpoint("dpo", preference_tree(micro_model, output), output, 2)
    assert not (output / "final").exists()
    assert "at step 2" in resume_run(command)  # it really continued from the mid-run checkpoint
    reference = final_weights(expected_final)
    for name, value in final_weights(output / "final").items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0, msg=name)
    assert [row["step"] for row in read_metrics(output)] == [1, 2, 3, 4]


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
