"""The labeling page: a Gradio Blocks UI with the ranking task, the arena and the admin tab, its
keyboard shortcuts and styles."""

from __future__ import annotations

import html
import os
import string
import tempfile
from typing import Any

import gradio as gr

from alignment.errors import AlignError
from labeling_ui import arena
from labeling_ui import store as st
from labeling_ui.admin import agreement_report, leaderboard_report
from labeling_ui.display import CSS as DISPLAY_CSS
from labeling_ui.display import answer_html, to_html
from labeling_ui.export import export_project
from labeling_ui.gradio_api import current_admin, current_user, guarded, register_api

LETTERS = string.ascii_uppercase

# Keyboard: a-h pick a candidate, 1-8 give it a rank (then the next candidate is picked),
# Enter submits, x skips. Keys typed into text fields, and keys outside the Rank tab, are left alone.
KEYBOARD_JS = """
<script>
(() => {
  let current = 0;
  const cards = () => [...Array(8).keys()].map(i => document.getElementById('cand-' + i))
    .filter(c => c && c.offsetParent !== null);
  const pick = (i) => {
    const all = cards(); if (!all.length) return;
    current = Math.max(0, Math.min(i, all.length - 1));
    all.forEach((c, j) => c.classList.toggle('cand-current', j === current));
  };
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (t && (t.tagName === 'TEXTAREA' || (t.tagName === 'INPUT' && t.type !== 'radio'))) return;
    if (!document.getElementById('submit-btn')?.offsetParent) return;
    const k = e.key.toLowerCase();
    if (k.length === 1 && k >= 'a' && k <= 'h') { pick(k.charCodeAt(0) - 97); e.preventDefault(); return; }
    if (k.length === 1 && k >= '1' && k <= '8') {
      const card = cards()[current]; if (!card) return;
      const radio = card.querySelector(`input[type=radio][value="${k}"]`);
      if (radio) { radio.click(); pick(current + 1); e.preventDefault(); }
      return;
    }
    if (k === 'enter') { document.querySelector('#submit-btn')?.click(); pick(0); e.preventDefault(); }
    if (k === 'x') { document.querySelector('#skip-btn')?.click(); pick(0); e.preventDefault(); }
  });
})();
</script>
"""

CSS = """
.cand-current { outline: 3px solid var(--color-accent); border-radius: 8px; }
.cand-text { padding: 0.5em 0.75em; }
.cand-label { font-weight: bold; }
""" + DISPLAY_CSS


def prompt_html(prompt: str, render: str) -> str:
    return f"<h3>Prompt</h3>{to_html(prompt, render)}"


def candidate_html(letter: str, answer: str | list[dict[str, str]], render: str) -> str:
    """A candidate's letter and its text (or trajectory, as a conversation), shown as the project's ``render``
    mode says (always escaped)."""
    return f'<div class="cand-label">{letter}.</div><div class="cand-body">{answer_html(answer, render)}</div>'


EDIT_LABEL = "Your corrected answer (saved with your submission if you change it; other annotators never see it)"
EDIT_SAVED_LABEL = ("Your correction, saved earlier (change it, or set it back to the answer or clear it to take it "
                    "back, when you submit; other annotators never see it)")
EDIT_FINAL_LABEL = ("Your corrected final answer: this replaces the trajectory's last assistant message, the turns "
                    "before it stay as they are (saved with your submission if you change it; others never see it)")


THUMBS = [("👍 up", "1"), ("👎 down", "0")]  # a thumbs project's choices: (shown, value)


def answer_choices(task: st.Task) -> list:
    """The choices under each candidate: ranks 1..k, thumbs, or ratings 1..5."""
    if task.feedback == "ranking":
        return [str(r) for r in range(1, len(task.candidates) + 1)]
    return THUMBS if task.rating_scale == 2 else [str(r) for r in range(1, (task.rating_scale or 5) + 1)]


def answer_label(task: st.Task, letter: str) -> str:
    if task.feedback == "ranking":
        return f"Rank of {letter} (1 = best; ties allowed)"
    return f"{letter}: thumbs up or down" if task.rating_scale == 2 else f"Rating of {letter} (1 = worst, 5 = best)"


