"""`align generate`: batch generation from one or more checkpoints over a prompt file, to JSONL."""

from __future__ import annotations

from alignment.jobs import config_job


def register(subparsers) -> None:
    config_job(
        subparsers, "generate", help="Batch generation from checkpoints over a prompt file to JSONL",
        description="Generate completions with vLLM (or transformers) engines in Ray actors.",
        schema="alignment.generation:GenerateConfig", runner="alignment.jobs.generate:run_generate", resumable=False,
    )


def run_generate(config) -> dict[str, float]:
    """The libraries log next to the output file; then :func:`alignment.generation.generate_to_file`."""
    from pathlib import Path

    from alignment.errors import AlignError
    from alignment.generation import generate_to_file
    from alignment.logs import open_job_log

    if not config.output:
        raise AlignError("output: set the JSONL file to write the samples to")
    open_job_log(Path(config.output).expanduser().parent)
    return generate_to_file(config)
