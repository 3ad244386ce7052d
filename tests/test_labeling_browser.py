"""End to end in headless Chromium: an annotator ranks by keyboard, an admin exports, TRL trains on the file;
an annotator votes in the arena and sees the models' names, an admin reads the leaderboard.

Needs the Debian ``chromium`` package at /usr/bin/chromium (never ``playwright install``). Writes
screenshots of the views to docs/.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path

import pytest

from labeling_ui import arena
from labeling_ui import store as st
from labeling_ui.load import ServerProcess
from tests.browser_helpers import chromium_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "password123"


@pytest.fixture(scope="module")
def browser():
    yield from chromium_browser()


def log_in(page, url: str, name: str) -> None:
    page.goto(url)
    page.wait_for_selector("input[type=password]", timeout=60_000)
    page.fill("input[type=text]", name)
    page.fill("input[type=password]", PASSWORD)
    page.keyboard.press("Enter")


def download_export(page, path: Path) -> Path:
    """Press the admin tab's Export button and save the file it offers to ``path``."""
    page.click("#export-btn")
    link = page.wait_for_selector("#export-file a", timeout=30_000)
    with page.expect_download() as download_info:
        link.click()
    download_info.value.save_as(path)
    return path


def rank_rest_by_store(store: st.Store, name: str) -> None:
    """Fill in the other items quickly (longest answer first; bea disagrees on the code item) for the admin view."""
    user = st.get_user(store, name)
    while (task := st.claim_next(store, user, "demo")) is not None:
        ordered = sorted(
            task.candidates,
            key=lambda c: len(c["text"]),
            reverse=not (name == "bea" and "Python" in task.prompt),
        )
        st.submit_ranking(store, user, task.assignment_id, {c["id"]: i + 1 for i, c in enumerate(ordered)})


def test_rank_in_browser_export_and_train_dpo(browser, tmp_path, monkeypatch):
    db_url = f"sqlite:///{tmp_path / 'label.db'}"
    store = st.Store(db_url)
    st.add_user(store, "boss", PASSWORD, "admin")
    st.add_user(store, "ann", PASSWORD)
    st.add_user(store, "bea", PASSWORD)
    st.import_items(
        store,
        "demo",
        st.read_jsonl(ROOT / "configs" / "labeling_example.jsonl"),
        annotations_per_item=2,
        guidelines=(ROOT / "configs" / "labeling_example_guidelines.md").read_text(),
    )
    docs = ROOT / "docs"
    with ServerProcess(db_url, log_path=tmp_path / "server.log") as server:
        page = browser.new_page(viewport={"width": 1200, "height": 1100})
        log_in(page, server.url, "ann")
        page.wait_for_selector("#cand-0", state="visible", timeout=60_000)
        shown = [page.inner_text(f"#cand-{i} .cand-body") for i in range(8) if page.is_visible(f"#cand-{i}")]
        # keyboard: 'a' picks the first candidate, each digit ranks the picked one and moves on; a tie at rank 2
        typed = [1, 2, 2] + list(range(3, len(shown)))
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("a")
        for rank in typed:
            page.keyboard.press(str(rank))
        for i, rank in enumerate(typed):
            assert page.is_checked(f"#rank-{i} input[value='{rank}']")
        page.screenshot(path=str(docs / "labeling_annotator.png"), full_page=True)
        page.keyboard.press("Enter")
        page.wait_for_selector("#status :text('Saved')", timeout=30_000)
        items = st.ranked_items(store, "demo", "ann")
        assert len(items) == 1

        stored = {items[0].candidates[c]: rank for c, rank in items[0].rankings["ann"].items()}
        assert stored == dict(zip(shown, typed, strict=True))  # the page shows each text exactly as stored
        assert "1 ranked" in page.inner_text("#my-progress")

        rank_rest_by_store(store, "ann")
        rank_rest_by_store(store, "bea")

        page.goto(f"{server.url}/logout")
        log_in(page, server.url, "boss")
        page.get_by_role("tab", name="Admin").click()
        page.wait_for_selector("#admin-summary :text('annotations')", timeout=60_000)
        exported = download_export(page, tmp_path / "pairs.jsonl")
        page.screenshot(path=str(docs / "labeling_admin.png"), full_page=True)
        page.close()
    assert "export" in {entry["action"] for entry in st.audit_log(store) if entry["user"] == "boss"}
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(rows) >= 10 and all(set(row) == {"prompt", "chosen", "rejected"} for row in rows)
    train_dpo_one_step(exported, tmp_path, monkeypatch)


