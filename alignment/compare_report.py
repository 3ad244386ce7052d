"""``report.html`` of ``align compare``: one self-contained file (plots as inline PNG, a few lines of inline JS).

Every number in a table is a ``<span data-metric='["checkpoints", "base", "kl", "mean"]' data-value="...">``
whose path leads to the same value in metrics.json; every number in the sample browser carries
``data-sample='[checkpoint, prompt_index, sample_index]'`` and ``data-field`` naming its generations.jsonl field.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from functools import reduce
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.ci { color: #777; font-size: 0.85em; }
.settings { color: #555; }
img { max-width: 100%; }
.row { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
.responses { display: grid; gap: 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px; background: #fafafa; }
.sample { border-top: 1px solid #eee; padding-top: 4px; }
.meta { color: #555; font-size: 0.85em; margin: 2px 0; }
pre { white-space: pre-wrap; margin: 4px 0; font-family: inherit; }
pre.prompt { background: #eef3fb; padding: 8px; border-radius: 6px; }
"""

SCRIPT = """
const select = document.getElementById('prompt-select');
function showPrompt() {
  for (const view of document.querySelectorAll('.prompt-view')) view.hidden = view.dataset.prompt !== select.value;
}
select.addEventListener('change', showPrompt);
showPrompt();
"""


def metric(metrics: dict[str, Any], *path: str, digits: int = 3) -> str:
    """The value at ``path`` in metrics.json, displayed and tagged with its path and exact value."""
    value = reduce(lambda node, key: node[key], path, metrics)
    shown = str(value) if isinstance(value, int) else f"{value:.{digits}f}"
    return (f"<span class=\"num\" data-metric=\"{html.escape(json.dumps(list(path)))}\" "
            f"data-value=\"{value!r}\">{shown}</span>")


def with_ci(metrics: dict[str, Any], *path: str, center: str = "mean") -> str:
    """``center`` (mean or rate) of the entry at ``path`` followed by its [ci_low, ci_high]."""
    return (metric(metrics, *path, center) + " <span class=\"ci\">[" + metric(metrics, *path, "ci_low") + ", "
            + metric(metrics, *path, "ci_high") + "]</span>")


def png(figure: Any) -> str:
    """A matplotlib figure as an inline <img>."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return f"<img alt=\"plot\" src=\"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}\">"


def _figure(panels: int, width: float = 4.8, height: float = 3.6) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * panels, height))
    return figure, [figure.add_subplot(1, panels, i + 1) for i in range(panels)]


def values(records: Sequence[dict[str, Any]], checkpoint: str, field: str) -> list[float]:
    """One field of every sample of a checkpoint: ``kl``, ``tokens`` or a score name."""
    return [r[field] if field in ("kl", "tokens") else r["scores"][field] for r in records if r["checkpoint"] == checkpoint]


def plot_distributions(metrics: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    names, scores = list(metrics["checkpoints"]), list(metrics["scores"])
    figure, axes = _figure(len(scores))
    for ax, score in zip(axes, scores):
        ax.violinplot([values(records, n, score) for n in names], showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
        ax.set_title(f"{score} per sample")
    return png(figure)


def plot_win_matrix(metrics: dict[str, Any], score: str) -> str:
    import numpy as np

    names = list(metrics["checkpoints"])
    rates = metrics["win_rates"][score]
    grid = np.array([[rates[a][b]["rate"] if a != b else np.nan for b in names] for a in names])
    figure, (ax,) = _figure(1, 1.3 * len(names) + 2.5, 1.1 * len(names) + 1.5)
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdBu")
    figure.colorbar(image, ax=ax, label="win rate of row over column")
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if a != b:
                cell = rates[a][b]
                ax.text(j, i, f"{cell['rate']:.2f}\n[{cell['ci_low']:.2f}, {cell['ci_high']:.2f}]", ha="center",
                        va="center", fontsize=9, color="white" if abs(cell["rate"] - 0.5) > 0.3 else "black")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_yticks(range(len(names)), names)
    ax.set_title(f"win rate on {score}")
    return png(figure)


def error_bar(summary: dict[str, float]) -> list[list[float]]:
    """Distances from the mean to the CI ends, as matplotlib's asymmetric error bars."""
    return [[max(0.0, summary["mean"] - summary["ci_low"])], [max(0.0, summary["ci_high"] - summary["mean"])]]