def submit_given(store: st.Store, user: st.User, state: dict, given: tuple, edits: tuple, new_answer: str) -> None:
    """Submit the annotator's choices under each shown candidate (strings from the page): first the edits
    that differ from their answer and a new answer if written (as corrections; an earlier correction set back
    to the answer or cleared is taken back), then the ranking or ratings."""
    ids, rating, assignment_id = state["ids"], state.get("feedback") == "rating", state["assignment_id"]
    missing = [LETTERS[i] for i in range(len(ids)) if given[i] in (None, "")]
    if missing:
        verb = "rate" if rating else "rank"
        raise AlignError(f"{verb} every candidate before submitting (missing: {', '.join(missing)})")
    saved = state.get("corrected") or [None] * len(ids)  # the corrections shown in the Edit boxes
    for candidate_id, original, earlier, edit in zip(ids, state["texts"], saved, edits, strict=False):
        if edit and edit.strip() and edit != original:
            if edit != earlier:
                st.submit_correction(store, user, assignment_id, edit, corrects=candidate_id)
        elif earlier is not None:
            st.withdraw_correction(store, user, assignment_id, corrects=candidate_id)
    if new_answer and new_answer.strip():
        if new_answer != state.get("own_answer"):
            st.submit_correction(store, user, assignment_id, new_answer)
    elif state.get("own_answer") is not None:
        st.withdraw_correction(store, user, assignment_id)
    values = {ids[i]: int(given[i]) for i in range(len(ids))}
    submit = st.submit_ratings if rating else st.submit_ranking
    submit(store, user, assignment_id, values)


