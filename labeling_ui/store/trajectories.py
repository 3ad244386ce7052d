"""Trajectory candidates: an answer that is a conversation (TRL's conversational format), such as a
multi-turn, tool-using episode::

    [{"role": "assistant", "content": "<tool_call>{\\"name\\": \\"calculator\\", ...}</tool_call>"},
     {"role": "tool", "content": "29842"},
     {"role": "assistant", "content": "<answer>29842</answer>"}]

the messages after the prompt. Tool calls are Hermes/Qwen style, ``<tool_call>`` JSON ``</tool_call>``
inside an assistant message; tool results are ``tool`` messages. A message is exactly a role and its
text, so what is stored, shown and exported is the same. An annotator's Edit changes the final
assistant message (:func:`with_final_answer`); the candidate's ``text`` column holds that message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator


class Message(BaseModel):
    """One turn: ``role`` (system, user, assistant or tool) and its text, nothing else."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr

    @model_validator(mode="before")
    @classmethod
    def _only_role_and_content(cls, value: Any) -> Any:
        extra = sorted(set(value) - {"role", "content"}) if isinstance(value, dict) else []
        if extra:
            raise ValueError(f"a message is {{\"role\", \"content\"}}, not {extra} (tool calls go in the assistant's "
                             "content as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>)")
        return value


class TrajectoryCandidate(BaseModel):
    """An import file's ``{"messages": [...], "model": ...}`` candidate."""

    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(min_length=1)
    model: StrictStr = ""

    @field_validator("messages")
    @classmethod
    def _has_an_answer(cls, value: list[Message]) -> list[Message]:
        if not any(message.role == "assistant" for message in value):
            raise ValueError("a trajectory needs at least one assistant message")
        return value

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": message.role, "content": message.content} for message in self.messages]


def final_index(messages: list[dict[str, Any]]) -> int:
    """The position of the last assistant message."""
    return max(i for i, message in enumerate(messages) if message["role"] == "assistant")


def final_answer(messages: list[dict[str, Any]]) -> str:
    """The final assistant message's text: what an Edit of the trajectory changes."""
    return messages[final_index(messages)]["content"]


def with_final_answer(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The same trajectory with its final assistant message replaced by ``text`` (a correction)."""
    last = final_index(messages)
    return [{**message, "content": text} if i == last else dict(message) for i, message in enumerate(messages)]
