"""`align demo`: the whole human-feedback loop on the bundled tiny task, end to end on one machine.

tiny task -> candidates from the base model -> simulated annotators rank them through the labeling
store (the code path people use) -> exported pairs -> reward model and DPO -> PPO with that reward
model -> `align compare` of base, DPO and PPO. Each stage is cached under ``$ALIGN_HOME/demo``,
keyed by a fingerprint of its settings, so a second run redoes only what changed.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from alignment.config import Section, align_home, load_config

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PROJECT = "demo"


class DemoConfig(Section):
    """Sizes of each stage of the demo loop (defaults fit 20 minutes on 2 CPU cores)."""

    output_dir: str | None = Field(None, description="Where the demo keeps its stages; None is $ALIGN_HOME/demo.")
    prompts: int = Field(160, ge=8, description="Training prompts sent to annotators.")
    candidates: int = Field(4, ge=2, le=8, description="Candidates sampled from the base model per prompt.")
    annotators: int = Field(3, ge=1, description="Simulated annotators (each ranks its share of the items).")
    annotator_noise: float = Field(0.3, ge=0, description="Std of the Gaussian noise each annotator adds to the judge's score.")
    rm_steps: int = Field(60, ge=1, description="Reward-model optimizer steps.")
    dpo_steps: int = Field(45, ge=1, description="DPO optimizer steps.")
    ppo_steps: int = Field(20, ge=1, description="PPO steps (64 samples each).")
    compare_prompts: int = Field(64, ge=4, description="Held-out prompts in the final comparison.")
    seed: int = Field(0, description="Seed of sampling and of the simulated annotators.")


class Stages:
    """Runs named stages once: a stage whose fingerprint (settings) matches the last run is skipped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_path = root / "stages.json"
        self.state: dict[str, str] = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.timings: dict[str, float] = {}

    def run(self, name: str, settings: dict[str, Any], body: Callable[[], Any], done: Path) -> None:
        fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if self.state.get(name) == fingerprint and done.exists():
            print(f"[demo] {name}: cached ({done})")
            self.timings[name] = 0.0
            return
        print(f"\n[demo] ===== {name} =====", flush=True)
        started = time.perf_counter()
        body()
        self.timings[name] = time.perf_counter() - started
        self.state[name] = fingerprint
        self.state_path.write_text(json.dumps(self.state, indent=2))
        print(f"[demo] {name}: {self.timings[name]:.0f} s", flush=True)


def simulate_annotators(db_url: str, count: int, noise: float, seed: int) -> int:
    """Annotators who rank by the gold judge plus their own noise, through claim_next/submit_ranking."""
    from labeling_ui.store import Store, add_user, claim_next, get_user, list_users, submit_ranking
    from reward.functions import sentiment_judge

    store = Store(db_url)
    try:
        existing = {u["name"] for u in list_users(store)}
        names = [f"annotator{i + 1}" for i in range(count)]
        for name in names:
            if name not in existing:
                add_user(store, name, f"demo-{name}", by="demo")
        users = [get_user(store, name) for name in names]
        rngs = [random.Random(f"{seed}:{name}") for name in names]
        submitted, active = 0, list(range(count))
        while active:  # round robin, as annotators working side by side would
            for index in list(active):
                task = claim_next(store, users[index], PROJECT)
                if task is None:
                    active.remove(index)
                    continue
                scores = sentiment_judge([c["text"] for c in task.candidates])
                noisy = [s + rngs[index].gauss(0.0, noise) for s in scores]
                order = sorted(range(len(noisy)), key=lambda i: -noisy[i])
                ranks = {task.candidates[i]["id"]: position + 1 for position, i in enumerate(order)}
                submit_ranking(store, users[index], task.assignment_id, {"ranks": ranks})
                submitted += 1
        return submitted
    finally:
        store.close()


