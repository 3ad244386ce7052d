"""`align tiny prefs`: preference data for the tiny task, sampled from its base model and ranked by the gold judge.

For each prompt, K candidates are sampled from the base model; a simulated annotator ranks them
by the gold judge's score (VADER) plus Gaussian noise; each ranking expands into its ordered pairs.
Written under ``<tiny>/prefs/`` as rankings, pairs and thumbs ratings (each response judged alone, for
KTO), for train and held-out prompts; cached.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from alignment.config import Section, align_home
from alignment.data import read_prompts


class TinyPrefsConfig(Section):
    """How the tiny preference data is made (defaults: about two minutes on 2 cores)."""

    tiny: str | None = Field(None, description="Tiny task directory (from `align tiny build`); None is $ALIGN_HOME/tiny.")
    candidates: int = Field(4, ge=2, description="Responses sampled per prompt (K).")
    noise: float = Field(0.1, ge=0, description="Annotator noise: std of the Gaussian added to the judge score before ranking.")
    eval_noise: float = Field(0.0, ge=0, description="Annotator noise on the held-out split (0: gold rankings, so held-out accuracy measures agreement with the judge).")
    max_new_tokens: int = Field(48, ge=4, description="Longest sampled response, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    batch_size: int = Field(64, ge=1, description="Sequences per generate call.")
    train_prompts: int | None = Field(None, ge=1, description="Use only the first N train prompts (None: all).")
    eval_prompts: int | None = Field(None, ge=1, description="Use only the first N held-out prompts (None: all).")
    seed: int = Field(0, description="Seed for sampling and annotator noise.")
    threads: int = Field(2, ge=1, description="torch threads for sampling.")

    def tiny_path(self) -> Path:
        return Path(self.tiny).expanduser() if self.tiny else align_home() / "tiny"

    def fingerprint(self) -> str:
        settings = json.dumps(self.model_dump(mode="json", exclude={"tiny", "threads"}), sort_keys=True)
        digest = hashlib.sha256(settings.encode())
        digest.update((self.tiny_path() / "manifest.json").read_bytes())
        digest.update(Path(__file__).read_bytes())
        return digest.hexdigest()[:16]


def sample_responses(model_dir: Path, prompts: list[list[dict]], samples: int, config: TinyPrefsConfig) -> list[list[str]]:
    """``samples`` responses per chat prompt from a local model (transformers generate; swappable for the rollout engine)."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignment.models import load_tokenizer

    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    flat = [text for text in texts for _ in range(samples)]
    outputs: list[str] = []
    for start in range(0, len(flat), config.batch_size):
        encoded = tokenizer(flat[start : start + config.batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(**encoded, do_sample=True, temperature=config.temperature, top_k=0,
                                       max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        new = generated[:, encoded["input_ids"].shape[1] :]
        outputs.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    return [outputs[i * samples : (i + 1) * samples] for i in range(len(prompts))]


def rank_with_noise(scores: list[float], noise: float, rng: np.random.Generator) -> list[int]:
    """Ranks (1 = best) by judge score plus N(0, noise^2); equal noisy scores share a rank."""
    noisy = np.asarray(scores) + rng.normal(0.0, noise, len(scores)) if noise else np.asarray(scores)
    order = sorted(set(noisy.tolist()), reverse=True)
    return [order.index(value) + 1 for value in noisy.tolist()]


def ranking_rows(prompts: list[list[dict]], responses: list[list[str]], noise: float, seed: int) -> list[dict]:
    from reward.functions import sentiment_judge

    rng = np.random.default_rng(seed)
    rows = []
    for prompt, candidates in zip(prompts, responses):
        scores = sentiment_judge(candidates)
        rows.append({"prompt": prompt, "responses": candidates, "ranks": rank_with_noise(scores, noise, rng),
                     "judge_scores": scores})
    return rows


def rating_rows(rankings: list[dict], noise: float, seed: int, threshold: float = 0.0) -> list[dict]:
    """Thumbs for KTO (TRL's unpaired format): a simulated annotator calls each response desirable when its
    judge score plus N(0, noise^2) is above ``threshold``."""
    rng = np.random.default_rng(seed)
    return [{"prompt": row["prompt"], "completion": response, "label": bool(score + (rng.normal(0.0, noise) if noise else 0.0) > threshold)}
            for row in rankings for response, score in zip(row["responses"], row["judge_scores"])]


def pair_rows(rankings: list[dict]) -> list[dict]:
    """Each ranking's ordered pairs (ties give none), in TRL's prompt/chosen/rejected format."""
    from alignment.preference_data import ranking_pairs

    return [{"prompt": row["prompt"], "chosen": row["responses"][better], "rejected": row["responses"][worse]}
            for row in rankings for better, worse in ranking_pairs(row["ranks"])]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def build_prefs(config: TinyPrefsConfig, force: bool = False) -> Path:
    """Build (or reuse) ``<tiny>/prefs``; returns it. The directory appears only when complete."""
    import torch

    from alignment.errors import AlignError

    tiny = config.tiny_path()
    if not (tiny / "manifest.json").is_file():
        raise AlignError(f"no tiny task at {tiny}; run `align tiny build` first")
    out, fingerprint = tiny / "prefs", config.fingerprint()
    manifest = out / "manifest.json"
    if not force and manifest.is_file() and json.loads(manifest.read_text()).get("fingerprint") == fingerprint:
        print(f"tiny preference data already built at {out} (fingerprint {fingerprint}); reusing it")
        return out
    torch.set_num_threads(config.threads)
    staging = out.with_name("prefs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started, counts = time.perf_counter(), {}
    splits = (("train", config.train_prompts, 0, config.noise), ("eval", config.eval_prompts, 1, config.eval_noise))
    for split, limit, offset, noise in splits:
        prompts = read_prompts(tiny / "data" / f"prompts_{split}.jsonl", "prompt", limit)
        responses = sample_responses(tiny / "base", prompts, config.candidates,
                                     config.model_copy(update={"seed": config.seed + offset}))
        rankings = ranking_rows(prompts, responses, noise, config.seed + offset)
        pairs = pair_rows(rankings)
        _write_jsonl(staging / f"rankings_{split}.jsonl", rankings)
        _write_jsonl(staging / f"pairs_{split}.jsonl", pairs)
        _write_jsonl(staging / f"ratings_{split}.jsonl", rating_rows(rankings, noise, config.seed + offset + 100))
        counts[split] = {"prompts": len(prompts), "pairs": len(pairs)}
    manifest_data = {"fingerprint": fingerprint, "config": config.model_dump(mode="json"), "counts": counts,
                     "seconds": round(time.perf_counter() - started, 1)}
    (staging / "manifest.json").write_text(json.dumps(manifest_data, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"tiny preference data at {out} in {manifest_data['seconds']:.0f} s: {counts}")
    return out
