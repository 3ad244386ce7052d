"""`align kto`: Kahneman-Tversky optimisation on answers judged one at a time."""

from __future__ import annotations

from alignment.jobs import config_job


def register(subparsers) -> None:
    config_job(
        subparsers, "kto", help="KTO on unpaired feedback (desirable / undesirable answers) against a frozen reference",
        description="Kahneman-Tversky optimisation on rows of prompt, completion and a true/false label "
                    "(TRL's unpaired format; pair rows are unpaired).",
        schema="alignment.config:KTOConfig", runner="alignment.kto:run_kto",
    )
