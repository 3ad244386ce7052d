"""Trajectory candidates: an answer that is a multi-turn, tool-using conversation (TRL's conversational format).
Strict import (errors name file:line), lossless storage on SQLite and PostgreSQL (and the upgrade of older
databases), the conversation display (tool calls shown as calls, no markup live), rankings, ratings, corrections
(an Edit replaces the final assistant message), the arena, and the export in TRL's conversational format, read
by align's own DPO, KTO and SFT loaders. In Chromium: test_labeling_browser.py."""

from __future__ import annotations

import html
import json
import re
import sqlite3

import pyarrow.parquet as pq
import pytest

from alignment.errors import AlignError
from labeling_ui import arena
from labeling_ui import store as st
from labeling_ui.__main__ import main
from labeling_ui.display import answer_html, trajectory_html
from labeling_ui.export import export_project, project_rows
from tests.test_labeling_display import tags, visible_text

PASSWORD = "password123"
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "347 * 86"}}</tool_call>'
SOLVED = [  # the calculator is called, answers, and the answer is given
    {"role": "assistant", "content": "Let me compute that.\n" + CALL},
    {"role": "tool", "content": "29842"},
    {"role": "assistant", "content": "<answer>29842</answer>"},
]
GUESSED = [{"role": "assistant", "content": "<answer>30000</answer>"}]  # no tool call at all
SCRIPT, IMAGE = "<script>alert(1)</script>", "<img src=x onerror=\"document.title='pwned'\">"
HOSTILE = [  # markup in every place a model or a tool can put it, with whitespace and Unicode that must survive
    {"role": "system", "content": "You may search the web."},
    {"role": "user", "content": f"Look up {SCRIPT}"},
    {"role": "assistant", "content": "  Searching:\n\t" + '<tool_call>\n{"name": "search", "arguments": '
     f'{{"query": "{SCRIPT}", "html": "<img src=x onerror=alert(2)>"}}}}\n</tool_call>'},
    {"role": "tool", "content": f"{IMAGE}\n    indented result {SCRIPT} é ✓\n"},
    {"role": "assistant", "content": f"Found it: {IMAGE} **not bold**"},
]


def record(candidates, **extra) -> dict:
    return {"id": "mul", "prompt": "What is 347 * 86?", "candidates": candidates, **extra}


def annotator(store: st.Store, name: str = "ann") -> st.User:
    st.add_user(store, name, PASSWORD)
    return st.get_user(store, name)


def ids_by_answer(task: st.Task) -> dict[str, int]:
    """Candidate ids keyed by their final text (a trajectory's final assistant message)."""
    return {c["text"]: c["id"] for c in task.candidates}


def test_trajectories_are_stored_exactly_and_shown_without_model_names(db):
    candidates = [{"messages": SOLVED, "model": "tools-v2"}, {"messages": HOSTILE, "model": "tools-v1"},
                  {"text": "About 30,000.", "model": "base"}]
    assert st.import_items(db, "tools", [record(candidates)], annotations_per_item=1) == {"added": 1, "skipped": 0}
    ann = annotator(db)
    task = st.claim_next(db, ann, "tools")
    by_final = {c["text"]: c for c in task.candidates}
    assert by_final["<answer>29842</answer>"]["messages"] == SOLVED  # every character, every turn, in order
    assert by_final[HOSTILE[-1]["content"]]["messages"] == HOSTILE
    assert set(by_final["About 30,000."]) == {"id", "text"}  # text candidates as before
    assert "tools-v" not in task.model_dump_json()
    ranks = {by_final["<answer>29842</answer>"]["id"]: 1, by_final["About 30,000."]["id"]: 2,
             by_final[HOSTILE[-1]["content"]]["id"]: 3}
    st.submit_ranking(db, ann, task.assignment_id, ranks)
    (item,) = st.ranked_items(st.Store(db.url), "tools")  # read back through a new connection pool
    assert sorted(map(json.dumps, item.trajectories.values())) == sorted(map(json.dumps, [SOLVED, HOSTILE]))
    assert item.answer(by_final["About 30,000."]["id"]) == "About 30,000."


