"""Reward functions: rule-based scores of response text.

``sentiment_judge`` is the tiny task's *gold judge*: VADER's compound sentiment in [-1, 1].
It checks whether alignment worked; learned reward models never read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from functools import lru_cache

from alignment.errors import AlignError

RewardFunction = Callable[[Sequence[str]], Sequence[float]]


def load_reward_function(spec: str) -> RewardFunction:
    """The function a dotted path names: ``package.module:function`` or ``package.module.function``.

    A reward function takes a list of response texts and returns one float per response.
    """
    module_name, _, name = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not name:
        raise AlignError(f"reward function {spec!r}: write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise AlignError(f"reward function {spec!r}: cannot import module {module_name!r} ({error})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise AlignError(f"reward function {spec!r}: module {module_name!r} has no function {name!r}")
    return function


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_judge(responses: Sequence[str]) -> list[float]:
    """VADER compound score of each response: -1 (very negative) .. 1 (very positive)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(text)["compound"]) for text in responses]
