"""Reward functions: rule-based scores of response text.

``sentiment_judge`` is the tiny task's *gold judge*: VADER's compound sentiment in [-1, 1].
It checks whether alignment worked; learned reward models never read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_judge(responses: Sequence[str]) -> list[float]:
    """VADER compound score of each response: -1 (very negative) .. 1 (very positive)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(text)["compound"]) for text in responses]