def plot_score_against_kl(metrics: dict[str, Any]) -> str:
    checkpoints, scores = metrics["checkpoints"], list(metrics["scores"])
    figure, axes = _figure(len(scores))
    for ax, score in zip(axes, scores):
        for name, entry in checkpoints.items():
            kl, value = entry["kl"], entry["scores"][score]
            ax.errorbar(kl["mean"], value["mean"], fmt="o", capsize=4, label=name,
                        xerr=error_bar(kl), yerr=error_bar(value))
        ax.set_xlabel(f"KL to {Path(metrics['reference']).name} (nats per sample)")
        ax.set_ylabel(f"mean {score}")
        ax.legend(fontsize=8)
    return png(figure)


def plot_lengths(metrics: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    figure, (ax,) = _figure(1, 6.4)
    lengths = [r["tokens"] for r in records]
    bins = range(min(lengths), max(lengths) + 2, max(1, (max(lengths) - min(lengths)) // 32 + 1))
    for name, entry in metrics["checkpoints"].items():
        ax.hist(values(records, name, "tokens"), bins=bins, histtype="step", linewidth=1.5,
                label=f"{name} (mean {entry['length']['mean']:.1f})")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return png(figure)


def plot_pass_at_k(metrics: dict[str, Any]) -> str:
    figure, (ax,) = _figure(1, 6.4)
    for name, entry in metrics["checkpoints"].items():
        ks = [int(k) for k in entry["pass_at_k"]]
        points = list(entry["pass_at_k"].values())
        ax.errorbar(ks, [p["mean"] for p in points], marker="o", capsize=4, label=name,
                    yerr=[[max(0.0, p["mean"] - p["ci_low"]) for p in points],
                          [max(0.0, p["ci_high"] - p["mean"]) for p in points]])
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples per prompt)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return png(figure)


def pass_at_k_table(metrics: dict[str, Any]) -> str:
    checkpoints = metrics["checkpoints"]
    ks = list(next(iter(checkpoints.values()))["pass_at_k"])
    n = metrics["settings"]["sampling"]["n"]
    head = "".join(f"<th>pass@{k}</th>" for k in ks) + f"<th>mean@{n}</th>"
    rows = []
    for name in checkpoints:
        cells = "".join(f"<td>{with_ci(metrics, 'checkpoints', name, 'pass_at_k', k)}</td>" for k in ks)
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}"
                    f"<td>{with_ci(metrics, 'checkpoints', name, 'mean_at_n')}</td></tr>")
    return f"<table id=\"pass-at-k\"><tr><th>checkpoint</th>{head}</tr>{''.join(rows)}</table>"


def summary_table(metrics: dict[str, Any]) -> str:
    scores = list(metrics["scores"])
    head = "".join(f"<th>{html.escape(s)}</th>" for s in scores)
    rows = []
    for name in metrics["checkpoints"]:
        cells = "".join(f"<td>{with_ci(metrics, 'checkpoints', name, 'scores', s)}</td>" for s in scores)
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}"
                    f"<td>{with_ci(metrics, 'checkpoints', name, 'kl')}</td>"
                    f"<td>{with_ci(metrics, 'checkpoints', name, 'length')}</td>"
                    f"<td>{metric(metrics, 'checkpoints', name, 'samples')}</td></tr>")
    return (f"<table id=\"summary\"><tr><th>checkpoint</th>{head}<th>KL to reference</th>"
            f"<th>length (tokens)</th><th>samples</th></tr>{''.join(rows)}</table>")


def win_table(metrics: dict[str, Any], score: str) -> str:
    names = list(metrics["checkpoints"])
    rows = []
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append("<td>-</td>")
                continue
            path = ("win_rates", score, a, b)
            cells.append(f"<td>{with_ci(metrics, *path, center='rate')}<br><span class=\"ci\">"
                         f"{metric(metrics, *path, 'wins')} W / {metric(metrics, *path, 'ties')} T / "
                         f"{metric(metrics, *path, 'losses')} L</span></td>")
        rows.append(f"<tr><td>{html.escape(a)}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>{html.escape(b)}</th>" for b in names)
    return f"<table class=\"win-rates\"><tr><th>row beats column</th>{head}</tr>{''.join(rows)}</table>"