def train_dpo_one_step(pairs: Path, tmp_path: Path, monkeypatch) -> None:
    """The exported file, loaded as is, trains a tiny random Llama for one DPOTrainer step."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from datasets import load_dataset
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    dataset = load_dataset("json", data_files=str(pairs), split="train")
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(
        (row[key] for row in dataset for key in ("prompt", "chosen", "rejected")),
        trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"]),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-2,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        max_length=128,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    reference = copy.deepcopy(model)  # a model built in memory has no path TRL could reload a reference from
    trainer = DPOTrainer(
        model=model, ref_model=reference, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    result = trainer.train()
    assert result.global_step == 1
    loss = trainer.state.log_history[0]["loss"]
    assert abs(loss - 0.6931) < 0.01  # policy == reference at step 0: DPO loss is ln 2
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    shutil.rmtree(tmp_path / "dpo", ignore_errors=True)


ARENA_ANSWERS = {  # model -> how it reviews; the texts carry no model names
    "base": "It was a movie. Things happened and then it ended.",
    "sft": "A solid film with a clear story and a few slow scenes.",
    "dpo": "A warm, funny film: sharp dialogue, a moving finale and a cast that clearly enjoyed it.",
}
ARENA_QUALITY = {"base": 0, "sft": 1, "dpo": 2}


def test_vote_in_the_arena_and_read_the_leaderboard(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'label.db'}"
    store = st.Store(db_url)
    st.add_user(store, "boss", PASSWORD, "admin")
    for name in ("ann", "bea", "cid", "dan"):
        st.add_user(store, name, PASSWORD)
    items = [
        {
            "id": f"film-{i}",
            "prompt": f"Write a short review of the film {title}.",
            "candidates": [
                {"text": f"{title}: {text}", "model": model} for model, text in ARENA_ANSWERS.items()
            ],
        }
        for i, title in enumerate(["Night Train", "Paper Moon Harbor", "The Last Orchard"])
    ]
    st.import_items(store, "reviews", items, guidelines="Pick the more helpful review.")
    arena.create_battles(store, "reviews")
    model_of_text = {c["text"]: c["model"] for item in items for c in item["candidates"]}
    for name in ("bea", "cid", "dan"):  # other annotators prefer the better model, except for a few upsets
        user = st.get_user(store, name)
        for count, view in enumerate(iter(lambda u=user: arena.next_battle(store, u, "reviews"), None)):
            better = ARENA_QUALITY[model_of_text[view.a]] > ARENA_QUALITY[model_of_text[view.b]]
            arena.cast_vote(store, user, view.battle_id, "tie" if count % 4 == 3 else "a" if better else "b")

    def words(text: str) -> str:
        return " ".join(text.split())

    with ServerProcess(db_url, log_path=tmp_path / "server.log") as server:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        log_in(page, server.url, "ann")
        page.get_by_role("tab", name="Arena").click()
        page.wait_for_selector("#arena-reveal :text('Which answer is better')", timeout=60_000)
        shown = {side: words(page.inner_text(f"#arena-{side}")).split(" ", 1)[1] for side in ("a", "b")}
        assert set(shown.values()) <= set(map(words, model_of_text))
        arena_text = (
            page.inner_text("#arena-a") + page.inner_text("#arena-b") + page.inner_text("#arena-reveal")
        )
        assert not any(model in arena_text for model in ARENA_ANSWERS)  # no names before the vote
        page.click("#vote-b")
        page.wait_for_selector("#arena-reveal :text('You voted')", timeout=30_000)
        truth = {words(text): model for text, model in model_of_text.items()}
        reveal = page.inner_text("#arena-reveal")
        assert f"A was {truth[shown['a']]}, B was {truth[shown['b']]}" in words(reveal)
        assert page.inner_text("#arena-a").startswith(f"A: {truth[shown['a']]}")
        assert "1 of 9 battles" in page.inner_text("#arena-progress")
        vote = arena.arena_votes(store, "reviews")[-1]  # the latest vote is ann's
        assert vote[:3] == (truth[shown["a"]], truth[shown["b"]], "b")
        page.screenshot(path=str(ROOT / "docs" / "labeling_arena.png"), full_page=True)

        page.goto(f"{server.url}/logout")
        log_in(page, server.url, "boss")
        page.get_by_role("tab", name="Admin").click()
        page.wait_for_selector("#leaderboard :text('Bradley-Terry')", timeout=60_000)
        board = page.inner_text("#leaderboard")
        assert board.index("dpo") < board.index("sft") < board.index("base")
        page.screenshot(path=str(ROOT / "docs" / "labeling_leaderboard.png"), full_page=True)
        page.close()


MODEL_TEXTS = {  # what models may write, to be shown exactly so
    "script": "<script>alert(1)</script>script",
    "img": "<img src=x onerror=\"document.title='pwned'\">",
    "indented": "def f(x):\n    if x:\n        return [x,\n                x]\n    return None",
    "fenced": "Like this:\n\n```python\ndef g(y):\n    return y * 2\n```\nThat doubles it.",
}
INJECTED = """() => ({
  images: [...document.querySelectorAll('img')].filter(i => i.getAttribute('src') === 'x').length,
  scripts: [...document.scripts].filter(s => s.textContent.includes('alert(1)')).length,
  inCards: document.querySelectorAll('.cand-body img, .cand-body script, #prompt img, #prompt b').length,
  title: document.title,
})"""


def test_model_markup_shows_as_text_and_code_keeps_its_indentation(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'label.db'}"
    store = st.Store(db_url)
    st.add_user(store, "ann", PASSWORD)
    st.import_items(store, "code", [{"id": "x", "prompt": "Answer in <b>code</b>:\n    keep this indent",
                                     "candidates": list(MODEL_TEXTS.values())}], annotations_per_item=1)
    with ServerProcess(db_url, log_path=tmp_path / "server.log") as server:
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

        def shown() -> dict[str, str]:
            page.wait_for_selector("#cand-3", state="visible", timeout=60_000)
            texts = [page.inner_text(f"#cand-{i} .cand-body") for i in range(4)]
            return {name: next(t for t in texts if marker in t) for name, marker in
                    (("script", "alert(1)"), ("img", "onerror"), ("indented", "def f"), ("fenced", "Like this"))}

        log_in(page, server.url, "ann")
        text_mode = shown()
        assert text_mode["script"] == MODEL_TEXTS["script"]
        assert text_mode["img"] == MODEL_TEXTS["img"]
        assert text_mode["indented"] == MODEL_TEXTS["indented"]  # every indent kept
        assert "def g(y):\n    return y * 2" in text_mode["fenced"]
        assert "```" not in text_mode["fenced"] and page.locator(".cand-body pre code.language-python").count() == 1
        assert "Answer in <b>code</b>:\n    keep this indent" in page.inner_text("#prompt")
        assert page.evaluate(INJECTED) == {"images": 0, "scripts": 0, "inCards": 0, "title": "align labeling"}
        page.screenshot(path=str(ROOT / "docs" / "labeling_display.png"), full_page=True)

        st.import_items(store, "code", [], render="markdown")  # the project switches to Markdown
        page.reload()
        markdown_mode = shown()  # the open task comes back, now rendered as Markdown
        assert markdown_mode["script"] == MODEL_TEXTS["script"]  # raw HTML shows as text
        assert markdown_mode["img"] == MODEL_TEXTS["img"]
        assert "def g(y):\n    return y * 2" in markdown_mode["fenced"]
        assert page.evaluate(INJECTED) == {"images": 0, "scripts": 0, "inCards": 0, "title": "align labeling"}
        page.close()
    assert dialogs == []


def test_rate_in_browser_and_export_kto(browser, tmp_path):
    """A 1-5 rating project: an annotator rates each answer in the page, the rating is stored as chosen, and the
    admin's KTO export (rating >= 4 desirable) labels the answers from it; then a thumbs project."""
    db_url = f"sqlite:///{tmp_path / 'label.db'}"
    store = st.Store(db_url)
    st.add_user(store, "boss", PASSWORD, "admin")
    st.add_user(store, "ann", PASSWORD)
    st.import_items(store, "rate", [{"id": "r", "prompt": "Name a prime.", "candidates": ["7", "9", "I like cake"]}],
                    annotations_per_item=1, feedback="rating", rating_threshold=4)
    wanted = {"7": 5, "9": 2, "I like cake": 1}
    with ServerProcess(db_url, log_path=tmp_path / "server.log") as server:
        page = browser.new_page(viewport={"width": 1200, "height": 1100})
        log_in(page, server.url, "ann")
        page.wait_for_selector("#cand-2", state="visible", timeout=60_000)
        assert not page.is_visible("#cand-3")
        assert "Rating of A (1 = worst, 5 = best)" in page.inner_text("#rank-0")
        assert page.inner_text("#submit-btn") == "Submit ratings"
        shown = [page.inner_text(f"#cand-{i} .cand-body") for i in range(3)]
        for i, text in enumerate(shown):
            page.check(f"#rank-{i} input[value='{wanted[text]}']")
        page.screenshot(path=str(ROOT / "docs" / "labeling_rating.png"), full_page=True)
        page.click("#submit-btn")
        page.wait_for_selector("#status :text('Saved')", timeout=30_000)
        assert "1 rated" in page.inner_text("#my-progress") or "1 ranked" in page.inner_text("#my-progress")
        (item,) = st.rated_items(store, "rate")
        assert {item.candidates[c]: rating for c, rating in item.ratings["ann"].items()} == wanted

        # a thumbs project, first by name: the page opens it
        st.import_items(store, "a-thumbs", [{"id": "t", "prompt": "Is 2 prime?", "candidates": ["Yes."]}],
                        annotations_per_item=1, feedback="rating", rating_scale=2)
        page.reload()
        page.wait_for_selector("#rank-0 :text('thumbs up or down')", timeout=30_000)
        page.locator("#rank-0").get_by_text("👍 up").click()
        page.click("#submit-btn")
        page.wait_for_selector("#status :text('Saved')", timeout=30_000)
        (thumbs,) = st.rated_items(store, "a-thumbs")
        assert list(thumbs.ratings["ann"].values()) == [1]

        page.goto(f"{server.url}/logout")
        log_in(page, server.url, "boss")
        page.get_by_role("tab", name="Admin").click()
        page.wait_for_selector("#admin-summary :text('annotations')", timeout=60_000)
        page.locator("#admin-project input").click()
        page.get_by_role("option", name="rate", exact=True).click()
        page.wait_for_selector("#admin-summary :text('Ratings (1-5)')", timeout=30_000)
        page.locator("#export-kind").get_by_text("kto", exact=True).click()
        exported = download_export(page, tmp_path / "kto.jsonl")

        for _ in range(store.security.lock_after):  # ann mistypes her password until the account locks
            with contextlib.suppress(st.LoginLocked):
                st.authenticate(store, "ann", "wrong-password")
        assert [row["key"] for row in st.login_throttles(store) if row["locked_until"]] == ["ann"]
        page.locator("#locks-open").get_by_text("Login locks").click()
        page.click("#locks-btn")
        page.wait_for_selector("#locks :text('ann') >> visible=true", timeout=30_000)
        page.fill("#unlock-name textarea", "ann")
        page.click("#unlock-btn")
        page.wait_for_selector("#unlock-status :text('Unlocked account ann')", timeout=30_000)
        assert st.login_throttles(store) == []
        page.close()
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert sorted(rows, key=lambda row: row["completion"]) == [
        {"prompt": "Name a prime.", "completion": "7", "label": True},
        {"prompt": "Name a prime.", "completion": "9", "label": False},
        {"prompt": "Name a prime.", "completion": "I like cake", "label": False},
    ]


