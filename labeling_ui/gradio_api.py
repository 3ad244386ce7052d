"""The Gradio API (``gradio_client``): typed endpoints, JSON strings in and out, each guarded like the page:
the user is looked up again from ``request.username`` and admin endpoints check the role."""

from __future__ import annotations

import functools
import json

import gradio as gr
from pydantic import BaseModel

from alignment.errors import AlignError
from labeling_ui import arena
from labeling_ui import store as st
from labeling_ui.admin import agreement_report, leaderboard_report
from labeling_ui.export import export_pairs, jsonl_text


def current_user(store: st.Store, request: gr.Request) -> st.User:
    if request is None or not request.username:
        raise gr.Error("log in first")
    return st.get_user(store, request.username)


def current_admin(store: st.Store, request: gr.Request) -> st.User:
    user = current_user(store, request)
    if user.role != "admin":
        raise gr.Error(f"user {user.name!r} is not an admin")
    return user


def guarded(fn):
    """Turn store errors into messages shown in the page (and returned to API clients as errors)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (AlignError, PermissionError) as error:
            raise gr.Error(str(error)) from error

    return wrapped


def _json_or_null(model: BaseModel | None) -> str:
    return model.model_dump_json() if model is not None else "null"


def register_api(store: st.Store) -> None:
    """Typed endpoints for ``gradio_client``; JSON strings in and out. Inside a Blocks context."""

    @guarded
    def claim(project: str, request: gr.Request) -> str:
        """Claim (or resume) your next item in a project: JSON task, or 'null' when none is left."""
        return _json_or_null(st.claim_next(store, current_user(store, request), project))

    @guarded
    def submit(assignment_id: int, ranks: str, request: gr.Request) -> str:
        """Submit a ranking: ranks is JSON {candidate id: rank}, 1 = best, ties allowed."""
        return json.dumps(
            {"ranking_id": st.submit_ranking(store, current_user(store, request), int(assignment_id), ranks)}
        )

    @guarded
    def rate(assignment_id: int, ratings: str, request: gr.Request) -> str:
        """Submit ratings (rating projects): JSON {candidate id: rating}, thumbs 0/1 or 1 to 5."""
        return json.dumps(
            {"rating_id": st.submit_ratings(store, current_user(store, request), int(assignment_id), ratings)}
        )

    @guarded
    def skip(assignment_id: int, reason: str, request: gr.Request) -> str:
        """Skip your open item."""
        st.release(store, current_user(store, request), int(assignment_id), "skipped", reason)
        return "skipped"

    @guarded
    def flag(assignment_id: int, reason: str, request: gr.Request) -> str:
        """Flag your open item with a reason."""
        st.release(store, current_user(store, request), int(assignment_id), "flagged", reason)
        return "flagged"

    @guarded
    def my_progress(project: str, request: gr.Request) -> str:
        """Your own counts in a project."""
        return json.dumps(st.user_progress(store, current_user(store, request), project))

    @guarded
    def arena_next(project: str, request: gr.Request) -> str:
        """A battle you have not voted on: JSON {battle_id, prompt, a, b, ...} without model names, or 'null'."""
        return _json_or_null(arena.next_battle(store, current_user(store, request), project))

    @guarded
    def arena_vote(battle_id: int, vote: str, request: gr.Request) -> str:
        """Vote a, b, tie or both_bad on a battle; returns JSON with the models that were A and B."""
        return arena.cast_vote(store, current_user(store, request), int(battle_id), vote).model_dump_json()

    @guarded
    def admin_leaderboard(project: str, request: gr.Request) -> str:
        """Admins: the arena leaderboard (Elo and Bradley-Terry with 95% bootstrap intervals)."""
        current_admin(store, request)
        return json.dumps(leaderboard_report(store, project))

    @guarded
    def admin_progress(project: str, request: gr.Request) -> str:
        """Admins: progress per project and annotator, with agreement."""
        current_admin(store, request)
        return json.dumps(
            {**st.project_progress(store, project), "agreement": agreement_report(store, project)}
        )

    @guarded
    def admin_rankings(project: str, annotator: str, request: gr.Request) -> str:
        """Admins: every submitted ranking of a project, or of one annotator."""
        current_admin(store, request)
        return json.dumps([item.model_dump() for item in st.ranked_items(store, project, annotator or None)])

    @guarded
    def admin_export(project: str, mode: str, request: gr.Request) -> str:
        """Admins: preference pairs as JSONL text (mode 'all' or 'consensus')."""
        admin = current_admin(store, request)
        return jsonl_text(export_pairs(store, project, mode, admin.name, lambda _: "(gradio api)"))  # type: ignore[arg-type]

    @guarded
    def admin_add_user(name: str, password: str, role: str, request: gr.Request) -> str:
        """Admins: add a user."""
        admin = current_admin(store, request)
        st.add_user(store, name, password, role, by=admin.name)
        return name

    for fn in (
        claim,
        submit,
        rate,
        skip,
        flag,
        my_progress,
        arena_next,
        arena_vote,
        admin_leaderboard,
        admin_progress,
        admin_rankings,
        admin_export,
        admin_add_user,
    ):
        gr.api(fn, api_name=fn.__name__, concurrency_limit=None)
