"""`align demo`: the whole loop on the tiny task: label, reward model, DPO, PPO, compare."""

from __future__ import annotations

from alignment.jobs import config_job


def register(subparsers) -> None:
    config_job(
        subparsers, "demo", help="The whole loop on the tiny task: annotate, reward model, DPO, PPO, compare (~15 min on 2 cores)",
        description="Tiny task -> candidates -> simulated annotators in the labeling store -> pairs -> reward model "
                    "and DPO -> PPO -> align compare. Stages are cached under $ALIGN_HOME/demo.",
        schema="alignment.demo:DemoConfig", runner="alignment.demo:run_demo", resumable=False,
    )