def test_rating_trajectories_exports_kto_rows_with_message_list_completions(db):
    chat = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "What is 347 * 86?"}]
    st.import_items(db, "rate", [record([{"messages": SOLVED}, {"messages": GUESSED}], messages=chat)],
                    annotations_per_item=1, feedback="rating", rating_scale=2)
    ann = annotator(db)
    task = st.claim_next(db, ann, "rate")
    ids = ids_by_answer(task)
    st.submit_ratings(db, ann, task.assignment_id, {ids["<answer>29842</answer>"]: 1, ids["<answer>30000</answer>"]: 0})
    rows = project_rows(db, "rate", "kto")
    assert sorted(rows, key=lambda row: not row["label"]) == [
        {"prompt": chat, "completion": SOLVED, "label": True},
        {"prompt": chat, "completion": GUESSED, "label": False},
    ]


def test_an_edit_replaces_the_final_assistant_message_of_the_trajectory(db):
    st.import_items(db, "tools", [record([{"messages": SOLVED}, "30000"])], annotations_per_item=1)
    ann = annotator(db)
    task = st.claim_next(db, ann, "tools")
    ids = ids_by_answer(task)
    with pytest.raises(AlignError, match="same as the answer"):  # the Edit box starts as the final message
        st.submit_correction(db, ann, task.assignment_id, "<answer>29842</answer>", corrects=ids["<answer>29842</answer>"])
    fixed = "The product is <answer>29842</answer>.\n"
    st.submit_correction(db, ann, task.assignment_id, fixed, corrects=ids["<answer>29842</answer>"])
    st.submit_correction(db, ann, task.assignment_id, "29842")  # an own answer stays text
    st.submit_ranking(db, ann, task.assignment_id, {ids["<answer>29842</answer>"]: 1, ids["30000"]: 2})
    corrected = [*SOLVED[:2], {"role": "assistant", "content": fixed}]
    (edit, own) = sorted(st.corrections(db, "tools"), key=lambda c: c.messages is None)
    assert (edit.text, edit.messages, edit.original_messages) == (fixed, corrected, SOLVED)
    assert (own.text, own.messages) == ("29842", None)
    prompt = [{"role": "user", "content": "What is 347 * 86?"}]
    pairs = project_rows(db, "tools", "pairs")
    assert {"prompt": prompt, "chosen": SOLVED, "rejected": [{"role": "assistant", "content": "30000"}]} in pairs
    assert {"prompt": prompt, "chosen": corrected, "rejected": SOLVED} in pairs  # the correction over the original
    assert project_rows(db, "tools", "sft") == [{"messages": prompt + corrected},
                                                {"prompt": "What is 347 * 86?", "completion": "29842"}]
    (item,) = st.ranked_items(db, "tools")
    assert len(item.candidates) == 2  # the correction is not a candidate to rank


BAD_TRAJECTORIES = {
    "role": ([{"role": "robot", "content": "x"}], r"candidates\.0\.trajectory\.messages\.0\.role: Input should be "
                                                  "'system', 'user', 'assistant' or 'tool'"),
    "content": ([{"role": "assistant", "content": ["x"]}], r"messages\.0\.content: Input should be a valid string"),
    "no_content": ([{"role": "assistant"}], r"messages\.0\.content: Field required"),
    "none": ([{"role": "assistant", "content": None}], r"messages\.0\.content: Input should be a valid string"),
    "no_assistant": ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "1"}],
                     "a trajectory needs at least one assistant message"),
    "empty": ([], "messages: List should have at least 1 item"),
    "not_a_list": ("<answer>1</answer>", "messages: Input should be a valid list"),
    "extra_key": ([{"role": "assistant", "content": "", "tool_calls": [{"name": "calculator"}]}],
                  r"a message is \{\"role\", \"content\"\}, not \['tool_calls'\] \(tool calls go in the assistant's content"),
    "not_a_message": (["hello"], r"messages\.0: Input should be a valid dictionary"),
}


