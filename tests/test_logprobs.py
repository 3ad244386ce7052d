"""token_logprobs and entropies against a float64 loop over positions."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.logprobs import entropies, token_logprobs


def reference(logits, row, position, target, temperature=1.0):
    z = [float(x) / temperature for x in logits[row, position].double()]
    top = max(z)
    log_total = top + math.log(sum(math.exp(v - top) for v in z))
    p = [math.exp(v - log_total) for v in z]
    return z[target] - log_total, -sum(q * math.log(q) for q in p)


def test_aligned_and_indexed_reads_equal_a_float64_loop():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 9, generator=generator) * 3
    targets = torch.randint(0, 9, (3, 6), generator=generator)
    targets[1, :2] = -100  # IGNORE_INDEX
    got = token_logprobs(logits, targets, temperature=0.7)
    for i in range(3):
        for t in range(6):
            expected = 0.0 if targets[i, t] < 0 else reference(logits, i, t, int(targets[i, t]), 0.7)[0]
            assert float(got[i, t]) == pytest.approx(expected, abs=1e-5)

    rows = torch.tensor([[2], [0]])
    positions = torch.tensor([[5, 1, 3], [0, 0, 4]])
    picked = torch.tensor([[1, 2, 3], [4, 5, 6]])
    got = token_logprobs(logits, picked, rows, positions)
    entropy = entropies(logits, rows, positions)
    for a in range(2):
        for b in range(3):
            logp, h = reference(logits, int(rows[a, 0]), int(positions[a, b]), int(picked[a, b]))
            assert float(got[a, b]) == pytest.approx(logp, abs=1e-5)
            assert float(entropy[a, b]) == pytest.approx(h, abs=1e-5)
