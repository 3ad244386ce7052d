"""Preference data: pairs (prompt/chosen/rejected) and K-way rankings, in TRL's standard formats.

A row is either a pair ``{"prompt", "chosen", "rejected"}`` or a ranking
``{"prompt", "responses": [...], "ranks": [...]}`` (rank 1 is best; each ranking expands into
its ordered pairs, ties give none). A row whose fields are all plain text is in TRL's *standard*
format: prompt and response are joined as text, no chat template
(:func:`alignment.data.tokenize_standard`). A row with any field a message list is *conversational*:
its text fields become one user turn (prompt) or assistant turn (response) and the chat template
renders it. Without a prompt column, conversational chosen/rejected share their prompt as the
common leading messages (TRL's implicit prompt). Malformed rows stop with the file and line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from alignment.data import (
    IGNORE_INDEX,
    RowCheck,
    TokenizedExample,
    as_messages,
    check_expanded_rows,
    is_messages,
    read_records,
    row_location,
    tokenize_sft,
    tokenize_standard,
)
from alignment.errors import AlignError

Messages = list[dict[str, Any]]
Part = Messages | str  # a message list (conversational row) or text (standard row)


@dataclass
class PreferencePair:
    chosen: TokenizedExample
    rejected: TokenizedExample
    margin: float = 0.0
    ref_chosen: float | None = None  # precomputed reference log-probs (DPO)
    ref_rejected: float | None = None


def _split_implicit_prompt(chosen: Messages, rejected: Messages) -> tuple[Messages, Messages, Messages]:
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise ValueError("row has no prompt column and chosen/rejected share no leading messages")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def is_conversational_row(row: dict[str, Any], config) -> bool:
    """Whether any prompt or response field of a preference row is a message list."""
    fields = (config.prompt_field, config.chosen_field, config.rejected_field)
    return any(is_messages(row.get(f)) for f in fields) or (
        isinstance(row.get(config.responses_field), list) and any(is_messages(r) for r in row[config.responses_field]))


def response_part(value: Any, role: str, field: str, conversational: bool) -> Part:
    """A prompt (``role`` user) or response (assistant) field: messages in a conversational row, else text."""
    if conversational:
        return as_messages(value, role, field)
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be text or a non-empty list of {{role, content}} messages")
    return value


def row_pairs(row: dict[str, Any], config) -> list[tuple[Part, Part, Part, float]]:
    """(prompt, chosen, rejected, margin) of one row: message lists for a conversational row, text for a
    standard one; raises ValueError when malformed."""
    if config.responses_field in row or config.ranks_field in row:
        return _ranking_pairs(row, config)
    missing = [f for f in (config.chosen_field, config.rejected_field) if f not in row]
    if missing:
        raise ValueError(f"row has neither {config.chosen_field!r}/{config.rejected_field!r} nor "
                         f"{config.responses_field!r}/{config.ranks_field!r} (missing {missing})")
    chat = is_conversational_row(row, config)
    chosen = response_part(row[config.chosen_field], "assistant", config.chosen_field, chat)
    rejected = response_part(row[config.rejected_field], "assistant", config.rejected_field, chat)
    if config.prompt_field in row:
        prompt = response_part(row[config.prompt_field], "user", config.prompt_field, chat)
    elif isinstance(row[config.chosen_field], list):
        prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected)
    else:
        raise ValueError(f"row has no {config.prompt_field!r} column")
    return [(prompt, chosen, rejected, _margin(row, config))]


def _margin(row: dict[str, Any], config) -> float:
    if not config.margin_field:
        return 0.0
    value = row.get(config.margin_field)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"field {config.margin_field!r} must be a number, got {value!r}")
    return float(value)


def ranking_pairs(ranks: Mapping[Any, float] | Sequence[float]) -> list[tuple[Any, Any]]:
    """Every ordered (better, worse) pair of a ranking (rank 1 is best; a mapping's keys or a list's
    indices); tied responses give no pair."""
    keys = list(ranks) if isinstance(ranks, Mapping) else list(range(len(ranks)))
    return [(a, b) if ranks[a] < ranks[b] else (b, a) for a, b in combinations(keys, 2) if ranks[a] != ranks[b]]


def _ranking_pairs(row: dict[str, Any], config) -> list[tuple[Part, Part, Part, float]]:
    responses, ranks = row.get(config.responses_field), row.get(config.ranks_field)
    if not isinstance(responses, list) or not isinstance(ranks, list) or len(responses) != len(ranks) or len(ranks) < 2:
        raise ValueError(f"{config.responses_field!r} and {config.ranks_field!r} must be lists of the same length >= 2")
    if not all(isinstance(rank, int | float) and not isinstance(rank, bool) for rank in ranks):
        raise ValueError(f"{config.ranks_field!r} must hold numbers (1 = best), got {ranks!r}")
    if config.prompt_field not in row:
        raise ValueError(f"ranking row has no {config.prompt_field!r} column")
    chat = is_conversational_row(row, config)
    prompt = response_part(row[config.prompt_field], "user", config.prompt_field, chat)
    answers = [response_part(r, "assistant", config.responses_field, chat) for r in responses]
    return [(prompt, answers[better], answers[worse], float(abs(ranks[better] - ranks[worse])))
            for better, worse in ranking_pairs(ranks)]


def check_preference_rows(path: str | Path, config) -> RowCheck:
    """Validate every row without tokenising; returns the number of pairs and of conversational ones."""
    return check_expanded_rows(path, lambda row: row_pairs(row, config), "preference pairs (all rankings are ties?)")


def tokenize_response(tokenizer, prompt: Part, response: Part, max_length: int,
                      truncate: bool = True) -> TokenizedExample:
    """Prompt plus response, labels on the response only, cut to ``max_length`` (``truncate=False``: left
    whole); raises ValueError when no response token fits in ``max_length``."""
    whole = max_length if truncate else 1 << 30
    if isinstance(prompt, str):
        example = tokenize_standard(tokenizer, prompt, response, whole)
    else:
        example = tokenize_sft(tokenizer, prompt + response, whole)
    if not any(label != IGNORE_INDEX for label in example.labels[1:max_length]):
        raise ValueError(f"no response token survives max_length={max_length}")
    return example


def load_preference_pairs(path: str | Path, tokenizer, config) -> list[PreferencePair]:
    """Read, expand and tokenise preference data; any bad row stops with its location."""
    pairs = []
    for index, row in enumerate(read_records(path)):
        try:
            for prompt, chosen, rejected, margin in row_pairs(row, config):
                pairs.append(PreferencePair(tokenize_response(tokenizer, prompt, chosen, config.max_length),
                                            tokenize_response(tokenizer, prompt, rejected, config.max_length), margin))
        except (ValueError, TypeError) as error:
            raise AlignError(f"{row_location(path, index)}: {error}") from None
    if not pairs:
        raise AlignError(f"{path}: no preference pairs (all rankings are ties?)")
    return pairs


def load_train_eval(config, tokenizer, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Train and held-out pairs: from ``data.eval`` or split off train."""
    from alignment.data import split_holdout

    train = load_preference_pairs(config.train, tokenizer, config)
    if config.eval:
        return train, load_preference_pairs(config.eval, tokenizer, config)
    return split_holdout(train, config.eval_fraction, seed)


def pair_batch(pairs: list[PreferencePair], pad_id: int) -> dict:
    """One right-padded batch: all chosen sequences, then all rejected (one concatenated forward)."""
    from alignment.data import pad_batch

    return pad_batch([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
