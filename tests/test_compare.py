"""`align compare`: win rates on a hand-made table, bad inputs before any engine, and the tiny task end to end."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from alignment.compare import BootstrapConfig, compute_metrics, short_names
from alignment.stats import bootstrap_ci
from tests.browser_helpers import chromium_browser
from tests.conftest import ALIGN, REPO, subprocess_env, write_jsonl

BOOTSTRAP = BootstrapConfig(resamples=200, confidence=0.9, seed=3)


def word_count(responses: Sequence[str]) -> list[float]:
    """A reward function for the end-to-end run (imported by the CLI as tests.test_compare:word_count)."""
    return [float(len(text.split())) for text in responses]


def says_the(responses: Sequence[str]) -> list[float]:
    """A 0/1 verifier for the end-to-end run: does the response contain the word "the"."""
    return [float("the" in text.lower().split()) for text in responses]


# --- win rates on a hand-made table -----------------------------------------------------------

# Two samples per prompt, four prompts. Per-prompt means: A 0.5, 2, 0, 1;  B 0.5, 1, 0, 2;  C 0, 5, -1, 0.
HAND_SCORES = {
    "A": [[1.0, 0.0], [2.0, 2.0], [0.0, 0.0], [1.0, 1.0]],
    "B": [[0.5, 0.5], [1.0, 1.0], [1.0, -1.0], [3.0, 1.0]],
    "C": [[0.0, 0.0], [5.0, 5.0], [-1.0, -1.0], [0.0, 0.0]],
}
# Per prompt, row against column: win 1, tie 0.5, loss 0 (derived by hand from the means above).
HAND_OUTCOMES = {
    ("A", "B"): [0.5, 1, 0.5, 0], ("B", "A"): [0.5, 0, 0.5, 1],
    ("A", "C"): [1, 0, 1, 1], ("C", "A"): [0, 1, 0, 0],
    ("B", "C"): [1, 0, 1, 1], ("C", "B"): [0, 1, 0, 0],
}
HAND_RATES = {("A", "B"): 0.5, ("B", "A"): 0.5, ("A", "C"): 0.75, ("C", "A"): 0.25, ("B", "C"): 0.75, ("C", "B"): 0.25}


def hand_records() -> list[dict]:
    return [
        {"checkpoint": name, "prompt_index": p, "sample_index": s, "scores": {"gold": value}, "kl": 0.1 * p, "tokens": 10 + s}
        for name, table in HAND_SCORES.items() for p, row in enumerate(table) for s, value in enumerate(row)
    ]


def test_win_rates_and_intervals_match_a_hand_computation():
    metrics = compute_metrics(hand_records(), list(HAND_SCORES), ["gold"], BOOTSTRAP)
    rates = metrics["win_rates"]["gold"]
    assert {(a, b): rates[a][b]["rate"] for a in rates for b in rates[a]} == HAND_RATES
    assert (rates["A"]["B"]["wins"], rates["A"]["B"]["ties"], rates["A"]["B"]["losses"]) == (1, 2, 1)
    assert (rates["C"]["B"]["wins"], rates["C"]["B"]["ties"], rates["C"]["B"]["losses"]) == (1, 0, 3)
    for (a, b), outcomes in HAND_OUTCOMES.items():
        outcomes = np.array(outcomes, dtype=float)
        expected = bootstrap_ci(4, lambda idx, o=outcomes: o[idx].mean(), resamples=200, confidence=0.9, seed=3)
        assert (rates[a][b]["ci_low"], rates[a][b]["ci_high"]) == pytest.approx(expected, abs=1e-12)
    a_scores = np.array(HAND_SCORES["A"])
    gold = metrics["checkpoints"]["A"]["scores"]["gold"]
    assert gold["mean"] == pytest.approx(7 / 8)
    assert gold["std"] == pytest.approx(float(np.sqrt(np.mean((a_scores - 7 / 8) ** 2))))
    prompt_means = np.array([0.5, 2.0, 0.0, 1.0])
    assert (gold["ci_low"], gold["ci_high"]) == pytest.approx(
        bootstrap_ci(4, lambda idx: prompt_means[idx].mean(), resamples=200, confidence=0.9, seed=3))
    assert metrics["checkpoints"]["B"]["length"]["mean"] == pytest.approx(10.5)
    assert metrics["checkpoints"]["C"]["kl"]["mean"] == pytest.approx(0.15)


def test_pass_at_k_of_a_hand_table():
    from alignment.compare import pass_at_k_metrics

    # 3 prompts x 4 samples: 0, 1 and 4 correct. pass@1 = (0 + 1/4 + 1) / 3; pass@2 = (0 + 1/2 + 1) / 3
    # (one correct of 4: 1 - C(3,2)/C(4,2) = 1/2); pass@4 = (0 + 1 + 1) / 3
    table = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=float)
    got = pass_at_k_metrics(table, BOOTSTRAP)
    assert list(got) == ["1", "2", "4"]
    assert [got[k]["mean"] for k in got] == pytest.approx([1.25 / 3, 1.5 / 3, 2 / 3])
    assert got["4"]["ci_low"] <= got["4"]["mean"] <= got["4"]["ci_high"]
    assert list(pass_at_k_metrics(np.zeros((2, 6)), BOOTSTRAP)) == ["1", "2", "4", "6"]


def test_short_names():
    assert short_names(["/r/runs/dpo_tiny/final", "/r/tiny/base"]) == ["dpo_tiny/final", "base"]
    assert short_names(["/x/a/final", "/y/a/final"]) == ["x/a/final", "y/a/final"]


# --- bad inputs: exit 2 before any engine starts ----------------------------------------------


@pytest.mark.parametrize("case", ["missing-checkpoint", "not-a-model", "missing-reward-model", "bad-reward-fn"])
def test_bad_input_exits_2_before_any_engine(case, micro_model, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Review the film X."}])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    good = str(micro_model / "model")
    args, named = {
        "missing-checkpoint": ([good, str(tmp_path / "no_such_ckpt")], "no_such_ckpt"),
        "not-a-model": ([good, str(broken)], f"checkpoint {broken} does not load as a Hugging Face model"),
        "missing-reward-model": ([good, "--reward-model", str(tmp_path / "no_rm")], "reward model path"),
        "bad-reward-fn": ([good, "--reward-fn", "reward.functions:no_such_fn"], "reward.functions:no_such_fn"),
    }[case]
    output = tmp_path / "out"
    started = time.perf_counter()
    result = subprocess.run([*ALIGN, "compare", *args, "--prompts", str(prompts), "-o", str(output)],
                            capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert "rollout" not in result.stderr and not output.exists(), "nothing may start before the inputs are checked"
    assert time.perf_counter() - started < 60


# --- the tiny task end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tiny_task, tmp_path_factory) -> dict[str, Path]:
    """The base model, a sharpened copy (final norm x1.5, like sampling at temperature 2/3) and a reward
    model with a seeded random head on the base backbone: cheap, and independent of any earlier run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("compare_models")
    base = tiny_task / "base"
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    model.save_pretrained(root / "sharp")
    tokenizer.save_pretrained(root / "sharp")
    torch.manual_seed(0)
    reward = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    return {"base": base, "sharp": root / "sharp", "rm": root / "rm", "prompts": tiny_task / "data" / "prompts_eval.jsonl"}


