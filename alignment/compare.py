"""Checkpoint comparison: sample from each checkpoint, score, KL to a reference, pairwise win rates.

Phases, each timed: check every input (before any engine starts) -> generate with the rollout engine
(``align generate``'s code: one engine per checkpoint, one checkpoint after another) -> score (gold
judge, verifier, reward functions, reward models) -> KL to the reference (a transformers fp32 forward of
both models over the sampled tokens) -> statistics, win rates and pass@k with bootstrap CIs -> ``generations.jsonl``,
``metrics.json`` and a self-contained ``report.html`` in ``output``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from alignment.config import CHAT_TEMPLATE_HELP, ClusterConfig, Section
from alignment.data import columns_of, read_records, shared_columns
from alignment.errors import AlignError
from alignment.stats import bootstrap_ci, pass_at_k
from rollout.config import RolloutConfig, SamplingConfig

log = logging.getLogger("align.compare")
GENERIC_DIR_NAMES = {"final", "hf", "latest", "model", "checkpoint"}


class BootstrapConfig(Section):
    resamples: int = Field(1000, ge=100, description="Bootstrap resamples of the prompts for every confidence interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    seed: int = Field(0, description="Seed of the resampling (same inputs, same intervals).")


class CompareSamplingConfig(SamplingConfig):
    """Sampling for comparisons: several samples per prompt and a fixed seed unless set otherwise."""

    n: int = Field(4, ge=1, description="Samples per prompt (scores are averaged over them per prompt).")
    seed: int | None = Field(0, description="Sampling seed: each prompt's samples use seed + sample index, the same for every checkpoint.")


class CompareConfig(Section):
    """Compare checkpoints on held-out prompts: scores, KL to a reference, win rates, an HTML report."""

    checkpoints: list[str] = Field(..., min_length=1, description="Local Hugging Face model directories to compare.")
    names: list[str] | None = Field(None, description="Display names, one per checkpoint; None derives them from the paths.")
    reference: str | None = Field(None, description="Model the KL is measured against; None uses the first checkpoint.")
    prompts: str = Field(..., description="JSONL file of prompts: text or chat messages under `prompt_field`.")
    prompt_field: str = Field("prompt", description="Column holding each row's prompt.")
    chat_template: str | None = Field(None, description=CHAT_TEMPLATE_HELP + " Reward models keep their own template; this one fills in where they have none.")
    max_prompts: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    gold: str | None = Field(None, description="Gold judge, a reward function as package.module:function (score name `gold`).")
    verifier: str | None = Field(None, description="Correctness check, a reward function scoring 1 for a correct response and 0 otherwise "
                                 "(e.g. `math_answer`; score name `verifier`): adds pass@k and mean@n to the report.")
    reward_functions: list[str] = Field(default_factory=list, description="Reward functions (package.module:function) scoring response texts.")
    reward_models: list[str] = Field(default_factory=list, description="Reward model directories saved by `align rm`.")
    output: str = Field(..., description="Directory for generations.jsonl, metrics.json and report.html.")
    batch_size: int = Field(64, ge=1, description="Prompts per generate call.")
    score_batch_size: int = Field(32, ge=1, description="Sequences per forward pass of reward models and of the KL computation.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Generation backend, engines, context window and memory.")
    sampling: CompareSamplingConfig = Field(default_factory=CompareSamplingConfig,
                                            description="Sampling; the fixed seed makes the comparison repeatable.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray cluster to run the engines in.")
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig, description="Confidence intervals over prompts.")
    progress: bool = Field(True, description="Show progress bars.")

    @model_validator(mode="after")
    def _names_match(self) -> CompareConfig:
        if self.names is not None and len(self.names) != len(self.checkpoints):
            raise ValueError(f"names has {len(self.names)} entries but there are {len(self.checkpoints)} checkpoints")
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise ValueError("checkpoints: the same directory is listed twice")
        if self.names is not None and len(set(self.names)) != len(self.names):
            raise ValueError("names must be unique")
        return self


@dataclass
class Scorer:
    """One score: its name in every output, its kind, where it comes from, and how to compute it."""

    name: str
    kind: str  # gold | verifier | reward_function | reward_model
    source: str
    score: Callable[..., Sequence[float]]  # (prompts, responses, columns) -> one float per response


def short_names(paths: Sequence[str]) -> list[str]:
    """Display names: the last path component (with its parent when the last is generic, like
    ``runs/dpo_tiny/final`` -> ``dpo_tiny/final``), lengthened until all names differ."""
    parts = [Path(p).expanduser().resolve().parts for p in paths]
    depths = [2 if len(p) > 1 and p[-1] in GENERIC_DIR_NAMES else 1 for p in parts]
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depths)]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            return names
        depths = [d + 1 if n in clashes and d < len(p) else d for p, d, n in zip(parts, depths, names)]


def check_model(path: str, what: str) -> Path:
    """AlignError naming ``path`` unless it is a local directory that loads as a Hugging Face model."""
    from transformers import AutoConfig

    from alignment.models import check_model_dir

    directory = check_model_dir(path, what)
    try:
        AutoConfig.from_pretrained(str(directory))
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, JSON errors
        raise AlignError(f"{what} {directory} does not load as a Hugging Face model: {error}") from None
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("pytorch_model*.bin")):
        raise AlignError(f"{what} {directory} has no weights (*.safetensors or pytorch_model*.bin)")
    return directory


def with_adapters_merged(config: CompareConfig) -> CompareConfig:
    """``config`` with each PEFT adapter directory among checkpoints and reference replaced by its merged
    model (:func:`alignment.lora.plain_model_dir`)."""
    from alignment.lora import plain_model_dir

    return config.model_copy(update={"checkpoints": [plain_model_dir(c) for c in config.checkpoints],
                                     "reference": config.reference and plain_model_dir(config.reference)})


def check_same_vocabulary(reference: str, checkpoints: Sequence[str]) -> None:
    """KL compares log-probabilities of the same token ids: every checkpoint needs the reference's vocabulary."""
    from alignment.models import load_tokenizer

    vocabulary = load_tokenizer(reference).get_vocab()
    for checkpoint in checkpoints:
        if checkpoint != reference and load_tokenizer(checkpoint).get_vocab() != vocabulary:
            raise AlignError(f"checkpoint {checkpoint} has a different vocabulary from the reference {reference}: "
                             "the KL needs the same tokenizer (choose another reference)")