def build_blocks(store: st.Store) -> gr.Blocks:
    with gr.Blocks(title="align labeling") as blocks:
        task_state = gr.State(None)  # {"assignment_id": int, "ids": [candidate id in shown order], "feedback": str}
        with gr.Row():
            who = gr.Markdown("")
            gr.Button("Log out", link="/logout", size="sm", scale=0)
        with gr.Tabs():
            with gr.Tab("Rank", id="rank"):
                with gr.Row():
                    project = gr.Dropdown(label="Project", choices=[], interactive=True, elem_id="project")
                    start = gr.Button("Start / next item", variant="primary", elem_id="start-btn")
                progress = gr.Markdown("", elem_id="my-progress")
                with gr.Accordion("Guidelines", open=False):
                    guidelines = gr.Markdown("")
                prompt = gr.HTML("", elem_id="prompt")  # model-facing text: labeling_ui.display, never raw
                cards, texts, radios, edits = [], [], [], []
                for i in range(st.MAX_CANDIDATES):
                    with gr.Group(visible=False, elem_classes=["cand-card"], elem_id=f"cand-{i}") as card:
                        texts.append(gr.HTML("", elem_classes=["cand-text"]))
                        radios.append(
                            gr.Radio(
                                [],
                                label=f"Rank of {LETTERS[i]} (1 = best; ties allowed)",
                                elem_id=f"rank-{i}",
                            )
                        )
                        with gr.Accordion("Edit this answer", open=False, elem_id=f"edit-open-{i}"):
                            edits.append(gr.Textbox(label=EDIT_LABEL, lines=6, max_lines=40, elem_id=f"edit-{i}"))
                    cards.append(card)
                with gr.Accordion("Write your own answer", open=False, elem_id="new-answer-open"):
                    new_answer = gr.Textbox(label="A better answer of your own (optional)", lines=6, max_lines=40,
                                            elem_id="new-answer")
                gr.Markdown("Keys: **a-h** pick a candidate, **1-8** rank (or rate) it, **Enter** submit, **x** skip.")
                with gr.Row():
                    submit = gr.Button("Submit ranking", variant="primary", elem_id="submit-btn")
                    skip = gr.Button("Skip", elem_id="skip-btn")
                    reason = gr.Textbox(label="Reason (required to flag)", elem_id="reason", scale=2)
                    flag = gr.Button("Flag", variant="stop", elem_id="flag-btn")
                status = gr.Markdown("", elem_id="status")

            with gr.Tab("Arena", id="arena"):
                battle_state = gr.State(None)  # the battle shown and not yet voted on (BattleView as a dict)
                with gr.Row():
                    arena_project = gr.Dropdown(label="Arena", choices=[], interactive=True, elem_id="arena-project")
                    next_battle = gr.Button("Next battle", variant="primary", elem_id="arena-next-btn")
                arena_progress = gr.Markdown("", elem_id="arena-progress")
                battle_prompt = gr.HTML("", elem_id="arena-prompt")
                with gr.Row(equal_height=True):
                    answer_a = gr.HTML("", elem_id="arena-a")
                    answer_b = gr.HTML("", elem_id="arena-b")
                with gr.Row():
                    vote_buttons = {
                        vote: gr.Button(label, elem_id=f"vote-{vote}", variant=variant)
                        for vote, label, variant in (
                            ("a", "A is better", "primary"),
                            ("tie", "Tie", "secondary"),
                            ("both_bad", "Both are bad", "stop"),
                            ("b", "B is better", "primary"),
                        )
                    }
                reveal = gr.Markdown("", elem_id="arena-reveal")

            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                with gr.Row():
                    admin_project = gr.Dropdown(label="Project", choices=[], elem_id="admin-project")
                    refresh = gr.Button("Refresh", elem_id="refresh-btn")
                summary = gr.Markdown("", elem_id="admin-summary")
                leaderboard_table = gr.Dataframe(
                    label="Arena leaderboard: Elo and Bradley-Terry ratings, 95% bootstrap intervals",
                    interactive=False,
                    elem_id="leaderboard",
                    visible=False,
                )
                per_annotator = gr.Dataframe(
                    label="Progress per annotator (corrections: answers they rewrote or wrote)", interactive=False
                )
                taus = gr.Dataframe(label="Kendall's tau-b per pair of annotators", interactive=False)
                consensus_table = gr.Dataframe(
                    label="Consensus ranking per item (mean rank)", interactive=False
                )
                flags = gr.Dataframe(label="Flagged items", interactive=False)
                with gr.Row():
                    export_kind = gr.Radio(["pairs", "kto"], value="pairs", label="Rows (kto: rating projects)",
                                           elem_id="export-kind")
                    export_mode = gr.Radio(["all", "consensus"], value="all", label="Pairs")
                    export_format = gr.Radio(["jsonl", "parquet"], value="jsonl", label="Format")
                    export_button = gr.Button("Export", elem_id="export-btn")
                export_file = gr.File(label="Export", elem_id="export-file")
                with gr.Accordion("Rankings of one annotator", open=False):
                    annotator = gr.Textbox(label="Annotator")
                    show_rankings = gr.Button("Show")
                    rankings_table = gr.Dataframe(interactive=False)
                with gr.Accordion("Add a user", open=False):
                    new_name = gr.Textbox(label="Name")
                    new_password = gr.Textbox(label="Password", type="password")
                    new_role = gr.Radio(list(st.ROLES), value="annotator", label="Role")
                    add_button = gr.Button("Add user")
                    add_status = gr.Markdown("")
                with gr.Accordion("Login locks", open=False, elem_id="locks-open"):
                    locks_table = gr.Dataframe(interactive=False, elem_id="locks")
                    with gr.Row():
                        lock_name = gr.Textbox(label="Account", elem_id="unlock-name")
                        lock_address = gr.Textbox(label="Client address", elem_id="unlock-address")
                        show_locks = gr.Button("Show locks", elem_id="locks-btn")
                        unlock_button = gr.Button("Unlock", variant="stop", elem_id="unlock-btn")
                    unlock_status = gr.Markdown("", elem_id="unlock-status")
                audit_table = gr.Dataframe(label="Audit log (latest first)", interactive=False)

        candidate_outputs = [*cards, *texts, *radios]

        def blank(message: str):
            hidden = [gr.update(visible=False)] * st.MAX_CANDIDATES
            keep = [gr.update()] * (2 * st.MAX_CANDIDATES)
            return (None, "", "", "", message, *hidden, *keep, *[gr.update()] * (st.MAX_CANDIDATES + 2))

        def render(task: st.Task | None, user: st.User, project_name: str, message: str = ""):
            mine = st.user_progress(store, user, project_name)
            done = "rated" if task is not None and task.feedback == "rating" else "ranked"
            progress_text = (
                f"**Your progress in {project_name}:** {mine['ranked']} {done}, {mine['skipped']} skipped, "
                f"{mine['flagged']} flagged (project has {mine['items']} items)"
            )
            if task is None:
                hidden = [gr.update(visible=False)] * st.MAX_CANDIDATES
                return (
                    None,
                    progress_text,
                    "",
                    "<p><b>No items left for you in this project. Thank you!</b></p>",
                    message,
                    *hidden,
                    *[gr.update()] * st.MAX_CANDIDATES,
                    *[gr.update(value=None)] * st.MAX_CANDIDATES,
                    *[gr.update()] * (st.MAX_CANDIDATES + 1),
                    "",
                )
            k = len(task.candidates)
            choices = answer_choices(task)
            card_updates = [gr.update(visible=i < k) for i in range(st.MAX_CANDIDATES)]
            answers_shown = [c.get("messages") or c["text"] for c in task.candidates]
            text_updates = [
                gr.update(value=candidate_html(LETTERS[i], answers_shown[i], task.render) if i < k else "")
                for i in range(st.MAX_CANDIDATES)
            ]
            radio_updates = [gr.update(choices=choices, value=None, label=answer_label(task, LETTERS[i]))
                             for i in range(st.MAX_CANDIDATES)]
            texts_shown = [c["text"] for c in task.candidates]
            mine = {c["corrects"]: c["text"] for c in task.corrections}  # a task shown again: what they wrote
            corrected = [mine.get(c["id"]) for c in task.candidates]
            state = {"assignment_id": task.assignment_id, "ids": [c["id"] for c in task.candidates],
                     "texts": texts_shown, "feedback": task.feedback, "corrected": corrected,
                     "own_answer": mine.get(None)}

            def edit_label(i: int) -> str:
                if corrected[i] is not None:
                    return EDIT_SAVED_LABEL
                return EDIT_FINAL_LABEL if "messages" in task.candidates[i] else EDIT_LABEL

            edit_updates = [  # a trajectory's Edit is its final assistant message (its "text")
                gr.update(value=corrected[i] if corrected[i] is not None else texts_shown[i], label=edit_label(i))
                if i < k else gr.update(value="") for i in range(st.MAX_CANDIDATES)
            ]
            return (
                state,
                progress_text,
                task.guidelines or "_No guidelines for this project._",
                prompt_html(task.prompt, task.render),
                message,
                *card_updates,
                *text_updates,
                *radio_updates,
                gr.update(value="Submit ratings" if task.feedback == "rating" else "Submit ranking"),
                *edit_updates,
                mine.get(None) or "",
            )

        task_outputs = [task_state, progress, guidelines, prompt, status, *candidate_outputs, submit, *edits,
                        new_answer]

        def on_load(request: gr.Request):
            user = current_user(store, request)
            projects = st.list_projects(store)
            first = projects[0] if projects else None
            admin = user.role == "admin"
            ranking = st.list_projects(store, "ranking")
            arenas = st.list_projects(store, "arena")
            return (
                f"Logged in as **{user.name}** ({user.role})",
                gr.update(choices=ranking, value=ranking[0] if ranking else None),
                gr.update(choices=arenas, value=arenas[0] if arenas else None),
                gr.update(visible=admin),
                gr.update(choices=projects, value=first) if admin else gr.update(),
            )

        @guarded
        def on_next(project_name: str, request: gr.Request):
            if not project_name:
                return blank("Choose a project, then press **Start / next item**.")
            user = current_user(store, request)
            return render(st.claim_next(store, user, project_name), user, project_name)

        @guarded
        def on_submit(
            state: dict | None, project_name: str, r0, r1, r2, r3, r4, r5, r6, r7,
            e0, e1, e2, e3, e4, e5, e6, e7, own: str, request: gr.Request,
        ):  # one choice and one edit per candidate slot (MAX_CANDIDATES), then the annotator's own answer
            if not state:
                raise AlignError("no open item: press 'Start / next item'")
            user = current_user(store, request)
            submit_given(store, user, state, (r0, r1, r2, r3, r4, r5, r6, r7), (e0, e1, e2, e3, e4, e5, e6, e7), own)
            return render(st.claim_next(store, user, project_name), user, project_name, "Saved. Next item:")

        def releaser(status_name: str):
            @guarded
            def on_release(state: dict | None, project_name: str, why: str, request: gr.Request):
                if not state:
                    raise AlignError("no open item: press 'Start / next item'")
                user = current_user(store, request)
                st.release(store, user, state["assignment_id"], status_name, why)
                result = render(
                    st.claim_next(store, user, project_name), user, project_name, f"Item {status_name}."
                )
                return (*result, "")

            return on_release

        def votes_text(user: st.User, project_name: str) -> str:
            mine = arena.arena_progress(store, user, project_name)
            return f"**Your votes in {project_name}:** {mine['voted']} of {mine['battles']} battles"

        def answers(view: dict, model_a: str = "", model_b: str = "") -> tuple[str, str]:
            def one(side: str, model: str) -> str:
                title = f"{side}: {model}" if model else side
                body = answer_html(view.get(f"{side.lower()}_messages") or view[side.lower()], view.get("render", "text"))
                return f"<h4>{html.escape(title)}</h4>{body}"

            return one("A", model_a), one("B", model_b)

        @guarded
        def on_battle(project_name: str, request: gr.Request):
            if not project_name:
                return None, "", "", "", "", "No arena yet: an admin creates one with `align label import --arena`."
            user = current_user(store, request)
            view = arena.next_battle(store, user, project_name)
            if view is None:
                done = "<p><b>No battles left for you in this arena. Thank you!</b></p>"
                return None, votes_text(user, project_name), done, "", "", ""
            return (
                view.model_dump(),
                votes_text(user, project_name),
                prompt_html(view.prompt, view.render),
                *answers(view.model_dump()),
                "Which answer is better? The models' names are shown after your vote.",
            )

        def voter(vote: str):
            @guarded
            def on_vote(view: dict | None, project_name: str, request: gr.Request):
                if view is None:
                    raise AlignError("no open battle: press 'Next battle'")
                user = current_user(store, request)
                shown = arena.cast_vote(store, user, view["battle_id"], vote)
                said = {"a": "A is better", "b": "B is better", "tie": "a tie", "both_bad": "both are bad"}[vote]
                return (
                    None,
                    votes_text(user, project_name),
                    *answers(view, shown.model_a, shown.model_b),
                    f"**You voted: {said}.** A was **{shown.model_a}**, B was **{shown.model_b}**. "
                    "Press **Next battle** for another.",
                )

            return on_vote

        private = {"api_visibility": "private"}
        battle_view = [battle_state, arena_progress, battle_prompt, answer_a, answer_b, reveal]
        blocks.load(on_load, None, [who, project, arena_project, admin_tab, admin_project], **private).then(
            on_next, [project], task_outputs, **private
        ).then(on_battle, [arena_project], battle_view, **private)
        next_battle.click(on_battle, [arena_project], battle_view, **private)
        for vote, button in vote_buttons.items():
            button.click(
                voter(vote),
                [battle_state, arena_project],
                [battle_state, arena_progress, answer_a, answer_b, reveal],
                **private,
            )
        start.click(on_next, [project], task_outputs, **private)
        submit.click(on_submit, [task_state, project, *radios, *edits, new_answer], task_outputs, **private)
        skip.click(releaser("skipped"), [task_state, project, reason], [*task_outputs, reason], **private)
        flag.click(releaser("flagged"), [task_state, project, reason], [*task_outputs, reason], **private)

        @guarded
        def on_refresh(project_name: str, request: gr.Request):
            if not project_name:
                return (gr.update(),) * 7
            current_admin(store, request)
            progress_data = st.project_progress(store, project_name)
            report = agreement_report(store, project_name)
            rows = [
                {"annotator": name, **counts} for name, counts in sorted(progress_data["annotators"].items())
            ]
            text = (
                f"**{project_name}**: {progress_data['done']} / {progress_data['needed']} annotations "
                f"({progress_data['percent']}%), {progress_data['items']} items x M={progress_data['annotations_per_item']}. "
                + _alpha_text(report)
            )
            board = leaderboard_report(store, project_name)
            if board["votes"]:
                text += f" Arena: {board['votes']} votes ({board['both_bad']} both bad, counted as ties)."
            return (
                text,
                _leaderboard_update(board["rows"]),
                _frame(rows, ["annotator", "submitted", "active", "skipped", "flagged", "expired", "corrections"]),
                _frame(report["kendall_tau"], ["annotator_a", "annotator_b", "items", "tau"]),
                _frame(report["consensus"], ["item", "prompt", "annotators", "consensus"]),
                _frame(st.flagged_items(store, project_name), ["item", "annotator", "reason", "at"]),
                _frame(st.audit_log(store, 100), ["at", "user", "action", "detail"]),
            )

        @guarded
        def on_export(project_name: str, kind: str, mode: str, file_format: str, request: gr.Request):
            admin = current_admin(store, request)
            name = f"{project_name}-kto" if kind == "kto" else f"{project_name}-{mode}"
            out = os.path.join(tempfile.mkdtemp(prefix="align-export-"), f"{name}.{file_format}")
            export_project(store, project_name, out, mode=mode, kind=kind, by=admin.name)  # type: ignore[arg-type]
            return out

        @guarded
        def on_rankings(project_name: str, name: str, request: gr.Request):
            current_admin(store, request)
            rows = [
                {
                    "item": item.external_id,
                    "prompt": item.prompt[:80],
                    "ranking": " , ".join(f"{item.candidates[c][:30]!r}: {r}" for c, r in ranks.items()),
                }
                for item in st.ranked_items(store, project_name, name or None)
                for who_, ranks in item.rankings.items()
                if not name or who_ == name
            ]
            return _frame(rows, ["item", "prompt", "ranking"])

        @guarded
        def on_add_user(name: str, password: str, role: str, request: gr.Request):
            admin = current_admin(store, request)
            st.add_user(store, name, password, role, by=admin.name)
            return f"Added {role} **{name}**.", ""

        def locks_frame():
            columns = ["scope", "key", "failures", "locks", "last_failure_at", "locked_until"]
            return _frame(st.login_throttles(store), columns)

        @guarded
        def on_locks(request: gr.Request):
            current_admin(store, request)
            return locks_frame()

        @guarded
        def on_unlock(name: str, address: str, request: gr.Request):
            admin = current_admin(store, request)
            name, address = name.strip() or None, address.strip() or None
            cleared = st.unlock(store, name, address, by=admin.name)
            said = st.unlock_message(name, address, cleared)
            return f"{said[:1].upper()}{said[1:]}.", locks_frame()

        show_locks.click(on_locks, None, [locks_table], **private)
        unlock_button.click(on_unlock, [lock_name, lock_address], [unlock_status, locks_table], **private)

        admin_outputs = [summary, leaderboard_table, per_annotator, taus, consensus_table, flags, audit_table]
        refresh.click(on_refresh, [admin_project], admin_outputs, **private)
        admin_project.change(on_refresh, [admin_project], admin_outputs, **private)
        export_button.click(
            on_export, [admin_project, export_kind, export_mode, export_format], [export_file], **private
        )
        show_rankings.click(on_rankings, [admin_project, annotator], [rankings_table], **private)
        add_button.click(
            on_add_user, [new_name, new_password, new_role], [add_status, new_password], **private
        )

        register_api(store)
    return blocks