@pytest.fixture(scope="module")
def compared(checkpoints, tmp_path_factory) -> dict:
    """One `align compare` run through the CLI: base vs sharp, KL against base, gold judge, a function, an RM."""
    output = tmp_path_factory.mktemp("compare") / "out"
    result = subprocess.run(
        [*ALIGN, "compare", str(checkpoints["base"]), str(checkpoints["sharp"]), "--prompts", str(checkpoints["prompts"]),
         "--reference", str(checkpoints["base"]), "--gold", "reward.functions:sentiment_judge",
         "--reward-fn", "tests.test_compare:word_count", "--verifier", "tests.test_compare:says_the", "--reward-model", str(checkpoints["rm"]), "-o", str(output),
         "max_prompts=12", "sampling.n=2", "sampling.max_tokens=32", "bootstrap.resamples=500", "progress=false"],
        capture_output=True, text=True, env=subprocess_env(), timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == f"compare: report written to {output / 'report.html'}"
    assert "time/generate_s" in result.stderr and "tokens/s" in result.stderr
    return {
        "output": output,
        "rows": [json.loads(line) for line in (output / "generations.jsonl").read_text().splitlines()],
        "metrics": json.loads((output / "metrics.json").read_text()),
        "html": (output / "report.html").read_text(),
    }


SCORES = ["gold", "verifier", "fn:word_count", "rm:rm"]


@pytest.mark.slow
def test_generations_hold_every_sample_and_score(compared):
    from reward.functions import sentiment_judge

    rows = compared["rows"]
    assert compared["metrics"]["settings"]["sampling"]["seed"] == 0, "a comparison samples with a fixed seed by default"
    assert [(r["checkpoint"], r["prompt_index"], r["sample_index"]) for r in rows] == [
        (c, p, s) for c in ("base", "sharp") for p in range(12) for s in range(2)]
    assert all(r["tokens"] == len(r["token_ids"]) <= 32 for r in rows)
    assert all(set(r["scores"]) == set(SCORES) for r in rows)
    responses = [r["response"] for r in rows]
    assert [r["scores"]["gold"] for r in rows] == sentiment_judge(responses)
    assert [r["scores"]["fn:word_count"] for r in rows] == word_count(responses)
    assert len({r["response"] for r in rows if r["checkpoint"] == "base"}) > 12, "samples should differ"


@pytest.mark.slow
def test_kl_is_zero_for_the_reference_and_matches_a_direct_forward(compared, checkpoints):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = compared["rows"]
    assert all(abs(r["kl"]) < 1e-4 for r in rows if r["checkpoint"] == "base")
    assert compared["metrics"]["checkpoints"]["base"]["kl"]["mean"] == pytest.approx(0, abs=1e-4)
    assert compared["metrics"]["checkpoints"]["sharp"]["kl"]["mean"] > 0.01
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["sharp"])
    sample = next(r for r in rows if r["checkpoint"] == "sharp")
    prompt = tokenizer.apply_chat_template(sample["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = torch.tensor([prompt + sample["token_ids"]])
    logps = []
    for path in (checkpoints["sharp"], checkpoints["base"]):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
        logps.append(logits.gather(1, ids[0, len(prompt):, None]).sum().item())
    assert sample["kl"] == pytest.approx(logps[0] - logps[1], abs=1e-3)


@pytest.mark.slow
def test_metrics_equal_a_recomputation_from_generations(compared):
    rows, metrics = compared["rows"], compared["metrics"]
    settings = metrics["settings"]["bootstrap"]

    def table(checkpoint: str, value) -> np.ndarray:
        return np.array([[value(r) for r in rows if r["checkpoint"] == checkpoint and r["prompt_index"] == p]
                         for p in range(12)])

    def interval(per_prompt: np.ndarray) -> tuple[float, float]:
        return bootstrap_ci(len(per_prompt), lambda idx: per_prompt[idx].mean(), settings["resamples"],
                            settings["confidence"], settings["seed"])

    fields = {s: (lambda r, s=s: r["scores"][s]) for s in SCORES}
    means = {}
    for name in ("base", "sharp"):
        entry = metrics["checkpoints"][name]
        for key, value in [*fields.items(), ("kl", lambda r: r["kl"]), ("length", lambda r: r["tokens"])]:
            data = table(name, value)
            got = entry["scores"][key] if key in fields else entry[key]
            assert got["mean"] == pytest.approx(data.mean(), abs=1e-9), (name, key)
            assert got["std"] == pytest.approx(data.std(), abs=1e-9), (name, key)
            assert (got["ci_low"], got["ci_high"]) == pytest.approx(interval(data.mean(1)), abs=1e-9), (name, key)
            means[name, key] = data.mean(1)
    for score in SCORES:
        for a, b in (("base", "sharp"), ("sharp", "base")):
            outcomes = (means[a, score] > means[b, score]) + 0.5 * (means[a, score] == means[b, score])
            got = metrics["win_rates"][score][a][b]
            assert got["rate"] == pytest.approx(outcomes.mean()), (score, a, b)
            assert (got["ci_low"], got["ci_high"]) == pytest.approx(interval(outcomes)), (score, a, b)
        assert metrics["win_rates"][score]["base"]["sharp"]["rate"] + metrics["win_rates"][score]["sharp"]["base"][
            "rate"] == pytest.approx(1)
    for name in ("base", "sharp"):  # pass@k from the 2 samples per prompt: pass@1 = mean, pass@2 = any correct
        correct = table(name, lambda r: r["scores"]["verifier"])
        got = metrics["checkpoints"][name]["pass_at_k"]
        assert list(got) == ["1", "2"]
        assert got["1"]["mean"] == pytest.approx(correct.mean())
        assert got["2"]["mean"] == pytest.approx(correct.max(axis=1).mean())
        assert (got["2"]["ci_low"], got["2"]["ci_high"]) == pytest.approx(interval(correct.max(axis=1)))
        assert metrics["checkpoints"][name]["mean_at_n"]["mean"] == pytest.approx(correct.mean())


class NumberCollector(HTMLParser):
    """Every element carrying data-metric or data-sample: (kind, path, data-value, displayed text)."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: list[list] = []
        self._open: list | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if "data-metric" in attributes:
            self._open = ["metric", json.loads(attributes["data-metric"]), attributes["data-value"], ""]
        elif "data-sample" in attributes:
            path = [*json.loads(attributes["data-sample"]), attributes["data-field"]]
            self._open = ["sample", path, attributes["data-value"], ""]

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[3] += data

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None:
            self.numbers.append(self._open)
            self._open = None


@pytest.mark.slow
def test_every_number_in_the_report_equals_its_source(compared):
    collector = NumberCollector()
    collector.feed(compared["html"])
    metrics = compared["metrics"]
    samples = {(r["checkpoint"], r["prompt_index"], r["sample_index"]): r for r in compared["rows"]}
    seen = set()
    for kind, path, value, shown in collector.numbers:
        if kind == "metric":
            expected = metrics
            for key in path:
                expected = expected[key]
            seen.add(tuple(path))
        else:
            record = samples[tuple(path[:3])]
            expected = record[path[3]] if path[3] in ("kl", "tokens") else record["scores"][path[3]]
        assert float(value) == expected, path
        # Shown with 3 decimals: off by at most half a unit (0.4215 is 0.42149999... in binary and shows 0.421).
        assert float(shown) == pytest.approx(expected, abs=5e-4 + 1e-9), path
    for name in ("base", "sharp"):
        for stat in ("mean", "ci_low", "ci_high"):
            assert {("checkpoints", name, "kl", stat), ("checkpoints", name, "length", stat)} <= seen
            assert {("checkpoints", name, "scores", s, stat) for s in SCORES} <= seen
    assert {("win_rates", s, a, b, "rate") for s in SCORES for a, b in (("base", "sharp"), ("sharp", "base"))} <= seen
    assert sum(kind == "sample" for kind, *_ in collector.numbers) == len(compared["rows"]) * (2 + len(SCORES))


@pytest.fixture(scope="module")
def browser():
    yield from chromium_browser()


@pytest.mark.slow
@pytest.mark.browser
def test_report_is_self_contained_and_renders_in_chromium(compared, browser):
    page_html = compared["html"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page_html), "the report must not load anything"
    assert page_html.count("data:image/png;base64,") >= 1 + len(SCORES) + 2
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))

    def local_only(route) -> None:
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            errors.append(f"network request {route.request.url}")
            route.abort()

    page.route("**/*", local_only)
    page.goto((compared["output"] / "report.html").as_uri())
    assert page.is_visible(".prompt-view[data-prompt='0']") and not page.is_visible(".prompt-view[data-prompt='3']")
    page.select_option("#prompt-select", "3")
    assert page.is_visible(".prompt-view[data-prompt='3']") and not page.is_visible(".prompt-view[data-prompt='0']")
    page.select_option("#prompt-select", "0")
    assert all(page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)"))
    page.screenshot(path=str(REPO / "docs" / "compare_report.png"), full_page=True)
    page.close()
    assert errors == []