def build_scorers(config: CompareConfig, columns: Sequence[str] = ()) -> list[Scorer]:
    """Import every reward function (checking that the prompt rows have the ``columns`` it reads) and
    check every reward model now; models load when scoring starts."""
    from reward.functions import check_columns, load_reward_function

    scorers = []
    functions = [(name, name, spec) for name, spec in (("gold", config.gold), ("verifier", config.verifier)) if spec]
    functions += [(f"fn:{spec.replace(':', '.').rsplit('.', 1)[-1]}", "reward_function", spec)
                  for spec in config.reward_functions]
    for name, kind, spec in functions:
        scorers.append(Scorer(name, kind, spec, load_reward_function(spec)))
        check_columns(spec, columns, f"the prompt rows of {config.prompts}")
    for path, name in zip(config.reward_models, short_names(config.reward_models)):
        check_model(path, "reward model")
        scorers.append(Scorer(f"rm:{name}", "reward_model", path,
                              _reward_model_scorer(path, config.score_batch_size, config.chat_template)))
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise AlignError(f"two scores share a name in {names}: reward functions need different function names")
    return scorers


def _reward_model_scorer(path: str, batch_size: int,
                         chat_template: str | None = None) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    def score(prompts: Sequence[Any], responses: Sequence[str], columns: Any = None) -> list[float]:
        from reward.model import RewardScorer

        return RewardScorer(path, batch_size=batch_size, chat_template=chat_template).score(prompts, responses)

    return score