CODE = "def total(xs):\n    result = 0\n\n    for x in xs:\n        result += x\n    return result"
FIXED = "def total(xs):\n    result = 0\n\n    for x in xs:\n        if x is not None:\n            result += x\n\n    return result\n"


def code_project(tmp_path: Path) -> tuple[str, st.Store]:
    """A one-item project "code" (the code answer and another) and the annotator ann."""
    db_url = f"sqlite:///{tmp_path / 'label.db'}"
    store = st.Store(db_url)
    st.add_user(store, "ann", PASSWORD)
    st.import_items(store, "code", [{"id": "sum", "prompt": "Sum a list in Python.",
                                     "candidates": [CODE, "Use a loop."]}], annotations_per_item=1)
    return db_url, store


def open_code_edit_box(page, url: str):  # noqa: ANN201
    """Log ann in and open the code answer's Edit box; its slot and its textarea."""
    log_in(page, url, "ann")
    page.wait_for_selector("#cand-1", state="visible", timeout=60_000)
    code = next(i for i in range(2) if "def total" in page.inner_text(f"#cand-{i} .cand-body"))
    page.locator(f"#edit-open-{code}").get_by_text("Edit this answer").click()
    editor = page.locator(f"#edit-{code} textarea")
    editor.wait_for(state="visible", timeout=30_000)
    return code, editor


