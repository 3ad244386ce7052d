"""Admin read-outs shared by the Gradio admin tab and the JSON API."""

from __future__ import annotations

from typing import Any

from labeling_ui import store as st
from labeling_ui.agreement import consensus, pairwise_tau, ranking_alpha
from labeling_ui.arena import arena_votes
from labeling_ui.leaderboard import leaderboard


def agreement_report(store: st.Store, project: str) -> dict[str, Any]:
    """Kendall tau-b per pair of annotators, Krippendorff's alpha (ordinal and interval), consensus per item."""
    items = st.ranked_items(store, project)
    shared = [item.rankings for item in items if len(item.rankings) >= 2]
    alpha_ordinal = ranking_alpha(shared, "ordinal") if shared else float("nan")
    alpha_interval = ranking_alpha(shared, "interval") if shared else float("nan")
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
        "alpha_ordinal": None if alpha_ordinal != alpha_ordinal else round(alpha_ordinal, 4),
        "alpha_interval": None if alpha_interval != alpha_interval else round(alpha_interval, 4),
        "kendall_tau": pairwise_tau(shared),
        "consensus": consensus_rows,
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
