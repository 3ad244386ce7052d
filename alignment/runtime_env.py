"""Process environment every align process (driver and Ray actors) runs with.

Set once in the driver, before Ray starts, and handed to every actor through Ray's
``runtime_env``; each value is a measured need on CPU machines (see docs/environment.md).
A value the user already exported wins.
"""

from __future__ import annotations

import os
import shutil

from alignment.config import align_home


def has_cuda() -> bool:
    """True on a machine with an NVIDIA driver (checked without importing torch)."""
    return shutil.which("nvidia-smi") is not None or os.path.exists("/proc/driver/nvidia/version")


def default_environment() -> dict[str, str]:
    home = align_home()
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
        "TORCH_EXTENSIONS_DIR": str(home / "torch_extensions"),
        "VLLM_CACHE_ROOT": str(home / "vllm"),
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning",
    }
    if not has_cuda():
        env["DS_ACCELERATOR"] = "cpu"
    return env


def configure_environment() -> dict[str, str]:
    """Export the defaults into this process (keeping user values) and return the full set."""
    env = {key: os.environ.setdefault(key, value) for key, value in default_environment().items()}
    return env