def test_correct_a_code_answer_in_browser_keeps_its_indentation(browser, tmp_path):
    """An annotator rewrites a code answer (4-space indents, blank lines) while ranking; the correction is stored
    exactly as typed, comes out over the original in the pairs and as an SFT row, and the admins count it."""
    from labeling_ui.export import project_rows

    db_url, store = code_project(tmp_path)
    with ServerProcess(db_url, log_path=tmp_path / "server.log") as server:
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        code, editor = open_code_edit_box(page, server.url)
        assert editor.input_value() == CODE  # the answer to edit, exactly as stored
        editor.fill(FIXED)
        page.check(f"#rank-{code} input[value='2']")
        page.check(f"#rank-{1 - code} input[value='1']")
        page.screenshot(path=str(ROOT / "docs" / "labeling_correction.png"), full_page=True)
        page.click("#submit-btn")
        page.wait_for_selector("#status :text('Saved')", timeout=30_000)
        page.close()
    (correction,) = st.corrections(store, "code")
    assert (correction.annotator, correction.text, correction.original) == ("ann", FIXED, CODE)
    assert {"prompt": "Sum a list in Python.", "chosen": FIXED, "rejected": CODE} in project_rows(store, "code", "pairs")
    assert project_rows(store, "code", "sft") == [{"prompt": "Sum a list in Python.", "completion": FIXED}]
    assert st.project_progress(store, "code")["annotators"]["ann"]["corrections"] == 1
    (item,) = st.ranked_items(store, "code")
    assert {item.candidates[c]: rank for c, rank in item.rankings["ann"].items()} == {CODE: 2, "Use a loop.": 1}