def check_compare_templates(prompts: Sequence[Any], config: CompareConfig) -> None:
    """Chat prompts need a template in every checkpoint and every reward model (or ``chat_template``);
    checked before any engine starts. The reference only scores token ids the checkpoints' tokenizers made."""
    from alignment.generation import check_prompt_templates

    models = [*config.checkpoints, *config.reward_models]
    check_prompt_templates(list(prompts), list(dict.fromkeys(models)), config.chat_template, config.prompts)


def run_compare(config: CompareConfig) -> Path:
    """The whole comparison; returns the path of report.html."""
    from alignment.compare_report import write_report
    from alignment.generation import GenerateConfig
    from alignment.logs import open_job_log
    from alignment.tracking import PhaseTimer

    timer, started = PhaseTimer(), time.perf_counter()
    names = config.names or short_names(config.checkpoints)
    config = with_adapters_merged(config)
    reference = config.reference or config.checkpoints[0]
    output = Path(config.output)
    generate_config = GenerateConfig(
        checkpoints=config.checkpoints, prompts=config.prompts, prompt_field=config.prompt_field,
        chat_template=config.chat_template, max_prompts=config.max_prompts, batch_size=config.batch_size,
        rollout=config.rollout, sampling=config.sampling, cluster=config.cluster, progress=config.progress,
    )
    with timer.phase("check"):
        for checkpoint in config.checkpoints:
            check_model(checkpoint, "checkpoint")
        check_model(reference, "reference")
        check_same_vocabulary(reference, config.checkpoints)
        prompts = generate_config.read_prompts()
        rows = read_records(config.prompts)[: len(prompts)]
        scorers = build_scorers(config, shared_columns(rows))
        check_compare_templates(prompts, config)
    open_job_log(config.output)  # after the checks: bad input leaves no output directory behind
    log.info("compare: %d checkpoints x %d prompts x %d samples; scores %s; KL against %s",
             len(names), len(prompts), config.sampling.n, [s.name for s in scorers] or "none", reference)
    output.mkdir(parents=True, exist_ok=True)
    with timer.phase("generate"):
        records, speeds = generate_records(generate_config, names)
    with timer.phase("score"):
        score_records(records, scorers, rows)
    with timer.phase("kl"):
        add_kl(records, config, names, reference)
    with timer.phase("statistics"):
        metrics = compute_metrics(records, names, [s.name for s in scorers], config.bootstrap,
                                  "verifier" if config.verifier else None)
    metrics["checkpoints"] = {name: {"path": path, "tokens_per_s": speeds[path], **metrics["checkpoints"][name]}
                              for name, path in zip(names, config.checkpoints)}
    metrics["scores"] = {s.name: {"kind": s.kind, "source": s.source} for s in scorers}
    metrics["reference"] = reference
    metrics["prompts"] = len(prompts)
    metrics["settings"] = config.model_dump(mode="json")
    with timer.phase("report"):
        write_jsonl(output / "generations.jsonl", records)
        report = output / "report.html"
        write_report(metrics, records, report)
    metrics["timings_s"] = {**timer.pop(), "time/total_s": round(time.perf_counter() - started, 4)}
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    for phase, seconds in metrics["timings_s"].items():
        log.info("compare: %-22s %8.1f s", phase, seconds)
    return report


