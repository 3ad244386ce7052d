"""`align ppo`: the driver loop. Each step reads like the algorithm::

    rollouts   = engines.generate(prompts)                 # vLLM actors
    experience = models.forward(...), rewards, advantages  # reference, critic, reward groups
    models.train("critic"), models.train("actor")          # PPO epochs over minibatches
    models.broadcast_actor_weights(engines)                # rank 0 -> engines, no restart

Models live in Ray ActorGroups of :class:`alignment.ppo.worker.PPOWorker` (colocated as configured);
the driver holds the data order, the KL controller, metrics and whole-job checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignment.cluster.group import ActorGroup
from alignment.data import columns_of
from alignment.errors import AlignError
from alignment.job import TrainingRun
from alignment.ppo.batch import RolloutBatch, equal_shares
from alignment.ppo.config import PPOConfig, Role
from alignment.ppo.experience import compute_experience, explained_variance, logprob_mismatch
from alignment.ppo.kl import AdaptiveKLController, FixedKLController
from alignment.ppo.losses import mismatch_sequence_mask, truncated_is_weights
from alignment.ppo.shaping import fill_groups, informative_groups, overlong_penalty
from alignment.stats import pass_at_k

if TYPE_CHECKING:
    from rollout.engine import Generation, RolloutEngines
    from rollout.multiturn import Trajectory


class PPOModels:
    """The job's model groups, and which group hosts each role. Calls split samples evenly over ranks."""

    def __init__(self, config: PPOConfig, total_updates: int) -> None:
        from alignment.ppo.worker import PPOWorker

        layout = config.groups()
        self.by_role: dict[Role, ActorGroup] = {}
        self.groups: list[ActorGroup] = []
        self.parameters: dict[str, int] = {}
        first = None
        try:
            for roles in layout:
                group = ActorGroup(PPOWorker, config.cluster, name="+".join(roles),
                                   timeout_minutes=config.strategy.timeout_minutes,
                                   colocate_with=first, share=1.0 / len(layout))
                first = first or group
                self.groups.append(group)
                self.parameters.update(group.call("setup", config.model_dump(mode="json"), roles, total_updates)[0])
                self.by_role.update({role: group for role in roles})
        except BaseException:
            self.shutdown()
            raise

    def forward(self, role: Role, batch: RolloutBatch) -> torch.Tensor:
        """[B, R] per-response-token outputs of ``role`` (each rank gets an equal share of the batch)."""
        group = self.by_role[role]
        shares = batch.split(group.size)
        return torch.cat(group.call_each("forward", [(role, share) for share in shares]))[: len(batch)]

    def score(self, prompts: list, texts: list[str]) -> torch.Tensor:
        """[B] reward-model scores."""
        group = self.by_role["reward"]
        shares = [([prompts[i] for i in share], [texts[i] for i in share]) for share in equal_shares(len(texts), group.size)]
        return torch.cat(group.call_each("score", shares))[: len(texts)]

    def train(self, role: Role, batch: RolloutBatch, step: int, kl_coef: float) -> list[dict[str, float]]:
        group = self.by_role[role]
        return group.call_each("train", [(role, share, step, kl_coef) for share in batch.split(group.size)])

    def actor_weights(self):
        return self.by_role["actor"].call("actor_weights")[0][0]

    def actor_adapter(self) -> dict[str, bytes]:
        """The actor's LoRA adapter as PEFT files (every rank gathers; rank 0's answer)."""
        return self.by_role["actor"].call("actor_adapter")[0]

    def open_weight_broadcast(self, engines: RolloutEngines, backend: str, timeout_s: float) -> None:
        """Actor rank 0 hosts a broadcast group with every engine (``rollout.weight_sync: broadcast``)."""
        group = self.by_role["actor"]
        host, port = group.call_rank0("address")
        world = len(engines.engines) + 1
        sender = [group.workers[0].join_weight_broadcast.remote(host, port, world, backend, timeout_s)]
        engines.join_weight_broadcast(host, port, backend, sender, f"trainer group {group.name!r} rank 0")

    def broadcast_actor_weights(self, engines: RolloutEngines) -> None:
        """Every actor rank gathers (collective under ZeRO-3), rank 0 broadcasts, every engine loads."""
        group = self.by_role["actor"]
        engines.receive_weight_broadcast([w.broadcast_weights.remote() for w in group.workers], f"trainer group {group.name!r}")

    def save(self, directory: Path) -> None:
        for group in self.groups:
            group.call("save", str(directory))
        self.by_role["actor"].call("export_hf", str(directory / "hf"))

    def load(self, directory: Path) -> None:
        for group in self.groups:
            group.call("load", str(directory))

    def shutdown(self) -> None:
        for group in self.groups:
            group.shutdown()
        self.groups = []


