"""SFT through real Ray actors and real DeepSpeed, checked against a single-process PyTorch loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignment.data import IGNORE_INDEX, StepSampler, load_sft_examples, pad_batch, split_holdout
from alignment.models import load_tokenizer
from alignment.sft import run_sft
from tests.conftest import read_metrics, sft_config

STEPS = 4


def plain_pytorch_losses(config) -> tuple[list[float], list[float], dict[str, torch.Tensor]]:
    """The same job as one process with torch.optim.AdamW and no DeepSpeed: loss and gradient norm (before
    clipping) per step, final weights."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(config.model)
    examples = load_sft_examples(config.data.train, tokenizer, config.data)
    train, _ = split_holdout(examples, config.data.eval_fraction, config.train.seed)
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, betas=config.optim.betas,
                                  eps=config.optim.eps, weight_decay=config.optim.weight_decay)
    sampler = StepSampler(len(train), config.train.global_batch_size, config.train.seed)
    losses, norms = [], []
    for step in range(STEPS):
        batch = pad_batch([train[i] for i in sampler.indices(step)], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction="sum") / (labels != IGNORE_INDEX).sum()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.strategy.grad_clip)))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, norms, {k: v.detach() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference(micro_model, tmp_path_factory):
    return plain_pytorch_losses(sft_config(micro_model, tmp_path_factory.mktemp("ref"), train__max_steps=STEPS))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_zero_stages_match_single_process_pytorch(stage, micro_model, reference, ray_runtime, tmp_path):
    from transformers import AutoModelForCausalLM

    config = sft_config(micro_model, tmp_path / "run", strategy__zero_stage=stage, train__max_steps=STEPS)
    final = run_sft(config)

    expected_losses, expected_norms, expected_weights = reference
    metrics = read_metrics(tmp_path / "run")
    assert [row["step"] for row in metrics] == list(range(1, STEPS + 1))
    assert [row["train/loss"] for row in metrics] == pytest.approx(expected_losses, rel=1e-5)
    assert [row["train/grad_norm"] for row in metrics] == pytest.approx(expected_norms, rel=1e-4)  # ZeRO-0 too
    assert expected_losses[-1] < expected_losses[0]  # it learned

    trained = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32).state_dict()
    # Adam divides by sqrt(v): on a weight whose gradient is ~0, 1e-9 rounding differences between the
    # ranks' reduction and one process's move it by up to a fraction of a step (lr = 3e-3). So: every
    # weight within a tenth of one Adam step, and all but 0.1% of each tensor within 1e-5.
    for name, value in expected_weights.items():
        difference = (trained[name] - value).abs()
        assert float(difference.max()) < 3e-4, name
        assert float((difference > 1e-5).float().mean()) <= 1e-3, name


@pytest.mark.slow
def test_run_writes_metrics_tensorboard_and_loadable_checkpoints(micro_model, ray_runtime, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = run_sft(sft_config(micro_model, tmp_path, train__max_steps=4))
    rows = read_metrics(tmp_path)
    assert all({"train/loss", "train/lr", "train/grad_norm", "time/step_s"} <= row.keys() for row in rows)
    assert [row["step"] for row in rows if "eval/loss" in row] == [2, 4]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000002", "step_00000004"]

    model = AutoModelForCausalLM.from_pretrained(str(final))
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Review the movie X."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert output.shape[1] > prompt["input_ids"].shape[1]