@pytest.mark.parametrize("case", BAD_TRAJECTORIES)
def test_bad_trajectories_are_refused_with_the_field_at_fault(tmp_path, case):
    store = st.Store(f"sqlite:///{tmp_path / 'label.db'}")
    messages, expected = BAD_TRAJECTORIES[case]
    with pytest.raises(AlignError, match=f"^record 1: .*{expected}"):
        st.import_items(store, "tools", [record([{"messages": messages}, "fine"])])
    assert st.list_projects(store) == []  # nothing stored, not even the project


def test_candidate_forms_and_file_line_errors(tmp_path, capsys):
    store = st.Store(f"sqlite:///{tmp_path / 'label.db'}")
    for candidate, expected in (
        ({"messages": SOLVED, "text": "also text"}, r"candidates\.0\.trajectory\.text: Extra inputs are not permitted"),
        ({"messages": SOLVED, "model": 3}, r"candidates\.0\.trajectory\.model: Input should be a valid string"),
        (7, r'candidates\.0: a candidate is a string, \{"text", "model"\} or \{"messages", "model"\}'),
        ([SOLVED], r"candidates\.0: a candidate is a string"),  # a bare list is not a candidate: use {"messages"}
        ({"model": "m"}, "a candidate object needs a non-empty 'text' \\(or 'messages': a trajectory\\)"),
    ):
        with pytest.raises(AlignError, match=expected):
            st.import_items(store, "forms", [record([candidate, "fine"])])
    path = tmp_path / "items.jsonl"
    good = record([{"messages": SOLVED, "model": "m"}, "30000"])
    bad = record([{"messages": [{**SOLVED[0], "role": "function"}]}, "30000"], id="bad")
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")  # the bad row is on line 3
    with pytest.raises(AlignError, match=rf"^{path}:3: candidates\.0\.trajectory\.messages\.0\.role"):
        st.import_items(store, "forms", st.read_jsonl(path), source=path)
    assert main(["import", "forms", str(path), "--db", store.url]) == 2
    assert f"error: {path}:3: candidates.0.trajectory.messages.0.role" in capsys.readouterr().err
    assert st.list_projects(store) == []  # the good line 1 is not stored either: one transaction
    path.write_text(json.dumps(good) + "\n")
    assert main(["import", "forms", str(path), "--db", store.url]) == 0
    ann = annotator(store)
    assert [c.get("messages") for c in st.claim_next(store, ann, "forms").candidates if "messages" in c] == [SOLVED]


def test_a_database_from_before_trajectories_gains_the_column_and_keeps_its_items(tmp_path):
    path = tmp_path / "old.sqlite"
    store = st.Store(f"sqlite:///{path}")
    st.import_items(store, "old", [{"prompt": "Q", "candidates": ["a", "b"]}], annotations_per_item=1)
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE candidates DROP COLUMN messages")
    store = st.Store(f"sqlite:///{path}")
    st.import_items(store, "new", [record([{"messages": SOLVED}, "30000"])], annotations_per_item=1)
    ann = annotator(store)
    assert sorted(c["text"] for c in st.claim_next(store, ann, "old").candidates) == ["a", "b"]
    assert SOLVED in [c.get("messages") for c in st.claim_next(store, ann, "new").candidates]