def load_prompts(path: str, field: str, tokenizer, room: int, max_model_len: int,
                 tools: list[dict] | None = None) -> tuple[list[Any], list[list[int]]]:
    """Prompts and their token ids (chat prompts advertise ``tools`` where the template takes them); rows
    without the field, or too long to leave ``room`` tokens, name file:line."""
    from alignment.data import read_prompts, row_location
    from rollout.engine import encode_prompts

    prompts = read_prompts(path, field)
    return prompts, encode_prompts(tokenizer, prompts, max_model_len, room,
                                   lambda index: f"{row_location(path, index)}: prompt", tools)


def scoring_specs(config: PPOConfig) -> list[str]:
    """Every reward function the job calls: those trained on, the gold judge and the verifier."""
    reward = config.reward
    return [*reward.functions, *[spec for spec in (reward.gold, reward.verifier) if spec]]


def check_prompt_templates(config: PPOConfig) -> None:
    """Chat prompts need a chat template for the policy (and for the reward model, which reads the
    conversation): ``chat_template`` or the tokenizer's own; checked before any worker or engine starts."""
    from alignment.chat_templates import require_chat_template
    from alignment.data import is_messages, read_records

    for path in (config.data.train, config.data.eval):
        if not path:
            continue
        rows = read_records(path)
        chats = sum(is_messages(row.get(config.data.prompt_field)) for row in rows)
        if chats:
            source = f"{path} ({chats} of {len(rows)} prompts)"
            require_chat_template(config.tokenizer or config.model, config.chat_template, source)
            if config.reward.model:
                require_chat_template(config.reward.model, config.chat_template, source)


def check_ppo_inputs(config: PPOConfig) -> None:
    from alignment.models import check_model_dir
    from reward.functions import load_reward_function

    for path in (config.model, config.reference, config.critic, config.reward.model):
        if path:
            check_model_dir(path)
    if config.tokenizer:
        check_model_dir(config.tokenizer, "tokenizer")
    if config.lora is not None:
        from alignment.lora import check_lora

        check_lora(config.lora, config.model)
    for path in (config.data.train, config.data.eval):
        if path and not Path(path).exists():
            raise AlignError(f"prompt data {path} does not exist")
    check_prompt_templates(config)
    from alignment.data import read_records, shared_columns
    from reward.functions import check_columns

    for spec in scoring_specs(config):
        load_reward_function(spec)
        for path in (config.data.train, config.data.eval):
            if path:
                check_columns(spec, shared_columns(read_records(path)), f"the prompt rows of {path}")


