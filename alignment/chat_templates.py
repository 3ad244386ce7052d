"""Chat templates: the ``chat_template`` setting of every job that renders chats, and the pre-flight check.

``chat_template`` is None (the tokenizer's own template), the name of a built-in below, or the path
of a Jinja file. The chosen template is set on the tokenizer, which every job saves with its
checkpoints and final model (``chat_template.jinja``), so later jobs and vLLM render chats the same way.

A job whose data holds chat messages (TRL's *conversational* format) needs a template; with none
anywhere, :func:`require_chat_template` stops the job in the driver, before any worker or engine starts.
Plain-text rows (TRL's *standard* format) need none: see :mod:`alignment.data`.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignment.errors import AlignError

# ChatML (OpenAI, Qwen, SmolLM): <|im_start|>role\ncontent<|im_end|>\n per turn. On a tokenizer that
# lacks these special tokens the markers are ordinary text, which still renders prefix-consistently.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML}


def resolve_chat_template(value: str | None) -> str | None:
    """The Jinja text of a ``chat_template`` setting: None stays None, a built-in name or a file's contents."""
    if value is None:
        return None
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    path = Path(value).expanduser()
    if not path.is_file():
        raise AlignError(f"chat_template={value!r} is neither a built-in ({', '.join(BUILTIN_TEMPLATES)}) "
                         "nor an existing Jinja file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise AlignError(f"chat_template file {path} is empty")
    return text


def has_chat_template(tokenizer_dir: str | Path) -> bool:
    """Whether the tokenizer saved in ``tokenizer_dir`` carries a chat template (read from its files, no import)."""
    directory = Path(tokenizer_dir).expanduser()
    if (directory / "chat_template.jinja").is_file():
        return True
    for name, key in (("chat_template.json", "chat_template"), ("tokenizer_config.json", "chat_template")):
        path = directory / name
        if path.is_file():
            try:
                if json.loads(path.read_text(encoding="utf-8")).get(key):
                    return True
            except (ValueError, AttributeError):
                continue
    return False


def require_chat_template(tokenizer_dir: str | Path, chat_template: str | None, source: str) -> None:
    """AlignError unless chats from ``source`` can be rendered: ``chat_template`` is set or the tokenizer has one."""
    if chat_template is not None:
        resolve_chat_template(chat_template)  # a bad name or path fails here too, before any work
        return
    if not has_chat_template(tokenizer_dir):
        raise AlignError(
            f"{source} holds chat messages, but the tokenizer of {tokenizer_dir} has no chat template to render "
            f"them: set chat_template (a Jinja file, or a built-in: {', '.join(BUILTIN_TEMPLATES)}), e.g. "
            "`chat_template=chatml`, or give the data as plain text (TRL's standard format, no template needed)"
        )
