"""How model text is shown (labeling_ui.display): as written, code as code, never live HTML; the per-project
render mode and the upgrade of databases from before it. The same texts in Chromium: test_labeling_browser.py."""

from __future__ import annotations

import html
import re
import sqlite3

import pytest

from alignment.errors import AlignError
from labeling_ui import store as st
from labeling_ui.__main__ import main
from labeling_ui.display import to_html

SCRIPT = "<script>alert(1)</script>script"
IMAGE = '<img src=x onerror="document.title=\'pwned\'">'
INDENTED = "def f(x):\n    if x:\n        return [x,\n                x]\n\treturn None"
FENCED = "Like this:\n\n```python\ndef g(y):\n    return y * 2\n```\nThat doubles it."
TEXTS = [SCRIPT, IMAGE, INDENTED, FENCED]


def visible_text(markup: str) -> str:
    """What a browser shows of our markup: tags dropped, entities decoded (our output has no raw '<' in text)."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def tags(markup: str) -> set[str]:
    return {name.lower() for name in re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", markup)}


@pytest.mark.parametrize("mode", ["text", "markdown"])
@pytest.mark.parametrize("text", [SCRIPT, IMAGE], ids=["script", "img"])
def test_markup_in_model_text_is_shown_as_text(text, mode):
    markup = to_html(text, mode)
    assert tags(markup) <= {"div", "p", "br"}
    assert text in visible_text(markup)


def test_text_mode_keeps_every_character_and_shows_fences_as_code():
    assert visible_text(to_html(INDENTED)) == INDENTED
    markup = to_html(FENCED)
    assert '<pre class="code"><code class="language-python">' in markup
    assert visible_text(markup).replace("\n", "") == FENCED.replace("```python", "").replace("```", "").replace("\n", "")
    code = re.search(r"<pre class=\"code\">(.*?)</pre>", markup, re.S).group(1)
    assert visible_text(code).rstrip("\n") == "def g(y):\n    return y * 2"
    assert "<span" in code  # highlighted
    assert visible_text(to_html("**not bold** _x_ # no heading")) == "**not bold** _x_ # no heading"
    unknown = to_html("```nolanguage\n  a < b\n```")
    assert visible_text(unknown).rstrip("\n") == "  a < b"
    unclosed = to_html("```\nx = 1\n  y")  # an unclosed fence runs to the end, as in CommonMark
    assert visible_text(unclosed).rstrip("\n") == "x = 1\n  y"


def test_markdown_mode_renders_markdown_but_no_html_images_or_script_links():
    markup = to_html("**bold**\nnext line\n\n![logo](http://example.invalid/x.png) [x](javascript:alert(1))", "markdown")
    assert "<strong>bold</strong><br />" in markup
    assert "<img" not in markup and 'href="javascript' not in markup
    fenced = to_html(FENCED, "markdown")
    assert visible_text(re.search(r"<pre.*?</pre>", fenced, re.S).group(0)).rstrip("\n") == "def g(y):\n    return y * 2"
    with pytest.raises(ValueError, match="render must be one of"):
        to_html("x", "html")


def test_render_is_a_project_setting_text_by_default(tmp_path, capsys):
    store = st.Store(f"sqlite:///{tmp_path / 'label.db'}")
    st.add_user(store, "ann", "password123")
    ann = st.get_user(store, "ann")
    st.import_items(store, "plain", [{"prompt": "Q", "candidates": TEXTS}])
    assert st.claim_next(store, ann, "plain").render == "text"
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"prompt": "Q", "candidates": ["a", "b"]}\n')
    assert main(["import", "md", str(jsonl), "--render", "markdown", "--db", store.url]) == 0
    assert st.claim_next(store, ann, "md").render == "markdown"
    st.import_items(store, "md", [])  # importing again without render keeps the choice
    with store.transaction(write=False) as session:
        assert st.get_project(session, "md").render == "markdown"
    with pytest.raises(AlignError, match="render must be one of text, markdown"):
        st.import_items(store, "md", [], render="html")


def test_a_database_from_before_render_and_login_throttling_gains_them(tmp_path):
    path = tmp_path / "old.sqlite"
    store = st.Store(f"sqlite:///{path}")
    st.import_items(store, "demo", [{"prompt": "Q", "candidates": ["a", "b"]}])
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE projects DROP COLUMN render")
        connection.execute("DROP TABLE login_throttle")
    store = st.Store(f"sqlite:///{path}")
    st.add_user(store, "ann", "password123")
    assert st.claim_next(store, st.get_user(store, "ann"), "demo").render == "text"
    assert st.authenticate(store, "ann", "wrong-password", "192.0.2.9") is None
    assert {row["scope"] for row in st.login_throttles(store)} == {"account", "address"}