class PPOJob:
    """State of one `align ppo` run: engines, model groups, data, KL controller, tracker."""

    def __init__(self, config: PPOConfig, resume: bool) -> None:
        from reward.functions import load_reward_function

        check_ppo_inputs(config)
        self.config = cfg = config
        self.run = TrainingRun(cfg, resume)
        self.output_dir, self.checkpoints, self.resume_from = self.run.output_dir, self.run.checkpoints, self.run.resume_from
        self.reward_functions = {spec: load_reward_function(spec) for spec in cfg.reward.functions}
        self.gold = load_reward_function(cfg.reward.gold) if cfg.reward.gold else None
        self.verifier = load_reward_function(cfg.reward.verifier) if cfg.reward.verifier else None
        algo = cfg.algorithm
        self.batch_size = algo.prompts_per_step * cfg.sampling.n
        self.make_environment = environment_factory(cfg) if cfg.environment else None
        self.timer = self.run.timer
        self.engines = self.models = None
        try:
            self._start()
        except BaseException:
            self.shutdown()
            raise
        self.kl = (AdaptiveKLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon) if cfg.kl.target
                   else FixedKLController(cfg.kl.coef))
        self.samples_log = self.output_dir / "samples.log"
        self.pending_samples: list[dict] = []  # this step's responses for samples.log

    def _start(self) -> None:
        from alignment.cluster.runtime import start_ray
        from alignment.data import StepSampler, read_records
        from rollout.engine import RolloutEngines
        from rollout.weight_broadcast import broadcast_backend

        cfg, algo = self.config, self.config.algorithm
        with self.timer.phase("startup"):
            groups = cfg.cluster.num_workers * cfg.cluster.cpus_per_worker  # colocated groups share their bundles
            start_ray(cfg.cluster, cpus=groups + cfg.rollout.num_engines * cfg.rollout.cpus_per_engine)
            lora_rank = cfg.lora.rank if cfg.rollout.lora_sync == "adapter" else None
            self.engines = RolloutEngines(cfg.model, cfg.rollout, tokenizer=cfg.tokenizer, wait=False,
                                          chat_template=cfg.chat_template, lora_rank=lora_rank)
            room, limit, tools = cfg.response_budget, cfg.rollout.max_model_len, advertised_tools(cfg)
            self.prompts, self.prompt_ids = load_prompts(cfg.data.train, cfg.data.prompt_field, self.engines.tokenizer,
                                                         room, limit, tools)
            self.rows = read_records(cfg.data.train)
            self.eval_prompts, self.eval_ids, self.eval_rows = [], [], []
            if cfg.data.eval:
                prompts, ids = load_prompts(cfg.data.eval, cfg.data.prompt_field, self.engines.tokenizer, room, limit,
                                            tools)
                self.eval_prompts, self.eval_ids = prompts[: cfg.data.max_eval_prompts], ids[: cfg.data.max_eval_prompts]
                self.eval_rows = read_records(cfg.data.eval)[: cfg.data.max_eval_prompts]
            self.sampler = StepSampler(len(self.prompts), algo.prompts_per_step, cfg.train.seed, cfg.data.shuffle)
            updates_per_step = algo.ppo_epochs * self.batch_size // algo.mini_batch_size
            self.models = PPOModels(cfg, cfg.train.max_steps * updates_per_step)  # while the engines start
            self.engines.wait_ready()
            if cfg.rollout.weight_sync == "broadcast":
                backend = broadcast_backend(cuda=cfg.cluster.gpus_per_worker > 0)
                self.models.open_weight_broadcast(self.engines, backend, cfg.rollout.call_timeout_s)

    # ---- the four phases ---------------------------------------------------------------------

    def rollout(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        """Sample and score this step's prompts. With dynamic sampling, groups whose scores are all equal
        are dropped and more prompts are sampled (at most ``max_sampling_rounds`` extra rounds) until
        ``prompts_per_step`` groups are kept; short of that, kept groups repeat to fill the batch."""
        cfg, algo, n = self.config, self.config.algorithm, self.config.sampling.n
        indices = self.sampler.indices(step - 1)
        batch, parts, episodes = self.sample(indices, cfg.train.seed * 100_003 + step)
        metrics = {**self.score_metrics(batch, parts), **episodes}
        if not algo.dynamic_sampling:
            return batch, metrics
        wanted, used = algo.prompts_per_step, set(indices)
        kept = [batch.select(range(g * n, (g + 1) * n), trim=False)
                for g in informative_groups(batch.scores, n).nonzero().flatten().tolist()]
        generated, rounds = len(indices), 0
        while len(kept) < wanted and rounds < algo.max_sampling_rounds:
            rounds += 1
            extra = self.extra_prompts(step, rounds, used, wanted)
            used.update(extra)
            more, _, _ = self.sample(extra, cfg.train.seed * 100_003 + step + 7_777 * rounds)
            generated += len(extra)
            kept += [more.select(range(g * n, (g + 1) * n), trim=False)
                     for g in informative_groups(more.scores, n).nonzero().flatten().tolist()]
        order = fill_groups(list(range(len(kept))), wanted)
        metrics.update({"dynamic/kept_groups": float(min(len(kept), wanted)), "dynamic/extra_rounds": float(rounds),
                        "dynamic/prompts_sampled": float(generated),
                        "dynamic/repeated_groups": float(max(0, wanted - len(kept)) if kept else 0)})
        if not kept:
            return batch.select([], trim=False), metrics
        return join_batches([kept[i] for i in order], self.engines.tokenizer.pad_token_id), metrics

    def extra_prompts(self, step: int, round_: int, used: set[int], count: int) -> list[int]:
        """``count`` training prompts not yet sampled this step, drawn from a seed of (seed, step, round)
        so a resumed run draws the same ones."""
        import numpy as np

        free = np.array([i for i in range(len(self.prompts)) if i not in used] or list(range(len(self.prompts))))
        rng = np.random.default_rng([self.config.train.seed, step, round_])
        return rng.choice(free, size=min(count, len(free)), replace=False).tolist()

    def respond(self, prompt_ids: list[list[int]], prompts: list, rows: list[dict],
                sampling) -> tuple[list[Generation] | list[Trajectory], dict[str, float]]:
        """``sampling.n`` responses per prompt: one generation each, or a multi-turn episode in the
        environment (with the episodes' metrics)."""
        if self.make_environment is None:
            return self.engines.generate(prompt_ids, sampling), {}
        from rollout.multiturn import episode_metrics, run_episodes

        episodes = run_episodes(self.engines, prompt_ids, prompts, rows, sampling, self.config.environment,
                                self.make_environment)
        return episodes, episode_metrics(episodes)

    def sample(self, indices: list[int], seed: int) -> tuple[RolloutBatch, dict[str, torch.Tensor], dict[str, float]]:
        """The rollout batch of ``sampling.n`` responses (or episodes) to each training prompt at ``indices``,
        scored; the score's parts; the episodes' metrics."""
        cfg = self.config
        sampling = cfg.sampling.model_copy(update={"seed": seed, "logprobs": True})
        generations, episodes = self.respond([self.prompt_ids[i] for i in indices], [self.prompts[i] for i in indices],
                                             [self.rows[i] for i in indices], sampling)
        eos = self.engines.tokenizer.eos_token_id
        rows = [indices[g.prompt_index] for g in generations]
        empty = [not g.token_ids for g in generations]  # an empty response is scored as its EOS alone
        multiturn = self.make_environment is not None
        batch = RolloutBatch.from_samples(
            prompt_ids=[self.prompt_ids[i] for i in rows],
            response_ids=[[eos] if e else g.token_ids for g, e in zip(generations, empty)],
            rollout_logprobs=[[0.0] if e else g.logprobs for g, e in zip(generations, empty)],
            finished=[g.finish_reason == "stop" for g in generations],
            pad_id=self.engines.tokenizer.pad_token_id,
            prompts=[self.prompts[i] for i in rows],
            texts=[g.text for g in generations],
            rows=rows,
            policy_mask=[[1] if e else g.policy_mask for g, e in zip(generations, empty)] if multiturn else None,
            messages=[g.messages for g in generations] if multiturn else (),
        )
        outcome = None
        if multiturn:
            outcome = (torch.tensor([g.reward for g in generations]), torch.tensor([g.failed for g in generations]))
        batch.scores, parts = self.scores(batch.prompts, batch.texts, self.rows, rows, batch.response_lengths,
                                          batch.finished, outcome)
        return batch, parts, episodes

    def scores(self, prompts: list, texts: list[str], rows: list[dict], indices: list[int], lengths: torch.Tensor,
               finished: torch.Tensor, episodes: tuple[torch.Tensor, torch.Tensor] | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reward of each response and its parts: reward model + reward functions (reading the columns
        of each prompt's data row) + the environment's reward, then the missing-EOS and overlong
        penalties, then the clip. ``episodes``: each episode's environment reward and whether it failed
        (a failed episode scores 0)."""
        cfg = self.config.reward
        columns = columns_of(rows, indices)
        parts: dict[str, torch.Tensor] = {}
        if cfg.model:
            parts["model"] = self.models.score(prompts, texts)
        for spec, function in self.reward_functions.items():
            parts[spec] = torch.tensor(function(prompts, texts, columns), dtype=torch.float32)
        if episodes is not None:
            parts["environment"] = episodes[0].float()
        scores = torch.stack(list(parts.values())).sum(dim=0)
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~finished).float()
        if cfg.overlong_buffer is not None:
            parts["overlong"] = overlong_penalty(lengths, self.config.response_budget, cfg.overlong_buffer,
                                                 cfg.overlong_factor)
            scores = scores + parts["overlong"]
        if cfg.clip is not None:
            scores = scores.clamp(-cfg.clip, cfg.clip)
        if episodes is not None:
            scores = scores.masked_fill(episodes[1], 0.0)
        return scores, parts

    def score_metrics(self, batch: RolloutBatch, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        """Reward statistics of the step's first sampling round (the policy as it is, before any filtering)."""
        scores = batch.scores
        metrics = {
            "reward/score": float(scores.mean()),
            "reward/score_std": float(scores.std()) if len(scores) > 1 else 0.0,
            **{f"reward/{name}": float(v.mean()) for name, v in parts.items()},
            "response/length": float(batch.response_lengths.float().mean()),
            "response/eos_fraction": float(batch.finished.float().mean()),
        }
        columns = columns_of(self.rows, batch.rows)
        for name, judge in (("gold", self.gold), ("accuracy", self.verifier)):
            if judge is not None:
                values = judge(batch.prompts, batch.texts, columns)
                metrics[f"reward/{name}"] = sum(values) / len(values)
        self._log_samples(batch, scores, parts)
        return metrics

    def experience(self, batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, float]]:
        """Fill in the batch's training targets (old log-probs, advantages, values and returns) and the
        loss weights against the engine/trainer mismatch."""
        roles = self.config.roles
        logprobs = self.models.forward("actor", batch)
        ref_logprobs = self.models.forward("reference", batch) if "reference" in roles else None
        values = self.models.forward("critic", batch) if "critic" in roles else None
        metrics, sequence_kl = experience_targets(self.config, self.kl.value, batch, logprobs, ref_logprobs, values)
        self.kl.update(sequence_kl, len(batch))
        return batch, metrics

    def train(self, step: int, batch: RolloutBatch) -> dict[str, float]:
        metrics: dict[str, float] = {}
        roles = ["critic"] if "critic" in self.config.roles else []
        if step > self.config.algorithm.critic_warmup_steps:
            roles.append("actor")
        for role in roles:
            results = self.models.train(role, batch, step, self.kl.value)
            metrics.update(reduce_train_metrics(results, "policy" if role == "actor" else "critic"))
        return metrics

    def sync(self) -> dict[str, float]:
        if self.config.rollout.lora_sync == "adapter":
            self.engines.load_adapter(self.models.actor_adapter())
        elif self.config.rollout.weight_sync == "broadcast":
            self.models.broadcast_actor_weights(self.engines)
        else:
            self.engines.update_weights(self.models.actor_weights())
        return {f"sync/{k}": v for k, v in self.engines.last_sync.items() if k != "seconds"}

    # ---- evaluation, checkpoints, samples ----------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Held-out prompts: ``train.eval_samples`` samples each at the rollout temperature (score, gold,
        and with a verifier accuracy = mean@n, pass@k for k = 1, 2, 4, ... <= n) and one greedy sample
        each (greedy accuracy)."""
        cfg = self.config
        n = cfg.train.eval_samples
        sampling = cfg.sampling.model_copy(update={"n": n, "seed": cfg.train.seed + 7919})
        generations, episodes = self.respond(self.eval_ids, self.eval_prompts, self.eval_rows, sampling)
        prompts = [self.eval_prompts[g.prompt_index] for g in generations]
        texts = [g.text for g in generations]
        indices = [g.prompt_index for g in generations]
        lengths = torch.tensor([max(1, len(g.token_ids)) for g in generations])
        finished = torch.tensor([g.finish_reason == "stop" for g in generations])
        metrics = {"eval/length": sum(len(g.token_ids) for g in generations) / len(generations),
                   **{key.replace("env/", "eval/env_", 1): value for key, value in episodes.items()}}
        outcome = None
        if self.make_environment is not None:
            outcome = (torch.tensor([g.reward for g in generations]), torch.tensor([g.failed for g in generations]))
        scores, _ = self.scores(prompts, texts, self.eval_rows, indices, lengths, finished, outcome)
        metrics["eval/score"] = float(scores.mean())
        columns = columns_of(self.eval_rows, indices)
        if self.gold is not None:
            metrics["eval/gold"] = sum(gold := self.gold(prompts, texts, columns)) / len(gold)
        if self.verifier is not None:
            correct = self.verifier(prompts, texts, columns)
            if outcome is not None:  # a failed episode is not a success
                correct = [0.0 if failed else value for value, failed in zip(correct, outcome[1].tolist())]
            metrics.update(verifier_metrics(correct, indices, n))
            greedy, _ = self.respond(self.eval_ids, self.eval_prompts, self.eval_rows,
                                     cfg.sampling.model_copy(update={"n": 1, "temperature": 0.0}))
            order = [g.prompt_index for g in greedy]
            correct = self.verifier([self.eval_prompts[i] for i in order], [g.text for g in greedy],
                                    columns_of(self.eval_rows, order))
            correct = [0.0 if getattr(g, "failed", False) else value for g, value in zip(greedy, correct)]
            metrics["eval/greedy_accuracy"] = sum(correct) / len(correct)
        return metrics

    def write_checkpoint(self, staging: Path) -> dict[str, Any]:
        """Every trained model's state and the actor's ``hf/`` into ``staging``; the KL controller's state
        goes into the committed state."""
        self.models.save(staging)
        return {"kl_controller": self.kl.state_dict()}

    def _log_samples(self, batch: RolloutBatch, scores: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        count = min(self.config.train.samples_to_log, len(batch))
        self.pending_samples = [
            {"prompt": batch.prompts[i], "score": round(float(scores[i]), 4),
             "response": conversation_text(batch.messages[i]) if batch.messages else batch.texts[i],
             **{name: round(float(v[i]), 4) for name, v in parts.items()}, "finished": bool(batch.finished[i])}
            for i in range(count)
        ]

    def write_samples(self, step: int) -> None:
        if not self.pending_samples:
            return
        with self.samples_log.open("a", encoding="utf-8") as sink:
            for sample in self.pending_samples:
                prompt = sample["prompt"] if isinstance(sample["prompt"], str) else sample["prompt"][-1]["content"]
                details = json.dumps({k: v for k, v in sample.items() if k not in ("prompt", "response")})
                sink.write(f"--- step {step} {details}\n> {prompt}\n{sample['response']}\n")

    def shutdown(self) -> None:
        if self.models is not None:
            self.models.shutdown()
        if self.engines is not None:
            self.engines.shutdown()
        if self.make_environment is not None:
            from rollout.tools import close_runners

            close_runners()


def experience_targets(cfg: PPOConfig, kl_coef: float, batch: RolloutBatch, logprobs: torch.Tensor,
                       ref_logprobs: torch.Tensor | None, values: torch.Tensor | None) -> tuple[dict[str, float], float]:
    """Set ``batch``'s training targets from the models' per-token outputs, over the policy's tokens only
    (``batch.loss_mask`` as the rollout left it: in a multi-turn episode the environment's tokens are
    out); returns the experience metrics and the mean sequence KL (for the KL controller)."""
    algo = cfg.algorithm
    mask = batch.loss_mask.clone()
    exp = compute_experience(algo, cfg.kl, kl_coef, batch.scores, logprobs, mask, ref_logprobs, values, cfg.sampling.n)
    batch.old_logprobs, batch.advantages = logprobs, exp.advantages * mask
    if values is not None:
        batch.old_values, batch.returns = values, exp.returns * mask
    if cfg.kl_in_loss:
        batch.ref_logprobs = ref_logprobs
    metrics = {"rollout/mismatch": logprob_mismatch(logprobs, batch.rollout_logprobs, mask)}
    keep = torch.ones(len(batch))
    if cfg.reward.mask_truncated:
        keep = keep * batch.finished.float()
    if algo.mismatch_mask is not None:
        matched = mismatch_sequence_mask(logprobs, batch.rollout_logprobs, mask, algo.mismatch_mask)
        metrics["mismatch/masked_fraction"] = float(1.0 - matched.mean())
        keep = keep * matched
    batch.loss_mask = batch.loss_mask * keep[:, None]
    if algo.tis_cap is not None:
        batch.is_weights, capped = truncated_is_weights(logprobs, batch.rollout_logprobs, mask, algo.tis_cap)
        metrics["mismatch/capped_fraction"] = float((capped * mask).sum() / mask.sum())
    lengths = mask.sum(dim=1)
    sequence_kl = (((logprobs - ref_logprobs) * mask).sum(dim=1) if ref_logprobs is not None
                   else torch.zeros(len(batch)))
    metrics.update({
        "kl/sequence": float(sequence_kl.mean()),
        "kl/token_estimate": float((exp.kl * mask).sum() / mask.sum()),
        "kl/coef": kl_coef,
        "advantages/mean": float((exp.advantages * mask).sum() / mask.sum()),
        "train/response_length": float(lengths.mean()),
        "train/loss_fraction": float(batch.loss_mask.sum() / mask.sum()),
    })
    if values is not None:
        metrics["critic/explained_variance"] = explained_variance(values, exp.returns, mask)
        metrics["critic/returns"] = float((exp.returns * mask).sum() / mask.sum())
    return metrics, float(sequence_kl.mean())


def join_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One batch of the samples of ``batches`` in order (re-padded to the longest), keeping their scores."""
    samples = [(b, i) for b in batches for i in range(len(b))]
    joined = RolloutBatch.from_samples(
        prompt_ids=[b.input_ids[i, : int(b.prompt_lengths[i])].tolist() for b, i in samples],
        response_ids=[b.input_ids[i, int(b.prompt_lengths[i]) : int(b.lengths[i])].tolist() for b, i in samples],
        rollout_logprobs=[b.rollout_logprobs[i, : int(b.response_lengths[i])].tolist() for b, i in samples],
        finished=[bool(b.finished[i]) for b, i in samples], pad_id=pad_id,
        prompts=[b.prompts[i] for b, i in samples], texts=[b.texts[i] for b, i in samples],
        rows=[b.rows[i] for b, i in samples],
        policy_mask=[b.loss_mask[i, : int(b.response_lengths[i])].tolist() for b, i in samples],
        messages=[b.messages[i] for b, i in samples if b.messages])
    joined.scores = torch.cat([b.scores for b in batches])
    return joined


def conversation_text(messages: list[dict[str, str]]) -> str:
    """An episode's turns for samples.log: the policy's as they are, the environment's marked by role."""
    return "\n".join(m["content"] if m["role"] == "assistant" else f"[{m['role']}] {m['content']}" for m in messages)


def advertised_tools(config: PPOConfig) -> list[dict] | None:
    """The JSON schemas of a tools environment's tools, when chat prompts should advertise them."""
    env = config.environment
    if env is None or not env.tools or not env.advertise_tools:
        return None
    from rollout.tools import tool_schema

    return [tool_schema(spec) for spec in env.tools]


def environment_factory(config: PPOConfig):
    """One fresh environment per episode, from ``config.environment`` (checked now: before any engine starts)."""
    from rollout.environment import environment_factory as factory
    from rollout.environment import resolve_environment
    from rollout.tools import ToolEnvironment

    env = config.environment
    kwargs = dict(env.kwargs)
    if issubclass(resolve_environment(env.name), ToolEnvironment):
        kwargs = {"tools": env.tools, "timeout_s": env.tool_timeout_s, "memory_mb": env.tool_memory_mb, **kwargs}
    elif env.tools:
        raise AlignError(f"environment.tools is set but environment.name={env.name!r} is not a tools environment "
                         "(rollout.tools.ToolEnvironment or a subclass): pass what it needs in environment.kwargs")
    return factory(env.name, kwargs)


def verifier_metrics(correct: list[float], prompt_indices: list[int], n: int) -> dict[str, float]:
    """Held-out accuracy (mean@n: the mean 0/1 verdict over all samples) and unbiased pass@k for
    k = 1, 2, 4, ... <= n, averaged over prompts (:func:`alignment.stats.pass_at_k`)."""
    per_prompt: dict[int, list[float]] = {}
    for index, value in zip(prompt_indices, correct):
        per_prompt.setdefault(index, []).append(value)
    metrics = {"eval/accuracy": sum(correct) / len(correct)}
    for k in [2**i for i in range(n.bit_length()) if 2**i <= n]:
        values = [pass_at_k(len(v), sum(x >= 1.0 for x in v), k) for v in per_prompt.values()]
        metrics[f"eval/pass@{k}"] = sum(values) / len(values)
    return metrics


def reduce_train_metrics(results: list[dict[str, float]], prefix: str) -> dict[str, float]:
    """Rank sums to means: loss per unit, ``*_tsum`` per response token; grad norm and LR of the last update."""
    total = {key: sum(r[key] for r in results) for key in results[0]}
    metrics = {f"{prefix}/loss": total["loss_sum"] / max(total["units"], 1.0)}
    for key, value in total.items():
        if key.endswith("_tsum"):
            metrics[f"{prefix}/{key.removesuffix('_tsum')}"] = value / max(total["tokens"], 1.0)
    metrics[f"{prefix}/grad_norm"] = results[0]["grad_norm"]
    metrics[f"{prefix}/lr"] = results[0]["lr"]
    metrics[f"{prefix}/updates"] = results[0]["updates"]
    return metrics


def run_ppo(config: PPOConfig, resume: bool = False) -> Path:
    """Run `align ppo`; returns the directory of the final policy (a plain HF model)."""
    job = PPOJob(config, resume)
    cfg, timer, run = config, job.timer, job.run
    try:
        start_step, state = 0, run.resume_state()
        if job.resume_from is not None:
            with timer.phase("resume"):
                job.models.load(job.resume_from)
                start_step = state["step"]
                job.kl.load_state_dict(state["kl_controller"])
                job.sync()
            print(f"resumed from {job.resume_from} at step {start_step}")
        groups = ", ".join(f"[{g.name}] x{g.size}" for g in job.models.groups)
        params = ", ".join(f"{role} {n / 1e6:.2f}M" for role, n in job.models.parameters.items())
        print(f"ppo ({cfg.algorithm.advantage}): groups {groups}; {params}; {cfg.rollout.num_engines} {cfg.rollout.backend} "
              f"engine(s); {job.batch_size} samples per step ({cfg.algorithm.prompts_per_step} prompts x {cfg.sampling.n}); "
              f"startup {timer.pop().get('time/startup_s', 0.0):.1f} s")
        tracker = run.open_tracker(start_step, state)
        if start_step == 0 and job.eval_prompts:
            with timer.phase("eval"):
                tracker.log(0, job.evaluate())
            timer.pop()

        def step(number: int) -> dict[str, Any]:
            with timer.phase("generate"):
                batch, metrics = job.rollout(number)
            metrics["rollout/tokens_per_s"] = job.engines.last_stats["tokens_per_s"]
            if not len(batch):  # dynamic sampling found no group with a signal: nothing to train on
                return metrics
            with timer.phase("experience"):
                batch, more = job.experience(batch)
            metrics.update(more)
            with timer.phase("train"):
                metrics.update(job.train(number, batch))
            with timer.phase("sync"):
                metrics.update(job.sync())
            return metrics

        final = run.loop(start_step, cfg.train.max_steps, step, job.write_checkpoint,
                         evaluate=job.evaluate if job.eval_prompts else None, finite=("policy/loss", "critic/loss"),
                         postfix=lambda m: {"score": f"{m['reward/score']:.3f}", "kl": f"{m.get('kl/sequence', 0.0):.3f}",
                                            **({"tools": f"{m['env/tool_use']:.2f}"} if "env/tool_use" in m else {})},
                         after_log=job.write_samples, samples_per_step=job.batch_size, desc="ppo")
        print(f"final policy: {final}\nmetrics: {tracker.path}\nsamples: {job.samples_log}\n"
              f"TensorBoard: tensorboard --logdir {job.output_dir}")
        return final
    finally:
        job.shutdown()