def test_a_task_shown_again_shows_the_earlier_correction_in_the_edit_box(browser, tmp_path):
    """An annotator saved a correction and an answer of their own on a task still open (then reloaded the page):
    the Edit box and the own-answer box show what they wrote, not the model's answer or a blank."""
    db_url, store = code_project(tmp_path)
    ann = st.get_user(store, "ann")
    task = st.claim_next(store, ann, "code")
    original = next(c["id"] for c in task.candidates if c["text"] == CODE)
    st.submit_correction(store, ann, task.assignment_id, FIXED, corrects=original)
    st.submit_correction(store, ann, task.assignment_id, "print(sum(xs))")
    with ServerProcess(db_url, log_path=tmp_path / "server.log") as server:
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        code, editor = open_code_edit_box(page, server.url)
        assert editor.input_value() == FIXED
        assert "saved earlier" in page.inner_text(f"#edit-{code}")
        page.locator("#new-answer-open").get_by_text("Write your own answer").click()
        own = page.locator("#new-answer textarea")
        own.wait_for(state="visible", timeout=30_000)
        assert own.input_value() == "print(sum(xs))"
        page.close()


def tool_trajectory(expression: str, result: str, answer: str) -> list[dict[str, str]]:
    """A calculator episode; the tool's output carries markup that must stay text."""
    call = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
    return [
        {"role": "assistant", "content": f"I will use the calculator.\n<tool_call>{call}</tool_call>"},
        {"role": "tool", "content": f"{result}\n<script>alert(1)</script><img src=x onerror=\"document.title='pwned'\">"},
        {"role": "assistant", "content": f"<answer>{answer}</answer>"},
    ]


