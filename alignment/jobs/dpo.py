"""`align dpo`: direct preference optimisation (DPO, cDPO, IPO, SimPO)."""

from __future__ import annotations

from alignment.jobs import config_job


def register(subparsers) -> None:
    config_job(
        subparsers, "dpo", help="Preference optimisation (DPO, cDPO, IPO, SimPO) against a frozen reference",
        description="Direct preference optimisation on preference pairs or rankings.",
        schema="alignment.config:DPOConfig", runner="alignment.dpo:run_dpo",
    )