def run_demo(config: DemoConfig) -> Path:
    """Run (or reuse) every stage; returns the comparison report."""
    from alignment.cluster.runtime import start_ray
    from alignment.config import ClusterConfig, DPOConfig, RMConfig
    from alignment.logs import open_job_log
    from alignment.ppo.config import PPOConfig
    from alignment.tiny.build import TinyBuildConfig, build_tiny

    started = time.perf_counter()
    root = Path(config.output_dir or align_home() / "demo").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    stages = Stages(root)
    settings = config.model_dump()

    # One Ray runtime for every stage, with room for PPO's rollout engine beside its training group.
    # (Each stage asks for what it needs anyway; this only saves restarting the runtime larger.)
    open_job_log(root, pin=True)  # one library log for every stage
    start_ray(ClusterConfig(), cpus=4)
    print("[demo] ===== tiny task =====", flush=True)
    tiny = build_tiny(TinyBuildConfig())
    base = tiny / "base"

    db_url = f"sqlite:///{root / 'labels.db'}"
    pairs = root / "pairs.jsonl"

    def label() -> None:
        from labeling_ui.export import export_project
        from labeling_ui.generate import generate_candidates
        from labeling_ui.store import Store, add_user, import_items

        (root / "labels.db").unlink(missing_ok=True)
        records = generate_candidates(str(tiny / "data" / "prompts_train.jsonl"), [str(base)], samples=config.candidates,
                                      max_prompts=config.prompts, max_tokens=48, seed=config.seed)
        store = Store(db_url)
        try:
            import_items(store, PROJECT, records, annotations_per_item=1, by="demo",
                         guidelines="Rank the reviews from most to least positive about the film.")
            add_user(store, "admin", "demo-admin", role="admin", by="demo")
            print(f"[demo] {len(records)} items of {config.candidates} candidates imported into {db_url}")
            count = simulate_annotators(db_url, config.annotators, config.annotator_noise, config.seed)
            pairs_written = export_project(store, PROJECT, pairs, by="demo")
        finally:
            store.close()
        print(f"[demo] {config.annotators} simulated annotators submitted {count} rankings; exported {pairs_written} pairs to {pairs}")

    stages.run("label", {k: settings[k] for k in ("prompts", "candidates", "annotators", "annotator_noise", "seed")},
               label, pairs)

    common = ["tracking.progress=true", "tracking.tensorboard=true", f"data.train={pairs}", "data.eval=null",
              "data.eval_fraction=0.1", f"model={base}"]
    rm_dir, dpo_dir, ppo_dir = root / "rm", root / "dpo", root / "ppo"

    def reward_model() -> None:
        from reward.train import run_rm

        shutil.rmtree(rm_dir, ignore_errors=True)
        run_rm(load_config(RMConfig, REPO_CONFIGS / "rm_tiny.yaml", [
            *common, f"output_dir={rm_dir}", f"train.max_steps={config.rm_steps}",
            f"train.eval_every={config.rm_steps}", f"train.save_every={config.rm_steps}"]))

    def dpo() -> None:
        from alignment.dpo import run_dpo

        shutil.rmtree(dpo_dir, ignore_errors=True)
        run_dpo(load_config(DPOConfig, REPO_CONFIGS / "dpo_tiny.yaml", [
            *common, f"output_dir={dpo_dir}", f"train.max_steps={config.dpo_steps}",
            f"train.eval_every={config.dpo_steps}", f"train.save_every={config.dpo_steps}"]))

    def ppo() -> None:
        from alignment.ppo.trainer import run_ppo

        shutil.rmtree(ppo_dir, ignore_errors=True)
        run_ppo(load_config(PPOConfig, REPO_CONFIGS / "ppo_tiny.yaml", [
            f"model={base}", f"output_dir={ppo_dir}", f"reward.model={rm_dir / 'final'}",
            f"data.train={tiny / 'data' / 'prompts_train.jsonl'}", f"data.eval={tiny / 'data' / 'prompts_eval.jsonl'}",
            f"train.max_steps={config.ppo_steps}", f"train.eval_every={config.ppo_steps}",
            f"train.save_every={config.ppo_steps}", f"train.seed={config.seed}"]))

    stages.run("reward model", {"steps": config.rm_steps, "label": stages.state.get("label")}, reward_model, rm_dir / "final")
    stages.run("dpo", {"steps": config.dpo_steps, "label": stages.state.get("label")}, dpo, dpo_dir / "final")
    stages.run("ppo", {"steps": config.ppo_steps, "seed": config.seed, "rm": stages.state.get("reward model")},
               ppo, ppo_dir / "final")

    compare_dir = root / "compare"

    def compare() -> None:
        from alignment.compare import CompareConfig, run_compare

        run_compare(CompareConfig.model_validate({
            "checkpoints": [str(base), str(dpo_dir / "final"), str(ppo_dir / "final")],
            "names": ["base", "dpo", "ppo"],
            "reference": str(base),
            "prompts": str(tiny / "data" / "prompts_eval.jsonl"),
            "max_prompts": config.compare_prompts,
            "gold": "reward.functions:sentiment_judge",
            "reward_models": [str(rm_dir / "final")],
            "output": str(compare_dir),
            "rollout": {"cpus_per_engine": 2},
            "sampling": {"n": 4, "max_tokens": 64, "seed": config.seed},
        }))

    upstream = {k: stages.state.get(k) for k in ("dpo", "ppo", "reward model")}
    stages.run("compare", {"prompts": config.compare_prompts, "seed": config.seed, **upstream}, compare,
               compare_dir / "report.html")

    summarize(root, compare_dir, db_url, stages.timings, time.perf_counter() - started)
    return compare_dir / "report.html"


def summarize(root: Path, compare_dir: Path, db_url: str, timings: dict[str, float], total_s: float) -> None:
    """Print the gold judge per checkpoint, win rates over the base, where everything is, and timings."""
    metrics = json.loads((compare_dir / "metrics.json").read_text())
    print("\n[demo] ===== results (held-out prompts, gold judge = VADER sentiment, -1..1) =====")
    for name, values in metrics["checkpoints"].items():
        gold = values["scores"]["gold"]
        line = f"  {name:>5}: gold {gold['mean']:+.3f}"
        if name != "base":
            rate = metrics["win_rates"]["gold"][name]["base"]
            line += f"   win rate vs base {rate['rate']:.2f} [{rate['ci_low']:.2f}, {rate['ci_high']:.2f}]"
        line += f"   KL to base {values['kl']['mean']:.2f}   length {values['length']['mean']:.1f}"
        print(line)
    print(f"\n[demo] report: {compare_dir / 'report.html'}  (open it in a browser)")
    print(f"[demo] labeling app on the same data: align label serve --db {db_url}   "
          f"(log in as admin / demo-admin, or annotator1 / demo-annotator1)")
    print("[demo] stage timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total_s:.0f} s")
    (root / "summary.json").write_text(json.dumps({"timings_s": timings, "total_s": total_s}, indent=2))