def prompt_text(prompt: Any) -> str:
    """Chat messages as "role: content" lines; text as is; anything else as JSON."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)
    return json.dumps(prompt)


def sample_value(record: dict[str, Any], field: str, value: float) -> str:
    key = html.escape(json.dumps([record["checkpoint"], record["prompt_index"], record["sample_index"]]))
    shown = str(value) if isinstance(value, int) else f"{value:.3f}"
    return (f"{html.escape(field)} <span data-sample=\"{key}\" data-field=\"{html.escape(field)}\" "
            f"data-value=\"{value!r}\">{shown}</span>")


def sample_browser(metrics: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    names = list(metrics["checkpoints"])
    by_prompt: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_prompt.setdefault(record["prompt_index"], []).append(record)
    options, views = [], []
    for index in sorted(by_prompt):
        text = prompt_text(by_prompt[index][0]["prompt"])
        options.append(f"<option value=\"{index}\">{index}: {html.escape(text[:90])}</option>")
        cards = []
        for name in names:
            samples = []
            for r in (r for r in by_prompt[index] if r["checkpoint"] == name):
                numbers = [sample_value(r, "tokens", r["tokens"]), sample_value(r, "kl", r["kl"])]
                numbers += [sample_value(r, s, v) for s, v in r["scores"].items()]
                samples.append(f"<div class=\"sample\"><p class=\"meta\">#{r['sample_index']} · {' · '.join(numbers)}</p>"
                               f"<pre>{html.escape(r['response']) or '<em>(empty)</em>'}</pre></div>")
            cards.append(f"<div class=\"card\"><h4>{html.escape(name)}</h4>{''.join(samples)}</div>")
        views.append(f"<div class=\"prompt-view\" data-prompt=\"{index}\"><pre class=\"prompt\">{html.escape(text)}</pre>"
                     f"<div class=\"responses\" style=\"grid-template-columns: repeat({len(names)}, 1fr)\">"
                     f"{''.join(cards)}</div></div>")
    return (f"<label>Prompt <select id=\"prompt-select\">{''.join(options)}</select></label>{''.join(views)}")


def render_report(metrics: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    settings = metrics["settings"]
    sampling, bootstrap = settings["sampling"], settings["bootstrap"]
    scores = list(metrics["scores"])
    sources = "".join(f"<li><b>{html.escape(s)}</b>: {html.escape(e['kind'])} {html.escape(e['source'])}</li>"
                      for s, e in metrics["scores"].items())
    wins = "".join(f"<div><h3>{html.escape(s)}</h3>{plot_win_matrix(metrics, s)}{win_table(metrics, s)}</div>"
                   for s in scores)
    sections = [
        "<h1>Checkpoint comparison</h1>",
        f"<p class=\"settings\">{metrics['prompts']} prompts x {sampling['n']} samples per checkpoint "
        f"(temperature {sampling['temperature']}, top_p {sampling['top_p']}, max_tokens {sampling['max_tokens']}, "
        f"seed {sampling['seed']}). KL: sum over response tokens of log p(checkpoint) - log p(reference), "
        f"reference <code>{html.escape(metrics['reference'])}</code>. Brackets: {bootstrap['confidence']:.0%} "
        f"bootstrap intervals over prompts ({bootstrap['resamples']} resamples, seed {bootstrap['seed']}).</p>",
        f"<ul>{sources}</ul>",
        "<h2>Summary</h2>", summary_table(metrics),
    ]
    if settings.get("verifier"):
        sections += [f"<h2>pass@k</h2><p>Verifier <code>{html.escape(settings['verifier'])}</code>: a sample is correct "
                     "when it scores 1. pass@k is the unbiased estimate (Chen et al. 2021) of the chance that at least "
                     f"one of k samples is correct, from the {sampling['n']} samples of each prompt, averaged over "
                     "prompts; mean@n is the mean verifier score.</p>", pass_at_k_table(metrics), plot_pass_at_k(metrics)]
    if scores:
        sections += ["<h2>Win rates</h2><p>Per prompt, the mean score over each checkpoint's samples is compared: "
                     "win 1, tie 0.5, loss 0; averaged over prompts.</p>", f"<div class=\"row\">{wins}</div>",
                     "<h2>Score distributions</h2>", plot_distributions(metrics, records),
                     "<h2>Score against KL</h2>", plot_score_against_kl(metrics)]
    sections += ["<h2>Response length</h2>", plot_lengths(metrics, records),
                 "<h2>Samples</h2>", sample_browser(metrics, records)]
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>align compare</title><style>{STYLE}</style>"
            f"</head><body>{''.join(sections)}<script>{SCRIPT}</script></body></html>\n")


def write_report(metrics: dict[str, Any], records: Sequence[dict[str, Any]], path: Path) -> None:
    path.write_text(render_report(metrics, records))
