"""Multi-turn rollouts, token in and token out: the policy acts, the environment answers, until done.

Each episode's context is token ids, never text re-tokenised. One round of a batch of episodes::

    turn  = engines.generate(context)         # the engine's tokens and log-probs, kept as they are
    reply = environment.step(turn.text)       # the turn's text is what the environment reads
    context += turn.token_ids + render(reply.observation)   # observation rendered once, as ids

The response of an episode is everything after its prompt: policy tokens (``policy_mask`` 1, with
the engine's log-probs) and environment tokens (``policy_mask`` 0, log-prob 0), which the trainer
reads as context but takes no loss, KL or entropy on. An episode ends when the environment says done,
after ``max_turns`` policy turns, when a turn is cut at ``sampling.max_tokens``, or when the
``max_total_tokens`` budget runs out. All active episodes generate their next turn in one batch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignment.errors import AlignError
from rollout.config import EnvironmentConfig, SamplingConfig
from rollout.engine import Generation
from rollout.environment import Observation, StepResult

TURN_SEED_STRIDE = 104_729  # turn t of a seeded batch samples with seed + t * stride


@dataclass
class Trajectory(Generation):
    """One episode: :class:`Generation`'s fields over the whole response, plus which tokens the policy wrote."""

    policy_mask: list[int] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    reward: float = 0.0
    failed: bool = False
    turns: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    env_seconds: float = 0.0