def _alpha_text(report: dict[str, Any]) -> str:
    """Krippendorff's alpha as the admin summary says it: of rankings (ordinal, interval) or of ratings."""
    if report["feedback"] == "rating":
        scale = "thumbs" if report["rating_scale"] == 2 else "1-5"
        return f"Ratings ({scale}), Krippendorff's alpha ({report['alpha_level']}): {report['alpha']}."
    return f"Krippendorff's alpha: ordinal {report['alpha_ordinal']}, interval {report['alpha_interval']}."


def _frame(rows: list[dict[str, Any]], columns: list[str]):
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def _leaderboard_update(rows: list[dict[str, Any]]):
    """The leaderboard table (intervals as 'low - high'), shown only for projects with arena votes."""
    table = _frame(
        [
            {
                "model": row["model"],
                "Elo": row["elo"],
                "Elo 95% CI": "{} - {}".format(*row["elo_ci"]),
                "Bradley-Terry": row["bt"],
                "BT 95% CI": "{} - {}".format(*row["bt_ci"]),
                "votes": row["votes"],
                "win rate": row["win_rate"],
            }
            for row in rows
        ],
        ["model", "Elo", "Elo 95% CI", "Bradley-Terry", "BT 95% CI", "votes", "win rate"],
    )
    return gr.update(value=table, visible=bool(rows))
