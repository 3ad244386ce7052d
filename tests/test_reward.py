"""Reward model: rankings expansion, float64 loss check, resume, serving; tiny-task accuracy (slow)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from alignment.config import PreferenceDataConfig, RMConfig
from alignment.errors import AlignError
from alignment.preference_data import check_preference_rows, load_train_eval, pair_batch, row_pairs
from reward.model import RewardScorer, load_reward_model
from reward.train import run_rm
from tests.conftest import read_metrics, resume_run, sigkill_after_checkpoint
from tests.preference_helpers import preference_tree


def ranking_file(micro_model, count: int = 40):
    rows = [json.loads(line) for line in (micro_model / "sft.jsonl").read_text().splitlines()][:count]
    path = micro_model / "rankings.jsonl"
    with path.open("w") as handle:
        for row in rows:
            review = row["messages"][-1]["content"]
            words = review.split()
            responses = [review, " ".join(reversed(words)), " ".join(words[::2])]
            handle.write(json.dumps({"prompt": row["messages"][0]["content"], "responses": responses,
                                     "ranks": [1, 2, 2]}) + "\n")
    return path


def test_rankings_expand_into_ordered_pairs_and_ties_give_none():
    config = PreferenceDataConfig(train="unused")
    pairs = row_pairs({"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [2, 1, 3, 1]}, config)
    got = [(chosen, rejected) for _, chosen, rejected, _ in pairs]  # text rows stay text (TRL's standard format)
    assert sorted(got) == sorted([("b", "a"), ("a", "c"), ("d", "a"), ("b", "c"), ("d", "c")])  # b/d tie: no pair


def test_bad_ranking_rows_name_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2]}\n\n'
                    '{"prompt": "p", "responses": ["a", "b"], "ranks": [1]}\n')
    with pytest.raises(AlignError, match=r"r.jsonl:3: 'responses' and 'ranks' must be lists of the same length"):
        check_preference_rows(path, PreferenceDataConfig(train=str(path)))
    with pytest.raises(Exception, match="use_margin needs data.margin_field"):
        RMConfig.model_validate({"model": "m", "output_dir": "o", "data": {"train": "t"}, "reward": {"use_margin": True}})


def test_prefix_shared_rows_give_the_rewards_of_separate_rows(micro_model):
    """Rewards read at each sequence's last token of a prefix-shared row = the model's pooled rewards
    of one padded row per sequence, in float64."""
    from transformers import AutoModelForSequenceClassification

    from alignment.models import load_tokenizer
    from alignment.pair_packing import pack_pairs
    from alignment.preference_data import load_preference_pairs
    from reward.train import pair_rewards

    tokenizer = load_tokenizer(micro_model / "model")
    path = ranking_file(micro_model, count=6)
    pairs = load_preference_pairs(path, tokenizer, PreferenceDataConfig(train=str(path)))
    model = AutoModelForSequenceClassification.from_pretrained(str(micro_model / "model"), num_labels=1,
                                                               dtype=torch.float64).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        padded = pair_rewards(model, pair_batch(pairs, tokenizer.pad_token_id), len(pairs))
        packed = pair_rewards(model, pack_pairs([(p.chosen, p.rejected) for p in pairs], tokenizer.pad_token_id,
                                                torch.float64), len(pairs))
    for expected, got in zip(padded, packed):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    sequences = {tuple(e.input_ids) for p in pairs for e in (p.chosen, p.rejected)}
    assert len(set(padded[0].tolist() + padded[1].tolist())) == len(sequences) > len(pairs)  # each scored on its own


@pytest.fixture(scope="module")
def rm_run(micro_model, ray_runtime, tmp_path_factory):
    output = tmp_path_factory.mktemp("rm") / "run"
    tree = preference_tree(micro_model, output, data__train=str(ranking_file(micro_model)), reward__center_coef=0.01)
    config = RMConfig.model_validate(tree)
    final = run_rm(config)
    kept = output.parent / "final_copy"
    shutil.copytree(final, kept)
    return config, output, kept


@pytest.mark.slow
def test_rm_eval_loss_matches_float64_recomputation(rm_run):
    """eval/loss at the last step uses the final weights: recompute it in float64 from the saved model."""
    config, output, final = rm_run
    model, tokenizer = load_reward_model(final, dtype=torch.float64)
    _, held_out = load_train_eval(config.data, tokenizer, config.train.seed)
    batch = pair_batch(held_out, tokenizer.pad_token_id)
    with torch.no_grad():
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].tolist()
    n = len(held_out)
    expected = sum(math.log1p(math.exp(-(c - r))) + 0.01 * (c + r) ** 2
                   for c, r in zip(rewards[:n], rewards[n:])) / n
    last = read_metrics(output)[-1]
    assert last["eval/loss"] == pytest.approx(expected, rel=1e-5)
    assert last["eval/accuracy"] == pytest.approx(sum(c > r for c, r in zip(rewards[:n], rewards[n:])) / n)
    assert last["eval/loss"] < read_metrics(output)[0]["train/loss"]  # it learned


@pytest.mark.slow
def test_rm_sigkill_after_checkpoint_then_resume_gives_identical_weights(rm_run, tmp_path):
    """`align rm` killed (SIGKILL, whole process tree) right after checkpoint 2, then `--resume`."""
    from safetensors.torch import load_file

    config, _, final = rm_run
    output = tmp_path / "killed"
    tree = config.model_copy(update={"output_dir": str(output)}).model_dump(mode="json")
    command = sigkill_after_checkpoint("rm", tree, output, 2)
    assert not (output / "final").exists()
    assert "at step 2" in resume_run(command)
    expected = load_file(final / "model.safetensors")
    for name, value in load_file(output / "final" / "model.safetensors").items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_reward_server_scores_in_batches_like_one_by_one(rm_run, ray_runtime):
    from reward.model import RewardServer

    _, _, final = rm_run
    prompts = ["Review the movie X.", [{"role": "user", "content": "What did you think of Y?"}], "Review Z."]
    responses = ["I loved it.", "It is a boring mess and a waste of time.", "Fine."]
    server = RewardServer.remote(str(final), batch_size=2)
    batched = ray_runtime.get(server.score.remote(prompts, responses))
    local = RewardScorer(final, batch_size=1)
    assert batched == pytest.approx(local.score(prompts, responses), abs=1e-5)
    assert len(set(batched)) == 3
    ray_runtime.kill(server)