def generate_records(config: Any, names: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Samples of every checkpoint (in memory); one record per sample, tokens/s per checkpoint."""
    from alignment.generation import generate

    generations, speeds = generate(config)
    name_of = dict(zip(config.checkpoints, names))
    records = [{
        "checkpoint": name_of[row["checkpoint"]], "checkpoint_path": row["checkpoint"],
        "prompt_index": row["prompt_index"], "sample_index": row["sample_index"], "prompt": row["prompt"],
        "response": row["completion"], "tokens": len(row["token_ids"]), "finish_reason": row["finish_reason"],
        "prompt_ids": row["prompt_ids"], "token_ids": row["token_ids"], "scores": {}, "kl": None,
    } for row in generations]
    return records, speeds


def score_records(records: list[dict[str, Any]], scorers: Sequence[Scorer], rows: Sequence[dict[str, Any]] = ()) -> None:
    """Every score of every sample, in place; reward functions read the columns of each sample's prompt row.
    AlignError naming a scorer that returns the wrong count or non-numbers, or a verifier outside [0, 1]."""
    prompts = [r["prompt"] for r in records]
    responses = [r["response"] for r in records]
    columns = columns_of(rows, [r["prompt_index"] for r in records]) if rows else {}
    for scorer in scorers:
        started = time.perf_counter()
        values = list(scorer.score(prompts, responses, columns))
        if len(values) != len(records):
            raise AlignError(f"{scorer.kind} {scorer.source} returned {len(values)} scores for {len(records)} responses")
        for record, value in zip(records, values):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise AlignError(f"{scorer.kind} {scorer.source} returned {value!r}, not a finite number")
            if scorer.kind == "verifier" and not 0 <= value <= 1:
                raise AlignError(f"verifier {scorer.source} returned {value!r}: a verifier scores in [0, 1]")
            record["scores"][scorer.name] = float(value)
        log.info("compare: scored %d samples with %s in %.1f s", len(records), scorer.name, time.perf_counter() - started)


def add_kl(records: list[dict[str, Any]], config: CompareConfig, names: Sequence[str], reference: str) -> None:
    """Per sample, the k1 estimate of the sequence KL: sum over response tokens of logp_checkpoint - logp_reference.

    Both sides come from the same code (a transformers fp32 forward at temperature 1, not the engine's
    post-temperature log-probabilities), so a checkpoint compared with itself gives exactly 0.
    """
    from alignment.data import IGNORE_INDEX, TokenizedExample

    examples = {  # the prompt ids the engine generated from, then the sampled tokens
        name: [TokenizedExample(r["prompt_ids"] + r["token_ids"], [IGNORE_INDEX] * len(r["prompt_ids"]) + r["token_ids"])
               for r in records if r["checkpoint"] == name]
        for name in names
    }
    everything = [example for name in names for example in examples[name]]
    reference_logps = iter(sequence_logprobs(reference, everything, config, "KL reference"))
    for name, checkpoint in zip(names, config.checkpoints):
        logps = sequence_logprobs(checkpoint, examples[name], config, f"KL {name}")
        mine = [r for r in records if r["checkpoint"] == name]
        for record, logp in zip(mine, logps, strict=True):
            record["kl"] = logp - next(reference_logps)


def sequence_logprobs(model_dir: str, examples: list[Any], config: CompareConfig, label: str) -> list[float]:
    """Summed fp32 log-probability of each example's labelled tokens under the model in ``model_dir``."""
    import torch
    from tqdm import tqdm

    from alignment.data import pad_batch
    from alignment.logprobs import sequence_logps
    from alignment.models import load_causal_lm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_causal_lm(model_dir, dtype=torch.float32).to(device).eval()
    size = config.score_batch_size
    sums: list[float] = []
    with torch.no_grad():
        for start in tqdm(range(0, len(examples), size), desc=label, unit="batch", disable=not config.progress):
            batch = {k: v.to(device) for k, v in pad_batch(examples[start : start + size], pad_id=0).items()}
            sums.extend(sequence_logps(model, batch)[0].double().tolist())
    return sums


# --- statistics -------------------------------------------------------------------------------


def per_prompt_table(records: Sequence[dict[str, Any]], checkpoint: str, value: Callable[[dict], float]) -> np.ndarray:
    """``value`` of every sample of ``checkpoint`` as a (prompts, samples) array, rows in prompt order."""
    rows: dict[int, dict[int, float]] = {}
    for record in records:
        if record["checkpoint"] == checkpoint:
            rows.setdefault(record["prompt_index"], {})[record["sample_index"]] = value(record)
    return np.array([[rows[p][s] for s in sorted(rows[p])] for p in sorted(rows)], dtype=np.float64)


def summarize(table: np.ndarray, bootstrap: BootstrapConfig) -> dict[str, float]:
    """Mean and (population) standard deviation over all samples, and the bootstrap CI of the mean over prompts."""
    return {"mean": float(table.mean()), "std": float(table.std()), **mean_interval(table.mean(axis=1), bootstrap)}


def mean_interval(per_prompt: np.ndarray, bootstrap: BootstrapConfig) -> dict[str, float]:
    """The bootstrap CI over prompts of the mean of one value per prompt."""
    low, high = bootstrap_ci(len(per_prompt), lambda idx: float(per_prompt[idx].mean()),
                             bootstrap.resamples, bootstrap.confidence, bootstrap.seed)
    return {"ci_low": low, "ci_high": high}


def pass_at_k_metrics(table: np.ndarray, bootstrap: BootstrapConfig) -> dict[str, dict[str, float]]:
    """pass@k for k = 1, 2, 4, ..., n (and n) from a (prompts, n) table of verifier scores (a sample is
    correct when it scores 1): per prompt the unbiased estimate of :func:`alignment.stats.pass_at_k`,
    then the mean over prompts with its bootstrap CI."""
    n = table.shape[1]
    correct = (table >= 1.0).sum(axis=1)
    ks = sorted({2**i for i in range(n.bit_length())} | {n})
    result = {}
    for k in ks:
        per_prompt = np.array([pass_at_k(n, int(c), k) for c in correct])
        result[str(k)] = {"mean": float(per_prompt.mean()), **mean_interval(per_prompt, bootstrap)}
    return result


def win_outcomes(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Per prompt: 1 if my mean score is higher, 0.5 if equal, 0 if lower."""
    return np.where(mine > theirs, 1.0, np.where(mine == theirs, 0.5, 0.0))


def win_rates(prompt_means: dict[str, np.ndarray], bootstrap: BootstrapConfig) -> dict[str, dict[str, dict[str, float]]]:
    """For every ordered pair (A, B), A != B: the share of prompts A wins (ties count half) with its bootstrap CI."""
    matrix: dict[str, dict[str, dict[str, float]]] = {}
    for a, mine in prompt_means.items():
        matrix[a] = {}
        for b, theirs in prompt_means.items():
            if a == b:
                continue
            outcomes = win_outcomes(mine, theirs)
            low, high = bootstrap_ci(len(outcomes), lambda idx, o=outcomes: float(o[idx].mean()),
                                     bootstrap.resamples, bootstrap.confidence, bootstrap.seed)
            matrix[a][b] = {"rate": float(outcomes.mean()), "ci_low": low, "ci_high": high,
                            "wins": int((outcomes == 1).sum()), "ties": int((outcomes == 0.5).sum()),
                            "losses": int((outcomes == 0).sum())}
    return matrix


def compute_metrics(records: Sequence[dict[str, Any]], names: Sequence[str], score_names: Sequence[str],
                    bootstrap: BootstrapConfig, verifier: str | None = None) -> dict[str, Any]:
    """Per-checkpoint summaries of every score, KL and length, the win-rate matrix of every score, and
    with a ``verifier`` score name, pass@k and mean@n of each checkpoint."""
    checkpoints: dict[str, Any] = {}
    for name in names:
        tables = {"kl": per_prompt_table(records, name, lambda r: r["kl"]),
                  "length": per_prompt_table(records, name, lambda r: r["tokens"])}
        checkpoints[name] = {
            "samples": int(tables["length"].size),
            "scores": {s: summarize(per_prompt_table(records, name, lambda r, s=s: r["scores"][s]), bootstrap)
                       for s in score_names},
            "kl": summarize(tables["kl"], bootstrap),
            "length": summarize(tables["length"], bootstrap),
        }
        if verifier:
            correctness = per_prompt_table(records, name, lambda r: r["scores"][verifier])
            checkpoints[name]["pass_at_k"] = pass_at_k_metrics(correctness, bootstrap)
            checkpoints[name]["mean_at_n"] = summarize(correctness, bootstrap)
    rates = {s: win_rates({n: per_prompt_table(records, n, lambda r, s=s: r["scores"][s]).mean(axis=1) for n in names},
                          bootstrap) for s in score_names}
    return {"checkpoints": checkpoints, "win_rates": rates}


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w") as sink:
        for row in rows:
            sink.write(json.dumps(row) + "\n")
