"""The bundled tiny task: reproducible, cached, and its base model writes varied reviews of mixed sentiment."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from alignment.tiny.build import TinyBuildConfig, build_tiny
from alignment.tiny.corpus import make_sft_rows, split_titles
from reward.functions import sentiment_judge


def test_corpus_is_seeded_and_of_mixed_sentiment():
    titles, held_out = split_titles(0)
    assert not set(titles) & set(held_out)
    rows = make_sft_rows(0, titles, 600)
    assert rows == make_sft_rows(0, titles, 600)
    assert rows != make_sft_rows(1, titles, 600)
    scores = np.array(sentiment_judge([row["messages"][1]["content"] for row in rows]))
    assert 0.3 < np.mean(scores > 0.05) < 0.7 and 0.25 < np.mean(scores < -0.05) < 0.7


def test_sentiment_judge_orders_obvious_cases():
    good, bad = sentiment_judge(["A wonderful, moving film. Highly recommended.", "An awful, boring mess."])
    assert good > 0.5 and bad < -0.5


def sample_reviews(model_dir, prompts, seed=0, max_new_tokens=96):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    torch.manual_seed(seed)
    texts, ended = [], []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        output = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=True, top_k=0, top_p=1.0,
                                pad_token_id=tokenizer.pad_token_id)[0, ids["input_ids"].shape[1]:]
        ended.append(tokenizer.eos_token_id in output.tolist())
        texts.append(tokenizer.decode(output, skip_special_tokens=True))
    return texts, ended


@pytest.mark.slow
def test_base_model_writes_fluent_varied_reviews_of_mixed_sentiment(tiny_task):
    manifest = json.loads((tiny_task / "manifest.json").read_text())
    assert manifest["fingerprint"] == TinyBuildConfig().fingerprint()
    prompts = [json.loads(line)["prompt"] for line in (tiny_task / "data" / "prompts_eval.jsonl").read_text().splitlines()]
    texts, ended = sample_reviews(tiny_task / "base", prompts[:48])
    assert np.mean(ended) >= 0.9, "reviews should end by themselves"
    assert len(set(texts)) == len(texts), "samples should vary"
    sentences = [s.strip() for text in texts for s in text.split(".") if s.strip()]
    assert np.mean([s[0].isupper() for s in sentences]) > 0.9  # sentence-shaped output
    assert np.median([len(text.split()) for text in texts]) >= 10
    scores = np.array(sentiment_judge(texts))
    assert np.mean(scores > 0.05) > 0.2 and np.mean(scores < -0.05) > 0.2, "tone must vary for alignment to matter"
    metrics = [json.loads(line) for line in (tiny_task / "sft_run" / "metrics.jsonl").read_text().splitlines()]
    eval_losses = [row["eval/loss"] for row in metrics if "eval/loss" in row]
    assert metrics[0]["train/loss"] > 5 and eval_losses[-1] < 1.0 and eval_losses == sorted(eval_losses, reverse=True)


@pytest.mark.slow
def test_build_is_reproducible_and_cached(tmp_path, capsys):
    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".safetensors", ".jsonl", ".json")
                and "sft_run" not in p.parts and p.name != "manifest.json"}

    small = {"steps": 3, "sft_rows": 128, "eval_rows": 16, "hidden_size": 32, "heads": 2, "layers": 1,
             "intermediate_size": 64, "batch_size": 8, "vocab_size": 400}
    first = build_tiny(TinyBuildConfig(out=str(tmp_path / "a"), **small))
    second = build_tiny(TinyBuildConfig(out=str(tmp_path / "b"), **small))
    assert digest(first) == digest(second) and "base/model.safetensors" in digest(first)
    build_tiny(TinyBuildConfig(out=str(tmp_path / "a"), **small))
    assert "reusing it" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.partial"))
