"""Admin read-outs shared by the Gradio admin tab and the JSON API."""

from __future__ import annotations

from typing import Any

from labeling_ui import store as st
from labeling_ui.agreement import candidate_alpha, consensus, pairwise_tau
from labeling_ui.arena import arena_votes
from labeling_ui.leaderboard import leaderboard


def _rounded(value: float) -> float | None:
    return None if value != value else round(value, 4)


def agreement_report(store: st.Store, project: str) -> dict[str, Any]:
    """Ranking projects: Kendall tau-b per pair of annotators, Krippendorff's alpha (ordinal and interval),
    consensus per item. Rating projects: :func:`rating_report`."""
    with store.transaction(write=False) as session:
        settings = st.get_project(session, project)
    if settings.feedback == "rating":
        return rating_report(store, project, settings.rating_scale or 5, settings.rating_threshold or 1)
    items = st.ranked_items(store, project)
    shared = [item.rankings for item in items if len(item.rankings) >= 2]
    alpha_ordinal = candidate_alpha(shared, "ordinal") if shared else float("nan")
    alpha_interval = candidate_alpha(shared, "interval") if shared else float("nan")
    consensus_rows = []
    for item in items:
        order = consensus(item.rankings)
        levels = sorted(set(order.values()))
        text = " > ".join(
            " = ".join(repr(item.candidates[c][:40]) for c in sorted(order) if order[c] == level)
            for level in levels
        )
        consensus_rows.append(
            {
                "item": item.external_id,
                "prompt": item.prompt[:80],
                "annotators": len(item.rankings),
                "consensus": text,
            }
        )
    return {
        "project": project,
        "feedback": "ranking",
        "alpha_ordinal": _rounded(alpha_ordinal),
        "alpha_interval": _rounded(alpha_interval),
        "kendall_tau": pairwise_tau(shared),
        "consensus": consensus_rows,
    }


def rating_report(store: st.Store, project: str, scale: int, threshold: int) -> dict[str, Any]:
    """A rating project: Krippendorff's alpha over candidates (nominal for thumbs, ordinal for 1 to 5) and,
    per item, each candidate's mean rating and export label (the annotators' majority; ties left out)."""
    from labeling_ui.export import desirable

    items = st.rated_items(store, project)
    shared = [item.ratings for item in items if len(item.ratings) >= 2]
    level = "nominal" if scale == 2 else "ordinal"
    alpha = candidate_alpha(shared, level) if shared else float("nan")
    rows = []
    for item in items:
        for candidate, text in item.candidates.items():
            given = [scores[candidate] for scores in item.ratings.values() if candidate in scores]
            label = desirable(given, threshold)
            rows.append({
                "item": item.external_id,
                "prompt": item.prompt[:80],
                "annotators": len(given),
                "consensus": f"{text[:40]!r}: mean {sum(given) / len(given):.2f}, "
                             + ("tie (left out)" if label is None else "desirable" if label else "undesirable"),
            })
    return {
        "project": project,
        "feedback": "rating",
        "rating_scale": scale,
        "alpha_level": level,
        "alpha": _rounded(alpha),
        "kendall_tau": [],
        "consensus": rows,
    }


def leaderboard_report(store: st.Store, project: str, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The arena leaderboard of a project: Elo and Bradley-Terry ratings with 95% bootstrap intervals."""
    votes = [(a, b, vote) for a, b, vote, _ in arena_votes(store, project)]
    return {
        "project": project,
        "votes": len(votes),
        "both_bad": sum(vote == "both_bad" for _, _, vote in votes),
        "rows": leaderboard(votes, resamples=resamples, seed=seed),
    }
