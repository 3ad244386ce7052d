"""Reward functions: rule-based scores of response text.

``sentiment_judge`` is the tiny task's *gold judge*: VADER's compound sentiment in [-1, 1].
It checks whether alignment worked; learned reward models never read it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from typing import Any

from alignment.errors import AlignError


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_judge(responses: Sequence[str]) -> list[float]:
    """VADER compound score of each response: -1 (very negative) .. 1 (very positive)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(text)["compound"]) for text in responses]


RewardFunction = Callable[[Sequence[Any], Sequence[str]], list[float]]


def load_reward_function(spec: str) -> RewardFunction:
    """A reward function from ``module:function`` / ``module.function``, or a remote ``http(s)://`` endpoint.

    Python functions are called as ``fn(responses)`` or, when they take a ``prompts`` parameter,
    ``fn(responses, prompts=prompts)``; they return one float per response. An endpoint receives
    ``POST {"prompts": [...], "responses": [...]}`` and answers ``{"rewards": [...]}``.
    """
    if spec.startswith(("http://", "https://")):
        return partial(_remote_rewards, spec)
    module_name, _, name = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise AlignError(f"reward function {spec!r} cannot be imported: {error}") from None
    takes_prompts = "prompts" in inspect.signature(function).parameters

    def call(prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        scores = function(list(responses), prompts=list(prompts)) if takes_prompts else function(list(responses))
        return _check_scores(spec, scores, len(responses))

    return call


def _remote_rewards(url: str, prompts: Sequence[Any], responses: Sequence[str], timeout_s: float = 60.0) -> list[float]:
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"prompts": list(prompts), "responses": list(responses)}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            scores = json.loads(answer.read())["rewards"]
    except (urllib.error.URLError, TimeoutError, KeyError, ValueError) as error:
        raise AlignError(f"reward endpoint {url} failed: {error}") from None
    return _check_scores(url, scores, len(responses))


def _check_scores(source: str, scores: Any, expected: int) -> list[float]:
    values = [float(s) for s in scores]
    if len(values) != expected:
        raise AlignError(f"reward function {source!r} returned {len(values)} scores for {expected} responses")
    return values
