"""`align sft`: supervised fine-tuning."""

from __future__ import annotations

from alignment.jobs import config_job


def register(subparsers) -> None:
    config_job(
        subparsers, "sft", help="Supervised fine-tuning on chat or prompt/completion data",
        description="Supervised fine-tuning (loss on response tokens only).",
        schema="alignment.config:SFTConfig", runner="alignment.sft:run_sft",
    )