RIGHT = tool_trajectory("347 * 86", "29842", "29842")
WRONG = tool_trajectory("347 * 68", "23596", "23596")


def test_rank_two_tool_using_trajectories_in_browser(browser, tmp_path):
    """An annotator ranks two multi-turn, tool-using candidates: each shows as a conversation with its tool call
    (name and arguments) and the tool's output as text; the Edit box holds the final answer, and the ranking and
    the correction export as TRL conversational pairs that align's DPO loader accepts."""
    from alignment.config import PreferenceDataConfig
    from alignment.preference_data import check_preference_rows
    from labeling_ui.export import export_project

    db_url = f"sqlite:///{tmp_path / 'label.db'}"
    store = st.Store(db_url)
    st.add_user(store, "ann", PASSWORD)
    st.import_items(store, "tools", [{"id": "mul", "prompt": "What is 347 * 86? Use the calculator.",
                                      "candidates": [{"messages": RIGHT, "model": "tools-v2"},
                                                     {"messages": WRONG, "model": "tools-v1"}]}],
                    annotations_per_item=1, guidelines="Rank the episodes: right answer, sensible tool use.")
    with ServerProcess(db_url, log_path=tmp_path / "server.log") as server:
        page = browser.new_page(viewport={"width": 1200, "height": 1300})
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        log_in(page, server.url, "ann")
        page.wait_for_selector("#cand-1 .tool-call", state="visible", timeout=60_000)
        right = next(i for i in range(2) if "347 * 86" in page.inner_text(f"#cand-{i} .cand-body"))
        for i, trajectory in ((right, RIGHT), (1 - right, WRONG)):
            card = page.locator(f"#cand-{i} .cand-body")
            assert card.locator(".tool-call").count() == 1 and card.locator(".tool-call").is_visible()
            assert card.locator(".tool-call-head").inner_text() == "Tool call: calculator"
            call = json.loads(card.locator(".tool-call pre").inner_text())  # the arguments, as the model wrote them
            assert call == json.loads(trajectory[0]["content"].split("<tool_call>")[1].removesuffix("</tool_call>"))
            assert [role.lower() for role in card.locator(".turn-role").all_inner_texts()] == [
                "assistant", "tool output", "assistant"]
            assert card.locator("pre.tool-output").inner_text() == trajectory[1]["content"]
            assert "<answer>" in card.locator(".turn").last.inner_text()
        assert page.evaluate(INJECTED) == {"images": 0, "scripts": 0, "inCards": 0, "title": "align labeling"}
        page.check(f"#rank-{right} input[value='1']")
        page.check(f"#rank-{1 - right} input[value='2']")
        page.screenshot(path=str(ROOT / "docs" / "labeling_trajectory.png"), full_page=True)
        page.locator(f"#edit-open-{1 - right}").get_by_text("Edit this answer").click()
        editor = page.locator(f"#edit-{1 - right} textarea")
        editor.wait_for(state="visible", timeout=30_000)
        assert editor.input_value() == "<answer>23596</answer>"  # the final assistant message, nothing before it
        assert "last assistant message" in page.inner_text(f"#edit-{1 - right}")
        editor.fill("347 * 68 is not what was asked. <answer>29842</answer>")
        page.click("#submit-btn")
        page.wait_for_selector("#status :text('Saved')", timeout=30_000)
        page.close()
    assert dialogs == []
    (item,) = st.ranked_items(store, "tools")
    assert {json.dumps(item.answer(c)): rank for c, rank in item.rankings["ann"].items()} == {
        json.dumps(RIGHT): 1, json.dumps(WRONG): 2}
    (correction,) = st.corrections(store, "tools")
    assert correction.messages == [*WRONG[:2], {"role": "assistant", "content": "347 * 68 is not what was asked. "
                                                                         "<answer>29842</answer>"}]
    pairs = tmp_path / "pairs.jsonl"
    assert export_project(store, "tools", pairs) == 2
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    prompt = [{"role": "user", "content": "What is 347 * 86? Use the calculator."}]
    assert {"prompt": prompt, "chosen": RIGHT, "rejected": WRONG} in rows
    assert check_preference_rows(pairs, PreferenceDataConfig(train=str(pairs))).conversational == 2
