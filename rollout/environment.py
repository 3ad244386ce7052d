"""Environments for multi-turn rollouts: what the policy acts in, one instance per episode.

An environment is a class named in the config by dotted path (``mypackage.envs:Maze``) or by a
built-in name (``tools``: :class:`rollout.tools.ToolEnvironment`)::

    class Environment:
        def reset(self, prompt, row) -> Observation | None    # before the first policy turn
        def step(self, action: str) -> StepResult             # after every policy turn

``prompt`` is the episode's prompt as given (text or chat messages), ``row`` its data row (columns such
as ``answer``). ``action`` is the text of the policy's turn, decoded from the tokens the engine produced.
An observation is text (appended as it is, tokenised without special tokens) or chat messages such as
``[{"role": "tool", "content": "42"}]`` (rendered by the chat template). Rewards of all steps add up
to the episode's environment reward. See :mod:`rollout.multiturn` for how episodes run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignment.errors import AlignError

Observation = str | list[dict[str, str]]


@dataclass
class StepResult:
    """What the environment answers to one policy turn.

    ``observation`` is appended after the turn unless ``done``; ``failed`` marks an episode that broke
    (a tool raised, hung or returned garbage): it ends with reward 0 whatever else scored it.
    ``metrics`` are counts such as ``tool_calls`` that the job averages over episodes.
    """

    observation: Observation | None = None
    reward: float = 0.0
    done: bool = False
    failed: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


class Environment:
    """Base class of environments (subclassing it is optional: ``reset`` and ``step`` are what count)."""

    def reset(self, prompt: Any, row: dict[str, Any]) -> Observation | None:
        """Start an episode; an observation returned here is appended to the prompt."""
        return None

    def step(self, action: str) -> StepResult:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the episode holds (called once it ends)."""


BUILTIN_ENVIRONMENTS = {"tools": "rollout.tools:ToolEnvironment"}


def resolve_environment(spec: str) -> type:
    """The environment class a spec names: a built-in name or ``module:Class`` / ``module.Class``."""
    import importlib

    path = BUILTIN_ENVIRONMENTS.get(spec, spec)
    if ":" not in path and "." not in path:
        raise AlignError(f"environment.name: unknown environment {spec!r}: built-in names are "
                         f"{', '.join(sorted(BUILTIN_ENVIRONMENTS))}; otherwise give package.module:Class")
    module_name, _, name = path.rpartition(":") if ":" in path else path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise AlignError(f"environment.name: {spec!r} cannot be imported: {error}") from None
    missing = [method for method in ("reset", "step") if not callable(getattr(cls, method, None))]
    if not inspect.isclass(cls) or missing:
        raise AlignError(f"environment.name: {spec!r} must be a class with reset(prompt, row) and step(action) "
                         f"methods (missing: {', '.join(missing) or 'it is not a class'})")
    return cls


def environment_factory(spec: str, kwargs: dict[str, Any]) -> Callable[[], Any]:
    """A function making one fresh environment per episode; one instance is made here, so a class that
    cannot be built with ``kwargs`` stops the job now, before any engine starts."""
    cls = resolve_environment(spec)

    def make() -> Any:
        return cls(**kwargs)

    try:
        probe = make()
    except AlignError:
        raise
    except Exception as error:  # noqa: BLE001 (any error of user code is reported, with its type)
        raise AlignError(f"environment {spec!r} cannot be created with environment.kwargs={kwargs}: "
                         f"{type(error).__name__}: {error}") from None
    close = getattr(probe, "close", None)
    if callable(close):
        close()
    return make