@pytest.mark.parametrize("mode", ["text", "markdown"])
def test_a_trajectory_shows_as_a_conversation_with_tool_calls_and_no_live_markup(mode):
    markup = trajectory_html(HOSTILE, mode)
    markdown = {"strong"} if mode == "markdown" else set()  # **not bold** is bold in Markdown
    assert tags(markup) <= {"div", "p", "br", "pre", "code", "span", "i", *markdown}  # no script, img, a or b
    shown = visible_text(markup)
    for message in HOSTILE:
        if message["role"] != "assistant":
            assert message["content"] in shown  # system, user and tool text exactly as written
    assert f"Found it: {IMAGE}" in shown  # the model's markup as text
    assert f'"query": "{SCRIPT}", "html": "<img src=x onerror=alert(2)>"' in shown  # the call's JSON as written
    assert "Tool call: search" in shown and "<tool_call>" not in shown  # a call, not its tags
    assert re.findall(r'turn-role">([^<]*)<', markup) == ["System", "User", "Assistant", "Tool output", "Assistant"]
    assert f'<pre class="tool-output">{html.escape(HOSTILE[3]["content"])}</pre>' in markup  # whitespace kept
    if mode == "text":
        assert "  Searching:\n\t" in shown and "**not bold**" in shown


def test_tool_calls_are_shown_even_when_broken():
    solved = visible_text(answer_html(SOLVED))
    assert "Let me compute that." in solved and "Tool call: calculator" in solved
    assert '{"name": "calculator", "arguments": {"expression": "347 * 86"}}' in solved and "29842" in solved
    broken = visible_text(answer_html([{"role": "assistant", "content": "<tool_call>{name: calc</tool_call> done"}]))
    assert "Tool call (not valid JSON)" in broken and "{name: calc" in broken and "done" in broken
    nameless = visible_text(answer_html([{"role": "assistant", "content": '<tool_call>{"arguments": {}}</tool_call>'}]))
    assert "Tool call (no tool name)" in nameless
    unclosed = [{"role": "assistant", "content": '<tool_call>{"name": "calculator"'}]
    assert visible_text(answer_html(unclosed)) == "Assistant" + unclosed[0]["content"]  # not a call: shown as written
    assert "(empty message)" in visible_text(answer_html([{"role": "assistant", "content": ""}]))
    assert answer_html("plain <b>text</b>") == '<div class="model-text"><div class="plain">plain &lt;b&gt;text&lt;/b&gt;</div></div>'


def ranked_tool_project(store: st.Store) -> None:
    """Two items: a text prompt and a chat prompt, each with two trajectories and a text answer, ranked by one annotator."""
    chat = [{"role": "user", "content": "What is 12 * 12?"}]
    twelve = [{"role": "assistant", "content": CALL.replace("347 * 86", "12 * 12")}, {"role": "tool", "content": "144"},
              {"role": "assistant", "content": "<answer>144</answer>"}]
    items = [record([{"messages": SOLVED}, {"messages": GUESSED}, "29842"]),
             {"id": "sq", "prompt": "What is 12 * 12?", "messages": chat,
              "candidates": [{"messages": twelve}, {"messages": GUESSED}, "144"]}]
    st.import_items(store, "tools", items, annotations_per_item=1)
    ann = annotator(store)
    while (task := st.claim_next(store, ann, "tools")) is not None:
        order = sorted(task.candidates, key=lambda c: ("messages" not in c, "30000" in c["text"]))
        st.submit_ranking(store, ann, task.assignment_id, {c["id"]: rank for rank, c in enumerate(order, start=1)})


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_exported_pairs_are_conversational_and_align_dpo_loader_reads_them(tmp_path, suffix):
    from alignment.config import PreferenceDataConfig
    from alignment.preference_data import check_preference_rows, row_pairs

    store = st.Store(f"sqlite:///{tmp_path / 'label.db'}")
    ranked_tool_project(store)
    out = tmp_path / f"pairs{suffix}"
    assert export_project(store, "tools", out) == 6
    rows = [json.loads(line) for line in out.read_text().splitlines()] if suffix == ".jsonl" else pq.read_table(out).to_pylist()
    prompt = [{"role": "user", "content": "What is 347 * 86?"}]
    assert {"prompt": prompt, "chosen": SOLVED, "rejected": GUESSED} in rows
    assert {"prompt": prompt, "chosen": SOLVED, "rejected": [{"role": "assistant", "content": "29842"}]} in rows
    assert all(isinstance(row[key], list) for row in rows for key in ("prompt", "chosen", "rejected"))
    config = PreferenceDataConfig(train=str(out))
    check = check_preference_rows(out, config)  # the DPO / reward-model job's pre-flight row checker
    assert (check.rows, check.conversational) == (6, 6)
    for row in rows:
        ((prompt_part, chosen, rejected, _),) = row_pairs(row, config)
        assert (prompt_part, chosen, rejected) == (row["prompt"], row["chosen"], row["rejected"])  # nothing dropped


