"""Environments and tools for the multi-turn tests (importable by the spawned tool process)."""

from __future__ import annotations

import time

from rollout.environment import Environment, StepResult


class CountingEnvironment(Environment):
    """Answers every turn with ``observation`` (reward 1 per turn) and ends after ``turns`` turns."""

    def __init__(self, observation: str | list = " [ok] ", turns: int = 2) -> None:
        self.observation, self.turns, self.seen = observation, turns, []

    def step(self, action: str) -> StepResult:
        self.seen.append(action)
        return StepResult(observation=self.observation, reward=1.0, done=len(self.seen) >= self.turns,
                          metrics={"steps": 1.0})


class BrokenStepEnvironment(CountingEnvironment):
    def step(self, action: str) -> StepResult:
        raise RuntimeError("the environment broke")


class UnbuildableEnvironment(Environment):
    def __init__(self, size: int) -> None:
        raise ValueError(f"size {size} is too big")


class NoStep:
    def reset(self, prompt, row):
        return None


def add(a: int, b: int) -> int:
    return a + b


def raises(x: str) -> str:
    raise KeyError(x)


def hangs(x: str) -> str:
    time.sleep(3600)
    return x


def spins(x: str) -> str:
    while True:
        pass


def garbage(x: str) -> object:
    return object()


def hog(x: str) -> str:
    return "y" * (4 * 2**30) + x
