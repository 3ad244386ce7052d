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

A trajectory candidate (a list of messages, labeling_ui.store.trajectories) is shown as a conversation:
each turn under its role; in an assistant turn every ``<tool_call>...</tool_call>`` as a call (the tool's
name, then the call's JSON exactly as written, highlighted), the rest in the project's mode; a tool
message as tool output, exactly as written in any mode (it is data, not prose).
"""

from __future__ import annotations

import contextlib
import html
import json
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
.trajectory { display: flex; flex-direction: column; gap: 0.5em; }
.trajectory .turn { border-left: 3px solid var(--border-color-primary); padding: 0.2em 0 0.2em 0.7em; }
.trajectory .turn-assistant { border-left-color: var(--color-accent); }
.trajectory .turn-tool { border-left-color: var(--neutral-400, #999); }
.trajectory .turn-role { font-size: 0.85em; font-weight: bold; opacity: 0.75; }
.trajectory .turn-empty { font-style: italic; opacity: 0.6; }
.trajectory .tool-call { margin: 0.4em 0; border: 1px solid var(--color-accent); border-radius: 6px; overflow: hidden; }
.trajectory .tool-call-head { padding: 0.2em 0.8em; font-size: 0.85em; background: var(--color-accent-soft); }
.trajectory .tool-call pre.code { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; padding: 0.5em 0.8em;
  border-radius: 0; background: var(--background-fill-secondary); }
.trajectory .tool-call pre.code code { font-family: var(--font-mono, monospace); font-size: 0.92em; }
.trajectory pre.tool-output { white-space: pre-wrap; margin: 0.2em 0; padding: 0.5em 0.8em; border-radius: 6px;
  background: var(--background-fill-secondary); font-family: var(--font-mono, monospace); font-size: 0.92em;
  overflow-wrap: anywhere; tab-size: 4; }
"""

# A Hermes/Qwen-style tool call inside an assistant message, as multi-turn rollouts parse it.
TOOL_CALL = re.compile(r"<tool_call>(?P<call>.*?)</tool_call>", re.DOTALL)
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool output"}


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


def tool_call_html(call: str) -> str:
    """One ``<tool_call>`` as a call: a head naming the tool (or saying the JSON is broken), then the call's
    JSON exactly as written (one line break inside each tag dropped), highlighted."""
    body = call.removeprefix("\n").removesuffix("\n")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("name"), str):
        head = f"Tool call: <code>{html.escape(parsed['name'])}</code>"
    else:
        head = "Tool call <i>(not valid JSON)</i>" if parsed is None else "Tool call <i>(no tool name)</i>"
    return f'<div class="tool-call"><div class="tool-call-head">{head}</div>{highlight_code(body, "json")}</div>'


def assistant_html(content: str, mode: str) -> str:
    """An assistant message: its text in the project's mode, each well-formed tool call as a call block (as
    with fences, the line break before and after a call is the block's own)."""
    parts, position = [], 0
    for match in TOOL_CALL.finditer(content):
        before = content[position : match.start()].removesuffix("\n")
        parts.append(to_html(before, mode) if before else "")
        parts.append(tool_call_html(match["call"]))
        position = match.end()
        if content.startswith("\n", position):
            position += 1
    rest = content[position:]
    parts.append(to_html(rest, mode) if rest or not parts else "")
    return "".join(parts)


def turn_html(message: dict[str, str], mode: str) -> str:
    """One message of a trajectory under its role: assistant text with tool calls, tool output as written,
    system and user text in the project's mode."""
    role, content = message["role"], message["content"]
    if not content:
        body = '<div class="turn-empty">(empty message)</div>'
    elif role == "assistant":
        body = assistant_html(content, mode)
    elif role == "tool":
        body = f'<pre class="tool-output">{html.escape(content)}</pre>'
    else:
        body = to_html(content, mode)
    label = html.escape(ROLE_LABELS.get(role, role))
    return f'<div class="turn turn-{html.escape(role, quote=True)}"><div class="turn-role">{label}</div>{body}</div>'


def trajectory_html(messages: list[dict[str, str]], mode: str = "text") -> str:
    """A trajectory as a conversation, turn by turn (every character escaped, as in :func:`to_html`)."""
    if mode not in RENDER_MODES:
        raise ValueError(f"render must be one of {', '.join(RENDER_MODES)}, not {mode!r}")
    return f'<div class="trajectory">{"".join(turn_html(message, mode) for message in messages)}</div>'


def answer_html(answer: str | list[dict[str, str]], mode: str = "text") -> str:
    """A candidate: text in the project's mode, or a trajectory (its messages) as a conversation."""
    return trajectory_html(answer, mode) if isinstance(answer, list) else to_html(answer, mode)