def test_the_dpo_loader_tokenises_trajectories_with_loss_on_assistant_turns_only(tmp_path):
    """The exported pairs through align's DPO loader with the ChatML template: every assistant turn (the tool call
    too) carries labels, the prompt and the tool's output none."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from alignment.chat_templates import CHATML
    from alignment.config import PreferenceDataConfig
    from alignment.data import IGNORE_INDEX
    from alignment.preference_data import load_preference_pairs

    store = st.Store(f"sqlite:///{tmp_path / 'label.db'}")
    ranked_tool_project(store)
    out = tmp_path / "pairs.jsonl"
    export_project(store, "tools", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    contents = [m["content"] for row in rows for key in ("prompt", "chosen", "rejected") for m in row[key]]
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator([*contents, CHATML], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]")
    tokenizer.chat_template = CHATML
    pairs = load_preference_pairs(out, tokenizer, PreferenceDataConfig(train=str(out), max_length=512))
    assert len(pairs) == 6
    example = pairs[next(i for i, row in enumerate(rows) if row["chosen"] == SOLVED)].chosen
    learnt = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    result, question = tokenizer.convert_tokens_to_ids(["29842", "What"])
    assert example.input_ids.count(result) == 2 and learnt.count(result) == 1  # the tool's output is context only
    assert question in example.input_ids and question not in learnt
    assert tokenizer.convert_tokens_to_ids("calculator") in learnt  # the tool call is the policy's turn: learnt


def test_kto_and_sft_exports_of_trajectories_load_in_align(tmp_path):
    from alignment.config import DataConfig, FeedbackDataConfig
    from alignment.data import check_sft_rows
    from alignment.feedback_data import check_feedback_rows

    store = st.Store(f"sqlite:///{tmp_path / 'label.db'}")
    st.import_items(store, "rate", [record([{"messages": SOLVED}, {"messages": GUESSED}])], annotations_per_item=1,
                    feedback="rating")
    ann = annotator(store)
    task = st.claim_next(store, ann, "rate")
    ids = ids_by_answer(task)
    st.submit_correction(store, ann, task.assignment_id, "<answer>29,842</answer>", corrects=ids["<answer>29842</answer>"])
    st.submit_ratings(store, ann, task.assignment_id, {ids["<answer>29842</answer>"]: 5, ids["<answer>30000</answer>"]: 1})
    kto = tmp_path / "kto.jsonl"
    assert export_project(store, "rate", kto, kind="kto") == 2
    check = check_feedback_rows(kto, FeedbackDataConfig(train=str(kto)))
    assert (check.rows, check.conversational) == (2, 2)
    sft = tmp_path / "sft.parquet"
    assert export_project(store, "rate", sft, kind="sft") == 1
    (row,) = pq.read_table(sft).to_pylist()
    assert row["messages"][-1] == {"role": "assistant", "content": "<answer>29,842</answer>"}
    assert row["messages"][1:3] == SOLVED[:2]
    assert check_sft_rows(sft, DataConfig(train=str(sft))).conversational == 1


def test_arena_battles_carry_trajectories(tmp_path):
    store = st.Store(f"sqlite:///{tmp_path / 'label.db'}")
    st.import_items(store, "duel", [record([{"messages": SOLVED, "model": "tools"}, {"text": "30000", "model": "base"}])])
    arena.create_battles(store, "duel")
    view = arena.next_battle(store, annotator(store), "duel")
    shown = {view.a: view.a_messages, view.b: view.b_messages}
    assert shown == {"<answer>29842</answer>": SOLVED, "30000": None}
