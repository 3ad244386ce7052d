"""PPO data-path overhead: the driver's and the transport's time per step, without the models' own work.

One PPO step's experience and training phases (GAE: actor, reference, critic and reward model in
one colocated group of 2 Ray workers, ZeRO-2) on a realistic batch, 1024 samples of 32 prompt and
1024 response tokens, with a micro model (hidden 32, one layer) so the arithmetic stays small.
Generation is not run (the batch is made up: random tokens), so the engines' time is excluded by
construction. Two figures per step, from timers inside the workers:

- driver + transport: the phases' wall time minus the slowest rank's time inside its worker methods
  (forward, score, train): the driver's own work (padding, advantages, metrics), Ray serialisation
  and transport, and scheduling. This is the number the last line reports.
- strict overhead: the phases' wall time minus only the slowest rank's model forward, backward and
  optimizer steps: the above plus everything a worker does around its models (batch slicing, the
  log-prob and entropy heads, the reward model's tokenisation).

    flock /tmp/align-heavy.lock python benchmarks/ppo_overhead.py --steps 2

The last line is ``overhead_s_per_million_tokens: X``: driver + transport, mean over the timed
steps, per million response tokens (the line before it gives the strict figure). It also runs against the list-of-dicts data path of earlier versions (before
alignment/ppo/batch.py existed), for the before/after in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from alignment.cluster.runtime import start_ray
from alignment.ppo.config import PPOConfig
from alignment.ppo.kl import FixedKLController
from alignment.runtime_env import configure_environment

SAMPLES, PROMPT_TOKENS, RESPONSE_TOKENS, N = 1024, 32, 1024, 4


def build_micro_model(root: Path) -> Path:
    from alignment.tiny.build import TinyBuildConfig, _init_model
    from alignment.tiny.corpus import make_sft_rows, split_titles
    from alignment.tiny.tokenizer import train_tokenizer

    titles, _ = split_titles(0)
    rows = make_sft_rows(0, titles, 400)
    tokenizer = train_tokenizer((m["content"] for r in rows for m in r["messages"]), 400, root / "tokenizer")
    config = TinyBuildConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64,
                             max_positions=PROMPT_TOKENS + RESPONSE_TOKENS + 8)
    _init_model(config, tokenizer, root / "model")
    return root / "model"


def ppo_config(model: Path, output: Path) -> PPOConfig:
    return PPOConfig.model_validate({
        "model": str(model), "output_dir": str(output),
        "data": {"train": str(output / "unused.jsonl")},
        "reward": {"model": str(model), "max_length": PROMPT_TOKENS + RESPONSE_TOKENS + 8},
        "kl": {"coef": 0.05},
        "algorithm": {"advantage": "gae", "prompts_per_step": SAMPLES // N, "mini_batch_size": SAMPLES // 2,
                      "ppo_epochs": 1},
        "train": {"max_steps": 100, "micro_batch_size": 8},
        "sampling": {"n": N, "max_tokens": RESPONSE_TOKENS},
        "rollout": {"max_model_len": PROMPT_TOKENS + RESPONSE_TOKENS + 8},
        "colocate": [["actor", "critic", "reference", "reward"]],
        "strategy": {"zero_stage": 2},
        "cluster": {"object_store_mb": 1024},
        "tracking": {"progress": False, "tensorboard": False},
    })


def timed_worker_class():
    """PPOWorker whose models time their own forward, backward and optimizer step (defined here, so
    Ray ships it by value to the workers)."""
    from alignment.ppo.worker import PPOWorker

    class TimedPPOWorker(PPOWorker):
        def setup(self, *args, **kwargs):
            counts = super().setup(*args, **kwargs)
            self.model_seconds = self.call_seconds = 0.0
            for strategy in self.models.values():
                module = strategy.engine.module
                module.forward = self._timed(module.forward)
                strategy.backward = self._timed(strategy.backward)
                strategy.step = self._timed(strategy.step)
            return counts

        def _timed(self, function):
            def timed(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    self.model_seconds += time.perf_counter() - started
            return timed

        def forward(self, *args, **kwargs):
            return self._call(super().forward, *args, **kwargs)

        def score(self, *args, **kwargs):
            return self._call(super().score, *args, **kwargs)

        def train(self, *args, **kwargs):
            return self._call(super().train, *args, **kwargs)

        def _call(self, method, *args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.call_seconds += time.perf_counter() - started

        def take_seconds(self) -> tuple[float, float]:
            """(model seconds, seconds inside the worker's methods) since the last call."""
            seconds = (self.model_seconds, self.call_seconds)
            self.model_seconds = self.call_seconds = 0.0
            return seconds

    return TimedPPOWorker


def made_up_rollout(tokenizer, seed: int):
    """1024 samples of random tokens (no EOS), in whichever form this version's driver takes."""
    generator = torch.Generator().manual_seed(seed)
    low = max(tokenizer.all_special_ids) + 1
    prompts = torch.randint(low, len(tokenizer), (SAMPLES // N, PROMPT_TOKENS), generator=generator)
    responses = torch.randint(low, len(tokenizer), (SAMPLES, RESPONSE_TOKENS), generator=generator)
    logprobs = -torch.rand((SAMPLES, RESPONSE_TOKENS), generator=generator)
    prompt_ids = [prompts[i // N].tolist() for i in range(SAMPLES)]
    prompt_texts = [tokenizer.decode(p) for p in prompts.tolist()]
    texts = tokenizer.batch_decode(responses.tolist())
    try:
        from alignment.ppo.batch import RolloutBatch
    except ImportError:  # the list-of-dicts path of earlier versions
        from alignment.ppo.experience import Rollout

        return [Rollout(prompt_texts[i // N], prompt_ids[i], responses[i].tolist(), texts[i], logprobs[i].tolist(),
                        finished=False) for i in range(SAMPLES)]
    return RolloutBatch.from_samples(prompt_ids, responses.tolist(), logprobs.tolist(), [False] * SAMPLES,
                                     tokenizer.pad_token_id, [prompt_texts[i // N] for i in range(SAMPLES)], texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    args = parser.parse_args()
    configure_environment()
    import alignment.ppo.worker as worker_module
    from alignment.models import load_tokenizer
    from alignment.ppo.trainer import PPOJob, PPOModels

    root = Path(tempfile.mkdtemp(prefix="ppo_overhead_"))
    model = build_micro_model(root)
    config = ppo_config(model, root / "run")
    tokenizer = load_tokenizer(str(model))
    start_ray(config.cluster)
    worker_module.PPOWorker = timed_worker_class()
    job = PPOJob.__new__(PPOJob)  # the driver's phases without engines, data files or checkpoints
    job.config, job.kl, job.gold, job.reward_functions = config, FixedKLController(config.kl.coef), None, {}
    job.checkpoints, job.pending_samples = None, []
    job.models = PPOModels(config, total_updates=1000)
    group = job.models.groups[0]
    rows = []
    try:
        for step in range(1, args.steps + 2):
            rollout = made_up_rollout(tokenizer, step)
            group.call("take_seconds")
            started = time.perf_counter()
            prepared, _ = job.experience(rollout)
            experience_s = time.perf_counter() - started
            experience_model_s, experience_calls_s = (max(x) for x in zip(*group.call("take_seconds")))
            started = time.perf_counter()
            job.train(step, prepared)
            train_s = time.perf_counter() - started
            train_model_s, train_calls_s = (max(x) for x in zip(*group.call("take_seconds")))
            overhead = experience_s - experience_model_s + train_s - train_model_s
            outside = experience_s - experience_calls_s + train_s - train_calls_s
            rows.append((outside, overhead))
            print(f"step {step}{' (warm-up)' if step == 1 else ''}: experience {experience_s:.2f} s "
                  f"(models {experience_model_s:.2f}), train {train_s:.2f} s (models {train_model_s:.2f}); "
                  f"overhead {overhead:.2f} s, of which {outside:.2f} s outside the workers' methods "
                  f"(driver, transport)", flush=True)
    finally:
        job.models.shutdown()
    timed = rows[1:]
    millions = SAMPLES * RESPONSE_TOKENS / 1e6
    strict = statistics.mean(x for _, x in timed) / millions
    print(f"{SAMPLES} samples x {RESPONSE_TOKENS} response tokens; per step: driver + transport "
          f"{', '.join(f'{x:.2f}' for x, _ in timed)} s; strict overhead {', '.join(f'{x:.2f}' for _, x in timed)} s")
    print(f"strict_overhead_s_per_million_tokens: {strict:.3f}")
    print(f"overhead_s_per_million_tokens: {statistics.mean(x for x, _ in timed) / millions:.3f}")


if __name__ == "__main__":
    main()
