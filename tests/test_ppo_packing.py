"""Prompt-shared rows (alignment.ppo.packing): the same log-probs, entropies, values and gradients as
one padded row per sample, on ragged GRPO-like batches. The model runs in float64; the log-prob
formula reads its logits in float32 (alignment.logprobs), so results agree to float32 rounding."""

from __future__ import annotations

import pytest
import torch

from alignment.ppo.batch import RolloutBatch
from alignment.ppo.packing import prompt_grouped_chunks, shared_rows


def grouped_batch(seed: int, groups: list[tuple[int, list[int]]]) -> RolloutBatch:
    """Samples of a few prompts (prompt length, response lengths), interleaved as a shuffled minibatch is."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for prompt_len, response_lens in groups:
        prompt = torch.randint(3, 300, (prompt_len,), generator=generator).tolist()
        samples += [(prompt, torch.randint(3, 300, (n,), generator=generator).tolist()) for n in response_lens]
    order = torch.randperm(len(samples), generator=generator).tolist()
    samples = [samples[i] for i in order]
    return RolloutBatch.from_samples([p for p, _ in samples], [r for _, r in samples],
                                     [[0.0] * len(r) for _, r in samples], [True] * len(samples), pad_id=0)


GROUPS = [(6, [7, 1, 12, 3]), (11, [2, 9]), (3, [5, 5, 14])]


@pytest.mark.parametrize("row_tokens", [512, 20])  # 20: a prompt's samples spread over several rows
def test_shared_rows_give_the_padded_rows_log_probs_entropies_and_gradients(micro_model, row_tokens):
    from alignment.models import load_causal_lm
    from alignment.ppo.worker import response_logprobs

    model = load_causal_lm(micro_model / "model").double().eval()
    batch = grouped_batch(0, GROUPS)
    mask = batch.response_mask.double()
    rows = shared_rows(batch, torch.float64, row_tokens)
    if row_tokens == 512:
        assert rows.input_ids.shape[0] == 3  # one row per prompt
        assert rows.input_ids.numel() < batch.input_ids.numel() / 2
    else:
        assert rows.input_ids.shape[0] > 3

    results = {}
    for name, how in (("padded", None), ("shared", rows)):
        model.zero_grad()
        logprobs, entropy = response_logprobs(model, batch, 0.7, "grad", how)
        ((logprobs * mask).sum() + 0.1 * (entropy * mask).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[name] = (logprobs * mask, entropy * mask, grads)
    (logprobs, entropy, grads), (shared_logprobs, shared_entropy, shared_grads) = results["padded"], results["shared"]
    torch.testing.assert_close(shared_logprobs, logprobs, rtol=0, atol=1e-6)
    torch.testing.assert_close(shared_entropy, entropy, rtol=0, atol=1e-6)
    # the first response token of every sample is read at the prompt's one last position: its gradient is a
    # float32 sum over the samples, one rounding per term
    assert (shared_grads - grads).abs().max() <= 1e-5 * grads.abs().max()
    assert grads.abs().max() > 0


def test_shared_rows_give_the_critics_values(micro_model):
    from transformers import AutoModelForTokenClassification

    from alignment.ppo.worker import response_values

    critic = AutoModelForTokenClassification.from_pretrained(micro_model / "model", num_labels=1).double().eval()
    batch = grouped_batch(1, GROUPS)
    with torch.no_grad():
        padded = response_values(critic, batch) * batch.response_mask
        shared = response_values(critic, batch, shared_rows(batch, torch.float64)) * batch.response_mask
    torch.testing.assert_close(shared, padded, rtol=0, atol=1e-10)


def test_prompt_grouped_chunks_keep_a_prompts_samples_together_and_every_sample_once():
    batch = grouped_batch(2, [(4, [3] * 8), (5, [2] * 8), (6, [1] * 8), (7, [4] * 8)])
    indices = list(range(0, 32, 2)) + list(range(1, 32, 2))[:8]  # 24 samples of a shuffled minibatch
    chunks = prompt_grouped_chunks(batch, indices, 8)
    assert len(chunks) == 3 and all(len(c) == 8 for c in chunks)
    assert sorted(i for c in chunks for i in c) == sorted(indices)
    prompts = [[tuple(batch.input_ids[i, : batch.prompt_lengths[i]].tolist()) for i in c] for c in chunks]
    # grouped: the samples of a prompt are contiguous, so 4 prompts over 3 chunks means at most 6 pieces
    assert sum(len(set(p)) for p in prompts) <= 4 + len(chunks) - 1
