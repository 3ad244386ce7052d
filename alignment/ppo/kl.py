"""Per-token KL estimators and KL-coefficient controllers."""

from __future__ import annotations

from typing import Literal

import torch


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: Literal["k1", "k2", "k3"]) -> torch.Tensor:
    """Schulman's estimators of KL(pi || ref) from samples of pi, with r = log pi - log ref.

    k1 = r (unbiased, high variance); k2 = r^2 / 2 (biased, low variance);
    k3 = exp(-r) - 1 + r (unbiased, low variance, always >= 0).
    """
    log_ratio = logprobs.float() - ref_logprobs.float()
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; allowed: k1, k2, k3")


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, coef: float) -> None:
        self.value = coef

    def update(self, current_kl: float, steps: int) -> None:
        return None

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019: move the coefficient so the observed KL tracks ``target``.

    error = clip(KL / target - 1, -0.2, 0.2);  coef *= 1 + error * steps / horizon.
    """

    def __init__(self, coef: float, target: float, horizon: int) -> None:
        super().__init__(coef)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * steps / self.horizon
