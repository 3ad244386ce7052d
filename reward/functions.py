"""Reward functions: rule-based scores of response text.

``sentiment_judge`` is the tiny task's *gold judge*: VADER's compound sentiment in [-1, 1].
It checks whether alignment worked; learned reward models never read it. ``math_answer``,
``answer_format`` and ``code_tests`` are verifiable rewards (``reward/verifiers.py``) that read the
reference answer or the tests from a dataset column.

A config names a reward function by its built-in name (``math_answer``), as
``package.module:function``, or as an ``http(s)://`` endpoint. A function's first parameter receives
the response texts; a parameter named ``prompts`` the prompts; any other parameter the dataset column
of that name, one value per response (as TRL passes columns).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any

from alignment.errors import AlignError
from reward.verifiers import code_tests_verdict, format_verdict, math_answer_verdict


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_judge(responses: Sequence[str]) -> list[float]:
    """VADER compound score of each response: -1 (very negative) .. 1 (very positive)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(text)["compound"]) for text in responses]


def math_answer(responses: Sequence[str], answer: Sequence[Any]) -> list[float]:
    """1.0 when a response's final answer (``<answer>`` tag or ``\\boxed{}``) equals its row's ``answer``, else 0.0."""
    return [math_answer_verdict(text, reference).score for text, reference in zip(responses, answer)]


def answer_format(responses: Sequence[str]) -> list[float]:
    """1.0 when a response ends with its one ``<answer>...</answer>`` tag, else 0.0."""
    return [format_verdict(text).score for text in responses]


def code_tests(responses: Sequence[str], tests: Sequence[Sequence[str]]) -> list[float]:
    """The share of its row's ``tests`` (assert statements) each response's Python code passes, run in
    separate processes with time and memory limits (``reward.verifiers.code_tests_verdict``)."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return [v.score for v in pool.map(code_tests_verdict, responses, tests)]


BUILTIN = {"math_answer": math_answer, "answer_format": answer_format, "code_tests": code_tests,
           "sentiment_judge": sentiment_judge}

RewardFunction = Callable[..., list[float]]  # (prompts, responses, columns=None) -> one float per response


def load_reward_function(spec: str) -> RewardFunction:
    """A reward function by built-in name, ``module:function`` / ``module.function``, or a remote ``http(s)://`` endpoint.

    The result is called as ``call(prompts, responses, columns=None)``, where ``columns`` maps dataset
    column names to one value per response. Python functions get the responses first, ``prompts=`` when
    they take that parameter, and each other parameter from the column of its name (AlignError naming the
    function and the available columns when one is missing; a parameter with a default may be absent).
    They return one float per response. An endpoint receives ``POST {"prompts": [...], "responses": [...]}``
    and answers ``{"rewards": [...]}``.
    """
    if spec.startswith(("http://", "https://")):
        return partial(_remote_rewards, spec)
    function = resolve_function(spec)
    takes_prompts, required, optional = _parameters(function)

    def call(prompts: Sequence[Any], responses: Sequence[str],
             columns: Mapping[str, Sequence[Any]] | None = None) -> list[float]:
        columns = columns or {}
        check_columns(spec, columns)
        kwargs: dict[str, Any] = {"prompts": list(prompts)} if takes_prompts else {}
        for name in [*required, *optional]:
            if name in columns:
                if len(columns[name]) != len(responses):
                    raise AlignError(f"reward function {spec!r}: column {name!r} has {len(columns[name])} values "
                                     f"for {len(responses)} responses")
                kwargs[name] = list(columns[name])
        return _check_scores(spec, function(list(responses), **kwargs), len(responses))

    return call


def resolve_function(spec: str) -> Callable[..., Any]:
    """The Python function a spec names: a built-in name, or ``module:function`` / ``module.function``."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" not in spec and "." not in spec:
        raise AlignError(f"unknown reward function {spec!r}: built-in names are {', '.join(sorted(BUILTIN))}; "
                         "otherwise give package.module:function or an http(s):// endpoint")
    module_name, _, name = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise AlignError(f"reward function {spec!r} cannot be imported: {error}") from None


def _parameters(function: Callable[..., Any]) -> tuple[bool, list[str], list[str]]:
    """Whether ``function`` takes ``prompts``, and the column parameters it requires and those with a default."""
    try:
        parameters = list(inspect.signature(function).parameters.values())[1:]  # the first gets the responses
    except (TypeError, ValueError):  # no signature (some builtins): responses only
        return False, [], []
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    columns = [p for p in named if p.name != "prompts"]
    return (any(p.name == "prompts" for p in named), [p.name for p in columns if p.default is p.empty],
            [p.name for p in columns if p.default is not p.empty])


def required_columns(spec: str) -> set[str]:
    """The dataset columns the reward function ``spec`` needs (none for an endpoint): check them before any work."""
    if spec.startswith(("http://", "https://")):
        return set()
    return set(_parameters(resolve_function(spec))[1])


def check_columns(spec: str, available: Iterable[str], source: str = "the data") -> None:
    """AlignError naming the function, the columns it needs that ``available`` lacks, and what there is."""
    available = set(available)
    missing = required_columns(spec) - available
    if missing:
        raise AlignError(f"reward function {spec!r} needs the column(s) {', '.join(sorted(missing))}, which "
                         f"{source} does not have (its columns: {', '.join(sorted(available)) or 'none'})")


def _remote_rewards(url: str, prompts: Sequence[Any], responses: Sequence[str],
                    columns: Mapping[str, Sequence[Any]] | None = None, timeout_s: float = 60.0) -> list[float]:
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
