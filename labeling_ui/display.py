"""How prompts and model answers are shown: exactly as written, and never as live HTML.

A project's ``render`` mode picks one of two ways, both producing HTML in which every character of
the text is escaped, so model output can never add an element, a script or an image to the page:

- ``text`` (the default): the text as written, every space, tab and line break kept
  (``white-space: pre-wrap``); fenced code blocks (```` ```lang ```` ... ```` ``` ````) are shown as code,
  highlighted by Pygments when it knows the language. Nothing else is interpreted: ``**x**`` stays
  ``**x**`` and ``<b>`` stays ``<b>``.
- ``markdown``: CommonMark (markdown-it) with raw HTML off, so tags show as text; images are not
  rendered (an image would load from any address in every annotator's browser), links to
  ``javascript:`` and the like are refused, single line breaks are kept, code blocks highlighted.
"""

from __future__ import annotations

import contextlib
import html
import re
from functools import lru_cache

from labeling_ui.store.schema import RENDER_MODES

# An opening fence at the start of a line (up to 3 spaces in, as in CommonMark), an optional info
# string, the code, then a closing fence of the same characters, at least as long (or the end of the text).
FENCE = re.compile(
    r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<code>.*?)(?:^ {0,3}(?P=fence)[`~]*[ \t]*(?:\n|\Z)|\Z)",
    re.MULTILINE | re.DOTALL,
)

CSS = """
.model-text { font-size: 1.02em; line-height: 1.5; overflow-wrap: anywhere; }
.model-text .plain { white-space: pre-wrap; margin: 0; font-family: inherit; }
.model-text pre.code { white-space: pre; overflow-x: auto; margin: 0.4em 0; padding: 0.6em 0.8em;
  border-radius: 6px; background: var(--background-fill-secondary); tab-size: 4; }
.model-text pre.code code { font-family: var(--font-mono, monospace); font-size: 0.95em; }
.model-text.markdown pre.code { white-space: pre; }
"""


def highlight_code(code: str, language: str = "") -> str:
    """A ``<pre class="code">`` block of escaped code; highlighted with inline styles when Pygments knows the language."""
    language = (language.split() or [""])[0].lower()
    body = html.escape(code)
    if language:
        try:
            from pygments import highlight
            from pygments.formatters import HtmlFormatter
            from pygments.lexers import get_lexer_by_name
            from pygments.util import ClassNotFound

            with contextlib.suppress(ClassNotFound):  # a language Pygments does not know: plain code
                lexer = get_lexer_by_name(language, stripnl=False)
                body = highlight(code, lexer, HtmlFormatter(nowrap=True, noclasses=True))
        except ImportError:  # Pygments comes with rich; without it, code is shown plain
            pass
    attribute = f' class="language-{html.escape(language, quote=True)}"' if language else ""
    return f'<pre class="code"><code{attribute}>{body}</code></pre>'


def _plain(text: str) -> str:
    return f'<div class="plain">{html.escape(text)}</div>' if text else ""


def text_html(text: str) -> str:
    """The text as written (escaped, whitespace kept), fenced code blocks as code."""
    parts, position = [], 0
    for match in FENCE.finditer(text):
        before = text[position : match.start()]
        parts.append(_plain(before[:-1] if before.endswith("\n") else before))
        parts.append(highlight_code(match["code"].removesuffix("\n"), match["info"]))
        position = match.end()
    parts.append(_plain(text[position:]))
    return f'<div class="model-text">{"".join(parts)}</div>'


@lru_cache(maxsize=1)
def _markdown():
    from markdown_it import MarkdownIt

    parser = MarkdownIt(
        "commonmark",
        {"html": False, "breaks": True, "linkify": False, "typographer": False,
         "highlight": lambda code, language, _attrs: highlight_code(code.removesuffix("\n"), language)},
    )
    parser.disable("image")
    return parser


def markdown_html(text: str) -> str:
    """CommonMark with raw HTML shown as text and no images."""
    return f'<div class="model-text markdown">{_markdown().render(text)}</div>'


def to_html(text: str, mode: str = "text") -> str:
    """Safe HTML for a prompt or an answer in the project's ``render`` mode."""
    if mode not in RENDER_MODES:
        raise ValueError(f"render must be one of {', '.join(RENDER_MODES)}, not {mode!r}")
    return markdown_html(text) if mode == "markdown" else text_html(text)
