"""Imports point down the layers of docs/architecture.md: no module imports one of a higher layer."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Layer of each module (the longest matching prefix wins); lower numbers sit lower.
LAYERS = {
    "alignment.errors": 0, "alignment.config": 0, "alignment.runtime_env": 0, "alignment.logs": 0,
    "alignment.stats": 0, "alignment.chat_templates": 0,
    "alignment.cluster": 1, "alignment.strategy": 1, "alignment.data": 1, "alignment.pair_packing": 1,
    "alignment.models": 1, "alignment.model_import": 1, "alignment.checkpoint": 1, "alignment.tracking": 1,
    "alignment.job": 1, "alignment.losses": 1, "alignment.logprobs": 1, "alignment.preference_data": 1,
    "alignment.feedback_data": 1, "alignment.lora": 1,
    "rollout": 2, "reward.functions": 2, "reward.model": 2, "reward.verifiers": 2,
    "alignment.trainer": 3, "alignment.sft": 3, "alignment.dpo": 3, "alignment.kto": 3, "alignment.ppo": 3, "reward.train": 3,
    "alignment.compare": 4, "alignment.compare_report": 4, "alignment.generation": 4,
    "labeling_ui": 5,
    "alignment.tiny": 6, "alignment.demo": 6, "alignment.jobs": 6, "alignment.cli": 6, "labeling_ui.cli": 6,
    "labeling_ui.__main__": 6,
}
NAMES = ["shared base", "core", "rollout and scoring", "trainers", "evaluation", "labeling", "apps"]
PACKAGES = ("alignment", "rollout", "reward", "labeling_ui")


def layer(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in PACKAGES}


def test_every_module_has_a_layer():
    assert [m for m in modules() if m not in PACKAGES and layer(m) is None] == []


def test_imports_point_down():
    upward = []
    for module, path in modules().items():
        own = layer(module)
        if own is None:
            continue
        for target in imports(path):
            theirs = layer(target)
            if theirs is not None and theirs > own:
                upward.append(f"{module} ({NAMES[own]}) imports {target} ({NAMES[theirs]})")
    assert upward == []
