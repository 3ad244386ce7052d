"""Preference losses: the DPO family, KTO on unpaired feedback, and the Bradley-Terry reward-model loss.

Each function maps per-pair sequence log-probabilities (summed over response tokens) to a
per-pair loss; callers sum or average. Shapes are ``(pairs,)`` throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "cdpo", "ipo", "simpo")
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


def dpo_sigmoid_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float,
                     label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7), and cDPO when ``label_smoothing`` = eps > 0.

    h = beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))]
    loss = -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)

    cDPO (conservative DPO, Mitchell 2023) assumes each label is flipped with probability eps.
    At the start, policy == reference, h = 0 and the loss is ln 2 for every pair.
    """
    logits = beta * (chosen_logratios - rejected_logratios)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, chosen_lengths: torch.Tensor,
             rejected_lengths: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17): (h - 1 / (2 tau))^2 with tau = ``beta``.

    h is the difference of the *per-token averaged* log-ratios of chosen and rejected, as in TRL
    (the IPO authors' normalisation), so the target margin does not scale with response length.
    """
    chosen = chosen_logratios / chosen_lengths.clamp(min=1)
    rejected = rejected_logratios / rejected_lengths.clamp(min=1)
    return (chosen - rejected - 1 / (2 * beta)) ** 2


def simpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_lengths: torch.Tensor,
               rejected_lengths: torch.Tensor, beta: float, gamma: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """SimPO (Meng et al. 2024, eq. 6): reference-free, length-normalised, with target margin gamma.

    loss = -log sigmoid(beta / |y_w| log pi(y_w|x) - beta / |y_l| log pi(y_l|x) - gamma)
    (with optional label smoothing as in cDPO).
    """
    logits = beta * (chosen_logps / chosen_lengths.clamp(min=1) - rejected_logps / rejected_lengths.clamp(min=1)) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def preference_loss(loss_type: str, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None,
                    chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, beta: float,
                    label_smoothing: float = 0.0, gamma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) for one of :data:`DPO_LOSS_TYPES`.

    Implicit rewards are beta * log-ratio for DPO/cDPO/IPO (as TRL logs them) and
    beta * average log-prob for the reference-free SimPO (as TRL's CPO trainer logs them).
    """
    if loss_type == "simpo":
        losses = simpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, beta, gamma, label_smoothing)
        chosen_rewards = beta * chosen_logps.detach() / chosen_lengths.clamp(min=1)
        rejected_rewards = beta * rejected_logps.detach() / rejected_lengths.clamp(min=1)
        return losses, chosen_rewards, rejected_rewards
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    if loss_type in ("sigmoid", "cdpo"):
        smoothing = label_smoothing if loss_type == "cdpo" else 0.0
        losses = dpo_sigmoid_loss(chosen_logratios, rejected_logratios, beta, smoothing)
    elif loss_type == "ipo":
        losses = ipo_loss(chosen_logratios, rejected_logratios, chosen_lengths, rejected_lengths, beta)
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}; use one of {DPO_LOSS_TYPES}")
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | None = None, centering_coef: float = 0.0) -> torch.Tensor:
    """Pairwise reward-model loss (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1), per pair.

    loss = -log sigmoid(r(x, y_w) - r(x, y_l) - m) + c * (r(x, y_w) + r(x, y_l))^2

    m is an optional per-pair margin (Llama 2, Touvron et al. 2023); the centring term with
    coefficient c (Eisenstein et al. 2023) keeps rewards near zero mean.
    """
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin
    losses = -F.logsigmoid(difference)
    if centering_coef:
        losses = losses + centering_coef * (chosen_rewards + rejected_rewards) ** 2
    return losses


def kto_reference_point(kl_logratios: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 (Ethayarajh et al. 2024, eq. 7): the policy's KL from the reference,
    estimated on mismatched (prompt, completion) pairs of the batch and never below zero, with no gradient.

    z0 = max(0, mean_j [log pi(y'_j | x_j) - log pi_ref(y'_j | x_j)])
    """
    return kl_logratios.detach().mean().clamp(min=0)


def kto_loss(logratios: torch.Tensor, desirable: torch.Tensor, z0: torch.Tensor | float, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             loss_type: str = "kto") -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, eq. 7-8) per example, from r = log pi(y|x) - log pi_ref(y|x):

    desirable y:   w_D * (1 - sigmoid(beta * (r - z0)))
    undesirable y: w_U * (1 - sigmoid(beta * (z0 - r)))

    ``apo_zero_unpaired`` (APO-zero, D'Oosterlinck et al. 2024, eq. 7, unpaired) drops z0 and pushes
    desirable answers up and undesirable ones down: w_D * (1 - sigmoid(beta r)) and w_U * sigmoid(beta r).
    Callers average over examples (TRL: the mean over the batch, both kinds together).
    """
    if loss_type == "kto":
        losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (logratios - z0))),
                             undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratios))))
    elif loss_type == "apo_zero_unpaired":
        losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * logratios)),
                             undesirable_weight * torch.sigmoid(beta * logratios))
    else:
        raise ValueError(f"unknown KTO loss type {loss_type!r}; use one of {KTO_LOSS_TYPES}")
    return losses
