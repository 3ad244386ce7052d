"""RolloutBatch: padding, positions, select/split for ranks and micro-batches."""

from __future__ import annotations

import pickle

import torch

from alignment.ppo.batch import RolloutBatch, equal_shares

PROMPTS = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15]]
RESPONSES = [[1, 2], [3, 4, 5, 6], [7], [8, 9, 10], [2, 2, 2, 2, 2]]


def batch() -> RolloutBatch:
    logprobs = [[-0.1 * (j + 1) - i for j in range(len(r))] for i, r in enumerate(RESPONSES)]
    return RolloutBatch.from_samples(PROMPTS, RESPONSES, logprobs, [True, False, True, True, False], pad_id=0,
                                     prompts=[f"p{i}" for i in range(5)], texts=[f"t{i}" for i in range(5)])


def test_padding_masks_and_positions_follow_each_sample():
    b = batch()
    assert b.input_ids.shape == (5, 7) and b.response_mask.shape == (5, 5)
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        row = b.input_ids[i]
        assert row[: len(prompt) + len(response)].tolist() == prompt + response
        assert row[len(prompt) + len(response) :].tolist() == [0] * (7 - len(prompt) - len(response))
        assert b.response_mask[i].tolist() == [1.0] * len(response) + [0.0] * (5 - len(response))
        # the logits at positions[i, j] predict response token j: input_ids[positions + 1] is that token
        picked = b.input_ids[i, b.positions[i, : len(response)] + 1].tolist()
        assert picked == response
    assert torch.equal(b.loss_mask, b.response_mask)
    assert b.lengths.tolist() == [5, 5, 3, 7, 6]


def test_select_keeps_rows_in_order_and_trims_padding():
    b = batch()
    part = b.select([2, 0])
    assert part.prompts == ["p2", "p0"] and part.texts == ["t2", "t0"]
    assert part.input_ids.shape == (2, 5) and part.response_mask.shape == (2, 2)  # longest of the two
    assert part.input_ids[1].tolist() == [5, 6, 7, 1, 2]
    assert torch.allclose(part.rollout_logprobs, torch.tensor([[-2.1, 0.0], [-0.1, -0.2]]))
    assert part.finished.tolist() == [True, True]


def test_split_gives_equal_shares_that_stack_back():
    b = batch()
    b.advantages = torch.arange(25, dtype=torch.float32).reshape(5, 5) * b.response_mask
    shares = b.split(2)
    assert [len(s) for s in shares] == [3, 3]  # the second padded with sample 0
    assert shares[1].prompts == ["p3", "p4", "p0"]
    stacked = torch.cat([s.advantages for s in shares])[:5]
    assert torch.equal(stacked, b.advantages)  # widths untouched: outputs stack into [B, R]
    assert equal_shares(5, 3) == [[0, 1], [2, 3], [4, 0]]
    assert equal_shares(1, 2) == [[0], [0]]


def test_batch_pickles_as_tensors():
    b = batch()
    again = pickle.loads(pickle.dumps(b))
    assert torch.equal(again.input_ids, b.input_ids) and again.texts == b.texts and again.old_logprobs is None
