"""Preference losses: known values, TRL's own loss code on the same log-probs, float64 recomputation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from alignment.losses import bradley_terry_loss, preference_loss

BETA = 0.1


def random_logps(pairs: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logps = {name: -torch.rand(pairs, generator=generator, dtype=torch.float32) * 40 - 5
             for name in ("chosen", "rejected", "ref_chosen", "ref_rejected")}
    logps["chosen_lengths"] = torch.randint(3, 30, (pairs,), generator=generator).float()
    logps["rejected_lengths"] = torch.randint(3, 30, (pairs,), generator=generator).float()
    return logps


def ours(loss_type: str, logps: dict, **kwargs):
    return preference_loss(loss_type, logps["chosen"], logps["rejected"], logps["ref_chosen"], logps["ref_rejected"],
                           logps["chosen_lengths"], logps["rejected_lengths"], BETA, **kwargs)


@pytest.mark.parametrize("loss_type", ["sigmoid", "cdpo"])
def test_loss_is_ln2_when_policy_equals_reference(loss_type):
    logps = random_logps()
    logps["ref_chosen"], logps["ref_rejected"] = logps["chosen"].clone(), logps["rejected"].clone()
    losses, chosen, rejected = ours(loss_type, logps, label_smoothing=0.2)
    torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)), rtol=0, atol=1e-7)
    assert chosen.abs().max() == 0 and rejected.abs().max() == 0


def trl_dpo_metrics(loss_type: str, logps: dict) -> tuple[float, dict[str, float]]:
    """Run TRL 1.16's DPOTrainer._compute_loss on a stub model whose per-token log-probs sum to ``logps``."""
    from collections import defaultdict

    from trl import DPOTrainer

    pairs, width = len(logps["chosen"]), 32
    lengths = torch.cat([logps["chosen_lengths"], logps["rejected_lengths"]]).long()
    completion_mask = (torch.arange(width + 1)[None, :] >= width + 1 - lengths[:, None]).long()  # last n tokens
    shift_mask = completion_mask[:, 1:].float()
    per_token = shift_mask * (torch.cat([logps["chosen"], logps["rejected"]]) / lengths)[:, None]
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token).bool())
    model = SimpleNamespace(training=True)
    accelerator = SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t)
    stub = SimpleNamespace(model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
                           precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
                           loss_weights=[1.0], beta=BETA, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
                           _total_train_tokens=0, _tp_size=1, args=SimpleNamespace())
    inputs = {"input_ids": torch.zeros(2 * pairs, width + 1, dtype=torch.long), "attention_mask": torch.ones(2 * pairs, width + 1),
              "completion_mask": completion_mask, "ref_chosen_logps": logps["ref_chosen"],
              "ref_rejected_logps": logps["ref_rejected"]}
    loss = DPOTrainer._compute_loss(stub, lambda **kwargs: outputs, inputs, False)
    return float(loss), {key: values[0] for key, values in stub._metrics["train"].items()}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_and_ipo_match_trl_dpo_trainer(loss_type):
    logps = random_logps(seed=1)
    losses, chosen, rejected = ours(loss_type, logps)
    trl_loss, trl = trl_dpo_metrics(loss_type, logps)
    assert float(losses.mean()) == pytest.approx(trl_loss, abs=1e-5)
    assert float(chosen.mean()) == pytest.approx(trl["rewards/chosen"], abs=1e-5)
    assert float(rejected.mean()) == pytest.approx(trl["rewards/rejected"], abs=1e-5)
    assert float((chosen - rejected).mean()) == pytest.approx(trl["rewards/margins"], abs=1e-5)
    assert float((chosen > rejected).float().mean()) == pytest.approx(trl["rewards/accuracies"], abs=1e-5)
    assert 0 < trl["rewards/accuracies"] < 1  # the batch has both signs, so accuracy is checked for real


def trl_cpo_loss(loss_type: str, chosen: torch.Tensor, rejected: torch.Tensor, label_smoothing: float, gamma: float):
    """TRL's CPOTrainer.cpo_loss (where TRL 1.16 keeps SimPO and label-smoothed sigmoid) on given inputs."""
    from trl.experimental.cpo import CPOTrainer

    stub = SimpleNamespace(alpha=0.0, beta=BETA, label_smoothing=label_smoothing, loss_type=loss_type,
                           simpo_gamma=gamma, accelerator=SimpleNamespace(device="cpu"))
    return CPOTrainer.cpo_loss(stub, chosen, rejected)


def test_cdpo_matches_trl_label_smoothed_sigmoid():
    """cDPO is TRL's label-smoothed sigmoid loss applied to the log-ratios."""
    logps = random_logps(seed=2)
    losses, _, _ = ours("cdpo", logps, label_smoothing=0.2)
    expected, _, _ = trl_cpo_loss("sigmoid", logps["chosen"] - logps["ref_chosen"],
                                  logps["rejected"] - logps["ref_rejected"], 0.2, 0.0)
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-5)
    plain, _, _ = ours("sigmoid", logps, label_smoothing=0.2)  # smoothing applies to cdpo only
    assert not torch.allclose(plain, losses)


def test_simpo_matches_trl_cpo_trainer():
    logps = random_logps(seed=3)
    losses, chosen, rejected = ours("simpo", logps, gamma=0.7)
    average_chosen = logps["chosen"] / logps["chosen_lengths"]
    average_rejected = logps["rejected"] / logps["rejected_lengths"]
    expected, trl_chosen, trl_rejected = trl_cpo_loss("simpo", average_chosen, average_rejected, 0.0, 0.7)
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(chosen, trl_chosen, rtol=0, atol=1e-5)
    torch.testing.assert_close(rejected, trl_rejected, rtol=0, atol=1e-5)


def test_bradley_terry_matches_float64_recomputation():
    generator = torch.Generator().manual_seed(4)
    chosen, rejected = torch.randn(16, generator=generator) * 3, torch.randn(16, generator=generator) * 3
    margin = torch.rand(16, generator=generator)
    losses = bradley_terry_loss(chosen, rejected, margin, centering_coef=0.01)
    c, r, m = chosen.double().tolist(), rejected.double().tolist(), margin.double().tolist()
    expected = [math.log1p(math.exp(-(a - b - k))) + 0.01 * (a + b) ** 2 for a, b, k in zip(c, r, m)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert bradley_terry_loss(chosen, rejected).tolist() != pytest.approx(losses.tolist())


def test_unknown_loss_type_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown DPO loss type 'kto'"):
        ours("kto", random_logps())