def render_observation(tokenizer: Any, observation: Observation) -> list[int]:
    """Token ids of an observation: text as it is (no special tokens), messages as the chat template
    renders them after an assistant turn, with the next assistant turn's generation prompt."""
    from alignment.data import render_chat

    if isinstance(observation, str):
        return list(tokenizer(observation, add_special_tokens=False)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise AlignError("the environment answered with chat messages but the tokenizer has no chat template: "
                         "set chat_template, or have the environment answer with text")
    before = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    prefix = render_chat(tokenizer, before, add_generation_prompt=False)
    full = render_chat(tokenizer, before + list(observation), add_generation_prompt=True)
    if full[: len(prefix)] != prefix:
        raise AlignError("the chat template does not render conversations prefix-consistently, so environment "
                         "messages cannot be appended as tokens")
    return full[len(prefix):]


def observation_messages(observation: Observation) -> list[dict[str, str]]:
    return list(observation) if not isinstance(observation, str) else [{"role": "environment", "content": observation}]


class Episode:
    """The running state of one episode."""

    def __init__(self, prompt_index: int, sample_index: int, prompt_ids: list[int], environment: Any,
                 config: EnvironmentConfig) -> None:
        self.prompt_index, self.sample_index = prompt_index, sample_index
        self.environment, self.config = environment, config
        self.context = list(prompt_ids)
        self.tokens: list[int] = []
        self.mask: list[int] = []
        self.logprobs: list[float] = []
        self.messages: list[dict[str, str]] = []
        self.metrics: dict[str, float] = {}
        self.reward, self.turns, self.seconds = 0.0, 0, 0.0
        self.done, self.failed, self.finish = False, False, "length"

    @property
    def room(self) -> int:
        return self.config.max_total_tokens - len(self.tokens)

    def call(self, method: Callable[..., Any], *args: Any) -> Any:
        """An environment call, timed; an exception ends the episode as failed (``env_errors``)."""
        started = time.perf_counter()
        try:
            return method(*args)
        except Exception as error:  # noqa: BLE001 (a broken environment fails the episode, not the job)
            self.metrics["env_errors"] = self.metrics.get("env_errors", 0.0) + 1
            self.messages.append({"role": "environment", "content": f"error: {type(error).__name__}: {error}"[:500]})
            self.end("failed", failed=True)
            return None
        finally:
            self.seconds += time.perf_counter() - started

    def start(self, tokenizer: Any, prompt: Any, row: dict[str, Any]) -> None:
        observation = self.call(self.environment.reset, prompt, row)
        if observation:
            self.context += render_observation(tokenizer, observation)

    def act(self, generation: Generation) -> str | None:
        """Append the policy's turn (cut to the token budget); its text, or None when the episode ended."""
        ids, logprobs = generation.token_ids[: self.room], (generation.logprobs or [])[: self.room]
        if len(logprobs) != len(ids):
            raise AlignError("the rollout engine returned no log-probabilities for a multi-turn episode (sampling.logprobs)")
        self.turns += 1
        self.tokens += ids
        self.mask += [1] * len(ids)
        self.logprobs += logprobs
        self.context += ids
        self.messages.append({"role": "assistant", "content": generation.text})
        if len(ids) < len(generation.token_ids) or generation.finish_reason != "stop":
            self.end("length")
            return None
        return generation.text

    def observe(self, tokenizer: Any, result: StepResult | None) -> None:
        if result is None:
            return
        if not isinstance(result, StepResult):
            self.metrics["env_errors"] = self.metrics.get("env_errors", 0.0) + 1
            self.end("failed", failed=True)
            return
        self.reward += float(result.reward)
        for key, value in result.metrics.items():
            self.metrics[key] = self.metrics.get(key, 0.0) + float(value)
        if result.failed:
            if result.observation:
                self.messages += observation_messages(result.observation)
            self.end("failed", failed=True)
        elif result.done:
            self.end("stop")
        elif self.turns >= self.config.max_turns:
            self.end("turns")
        elif result.observation:
            ids = render_observation(tokenizer, result.observation)
            if len(ids) >= self.room:  # no room left for the policy to answer
                self.end("length")
                return
            self.tokens += ids
            self.mask += [0] * len(ids)
            self.logprobs += [0.0] * len(ids)
            self.context += ids
            self.messages += observation_messages(result.observation)

    def end(self, reason: str, failed: bool = False) -> None:
        self.done, self.finish, self.failed = True, reason, self.failed or failed
        close = getattr(self.environment, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):  # closing a finished episode must not fail the job
                close()

    def trajectory(self, tokenizer: Any) -> Trajectory:
        return Trajectory(
            prompt_index=self.prompt_index, sample_index=self.sample_index, token_ids=list(self.tokens),
            text=tokenizer.decode(self.tokens, skip_special_tokens=True), logprobs=list(self.logprobs),
            finish_reason=self.finish, policy_mask=list(self.mask), messages=self.messages,
            reward=0.0 if self.failed else self.reward, failed=self.failed, turns=self.turns,
            metrics=self.metrics, env_seconds=self.seconds)


def run_episodes(engines: Any, prompt_ids: Sequence[list[int]], prompts: Sequence[Any], rows: Sequence[dict[str, Any]],
                 sampling: SamplingConfig, config: EnvironmentConfig, make_environment: Callable[[], Any]) -> list[Trajectory]:
    """``sampling.n`` episodes per prompt, in prompt order then sample order (like ``engines.generate``)."""
    tokenizer = engines.tokenizer
    episodes = [Episode(p, s, prompt_ids[p], make_environment(), config)
                for p in range(len(prompt_ids)) for s in range(sampling.n)]
    for episode in episodes:
        episode.start(tokenizer, prompts[episode.prompt_index], rows[episode.prompt_index])
    for turn in range(config.max_turns):
        active = [e for e in episodes if not e.done]
        if not active:
            break
        seed = None if sampling.seed is None else sampling.seed + TURN_SEED_STRIDE * turn
        per_turn = sampling.model_copy(update={"n": 1, "seed": seed, "logprobs": True,
                                               "max_tokens": min(sampling.max_tokens, max(e.room for e in active))})
        for episode, generation in zip(active, engines.generate([e.context for e in active], per_turn)):
            text = episode.act(generation)
            if text is not None:
                episode.observe(tokenizer, episode.call(episode.environment.step, text))
    for episode in episodes:
        if not episode.done:
            episode.end("turns")
    return [episode.trajectory(tokenizer) for episode in episodes]


EPISODE_COUNTS = ("tool_calls", "invalid_calls", "tool_errors", "tool_timeouts", "env_errors")


def episode_metrics(trajectories: Sequence[Trajectory], prefix: str = "env") -> dict[str, float]:
    """Means over episodes: turns, tool calls and their failures; the share of episodes that used a tool,
    failed or ran out of turns or tokens; and the environment's seconds in total."""
    count = max(len(trajectories), 1)

    def mean(values: Sequence[float]) -> float:
        return sum(values) / count

    metrics = {
        f"{prefix}/turns": mean([t.turns for t in trajectories]),
        f"{prefix}/reward": mean([t.reward for t in trajectories]),
        f"{prefix}/tool_use": mean([float(t.metrics.get("tool_calls", 0) > 0) for t in trajectories]),
        f"{prefix}/failed": mean([float(t.failed) for t in trajectories]),
        f"{prefix}/truncated": mean([float(t.finish_reason in ("length", "turns")) for t in trajectories]),
        f"{prefix}/policy_tokens": mean([sum(t.policy_mask) for t in trajectories]),
        f"{prefix}/env_tokens": mean([len(t.policy_mask) - sum(t.policy_mask) for t in trajectories]),
        f"{prefix}/seconds": sum(t.env_seconds for t in trajectories),
    }
    for key in EPISODE_COUNTS:
        metrics[f"{prefix}/{key}"] = mean([t.metrics.get(key, 0.0) for t in trajectories])
    return metrics
