"""`align ppo` config: models and where they run, rollout, rewards, KL, the algorithm and its updates."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from alignment.config import (
    CHAT_TEMPLATE_HELP,
    LORA_FIELD_HELP,
    ClusterConfig,
    LoRAConfig,
    OptimConfig,
    Section,
    StrategyConfig,
    TrackingConfig,
)
from rollout.config import EnvironmentConfig, RolloutConfig, SamplingConfig

Role = Literal["actor", "critic", "reference", "reward"]
ROLES: tuple[Role, ...] = ("actor", "critic", "reference", "reward")
GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce_pp_baseline")
SEQUENCE_ESTIMATORS = ("grpo", "rloo")  # one advantage per sequence

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "dapo": {"algorithm": {"advantage": "grpo", "clip_low": 0.2, "clip_high": 0.28, "loss_aggregation": "token",
                           "dynamic_sampling": True},
             "kl": {"coef": 0.0}},
    "dr_grpo": {"algorithm": {"advantage": "grpo", "grpo_scale": False, "loss_aggregation": "constant"}},
    "gspo": {"algorithm": {"advantage": "grpo", "importance_ratio": "sequence", "loss_aggregation": "sequence",
                           "clip_low": 3e-4, "clip_high": 4e-4}},
}


class PromptDataConfig(Section):
    """Prompts to roll out from (text or chat messages), one JSON object per line."""

    train: str = Field(..., description="JSONL/JSON/Parquet file or `datasets` directory of training prompts.")
    eval: str | None = Field(None, description="Held-out prompts scored every `train.eval_every` steps (None: no eval).")
    prompt_field: str = Field("prompt", description="Column holding each row's prompt: text or [{role, content}, ...].")
    max_eval_prompts: int | None = Field(64, ge=1, description="Use at most this many held-out prompts.")
    shuffle: bool = Field(True, description="Shuffle the prompt order each epoch (seeded).")


class RewardSourcesConfig(Section):
    """What the policy is rewarded by: a learned reward model and/or reward functions, summed."""

    model: str | None = Field(None, description="Reward model directory from `align rm` (a scalar-head model); None: functions only.")
    functions: list[str] = Field(default_factory=list, description="Reward functions: `module:function` paths or http(s):// endpoints; each score is added.")
    clip: float | None = Field(None, gt=0, description="Clip the summed score to [-clip, clip] (None disables).")
    missing_eos_penalty: float | None = Field(None, description="Subtract this from the score of responses cut off before EOS.")
    gold: str | None = Field(None, description="A `module:function` judge reported as reward/gold and eval/gold; never trained on.")
    verifier: str | None = Field(None, description="A 0/1 correctness check (e.g. `math_answer`) reported as accuracy, pass@k and greedy accuracy; never trained on (list it in `functions` to train on it).")
    overlong_buffer: int | None = Field(None, ge=1, description="DAPO's soft overlong penalty: responses longer than sampling.max_tokens - this lose up to `overlong_factor` linearly (None disables).")
    overlong_factor: float = Field(1.0, ge=0, description="The overlong penalty at sampling.max_tokens tokens.")
    mask_truncated: bool = Field(False, description="DAPO's overlong filtering: responses cut at sampling.max_tokens count in their group's baseline but not in the loss.")
    max_length: int = Field(256, ge=8, description="Prompt + response tokens the reward model reads.")


class KLConfig(Section):
    """The KL(policy || reference) term: an estimator, a coefficient, and where it enters."""

    coef: float = Field(0.05, ge=0, description="KL coefficient (the initial one when `target` is set); 0 drops the reference model.")
    estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token estimator: k1 = log ratio, k2 = half its square, k3 = exp(-r) - 1 + r.")
    use_in: Literal["reward", "loss"] = Field("reward", description="Subtract it from the reward (classic PPO) or add it to the policy loss (GRPO).")
    target: float | None = Field(None, gt=0, description="Adaptive controller: steer the per-sequence KL towards this value (None: fixed coef).")
    horizon: int = Field(10_000, ge=1, description="Adaptive controller horizon, in samples.")


class AlgorithmConfig(Section):
    """Advantage estimator, losses, and how each rollout batch is trained on."""

    advantage: Literal["gae", "grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = Field(
        "gae", description="gae (PPO with a critic); group baselines without a critic: grpo, rloo, reinforce_pp, reinforce_pp_baseline.")
    prompts_per_step: int = Field(16, ge=1, description="Prompts rolled out per step (each sampled sampling.n times).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    mini_batch_size: int = Field(32, ge=1, description="Sequences per optimizer step (over all ranks).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount factor.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_low: float = Field(0.2, ge=0, lt=1, description="Policy ratio clip below 1 (1 - clip_low).")
    clip_high: float = Field(0.2, ge=0, description="Policy ratio clip above 1 (1 + clip_high; raise it for DAPO's clip-higher).")
    dual_clip: float | None = Field(None, gt=1, description="Dual-clip bound c > 1 on negative-advantage tokens (None disables).")
    value_clip: float | None = Field(0.2, gt=0, description="Clip value updates to +-this around the old values (None disables).")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight in the policy loss.")
    loss_aggregation: Literal["token", "sequence", "constant"] = Field(
        "token", description="token: every response token weighs the same (DAPO); sequence: every response does (GRPO, GSPO); "
                             "constant: token sums over sampling.max_tokens per response (Dr. GRPO).")
    importance_ratio: Literal["token", "sequence"] = Field(
        "token", description="token: PPO's per-token ratio; sequence: GSPO's length-normalised sequence ratio, clipped per sequence (needs a group estimator).")
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose rewards are all equal and sample more prompts until the batch is full.")
    max_sampling_rounds: int = Field(4, ge=1, description="Dynamic sampling: at most this many extra rollout rounds per step; then kept groups repeat to fill the batch.")
    tis_cap: float | None = Field(2.0, gt=0, description="Truncated importance sampling: weight each token's loss by min(pi_trainer / pi_engine, cap) against the rollout engine's log-prob mismatch (None disables).")
    mismatch_mask: float | None = Field(None, gt=1, description="Leave out of the loss sequences whose length-normalised trainer/engine ratio is above this or below its inverse (None disables).")
    whiten_advantages: bool = Field(True, description="Normalise advantages over the batch (gae and rloo; grpo and reinforce_pp normalise their own).")
    critic_warmup_steps: int = Field(0, ge=0, description="Train only the critic for this many first steps.")
    grpo_scale: bool = Field(True, description="GRPO: divide by the group's standard deviation (False: Dr. GRPO's mean-only baseline).")


class PPOTrainConfig(Section):
    """Steps, micro-batching, evaluation and checkpoints."""

    max_steps: int = Field(50, ge=1, description="Rollout-and-train steps.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward pass on one rank.")
    share_prompts: bool = Field(False, description="The samples of one prompt share one row in the trainer's forwards: "
                                "the prompt computed once, no padding between responses (False: one padded row per sample).")
    eval_every: int = Field(10, ge=1, description="Score held-out prompts every N steps (also before step 1 and at the end).")
    eval_samples: int = Field(2, ge=1, description="Samples per held-out prompt (fixed seed).")
    save_every: int = Field(10, ge=1, description="Write a resumable whole-job checkpoint every N steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many most recent checkpoints to keep.")
    seed: int = Field(0, description="Seed for prompt order, sampling and minibatch order.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory (actor and critic).")
    samples_to_log: int = Field(2, ge=0, description="Responses per step written to samples.log.")


class PPOConfig(Section):
    """`align ppo`: RLHF with PPO (actor + critic) or a group baseline (GRPO, RLOO, REINFORCE++)."""

    preset: Literal["dapo", "dr_grpo", "gspo"] | None = Field(
        None, description="Defaults of a published recipe; any key set explicitly wins. dapo: grpo, clip 0.2/0.28, token loss, "
                          "dynamic sampling, overlong penalty over the last quarter of sampling.max_tokens, no KL; dr_grpo: "
                          "grpo without std scaling, constant-length loss; gspo: grpo with GSPO's sequence ratio, clip 3e-4/4e-4.")
    model: str = Field(..., description="Local Hugging Face causal-LM directory: the initial policy (actor).")
    reference: str | None = Field(None, description="Reference model for the KL term; None uses `model`.")
    critic: str | None = Field(None, description="Critic initialisation (a token-value head is added); None uses reward.model, else `model`.")
    tokenizer: str | None = Field(None, description="Tokenizer directory; None uses the model's.")
    chat_template: str | None = Field(None, description=CHAT_TEMPLATE_HELP + " The reward model keeps its own template; this one fills in where it has none.")
    output_dir: str = Field(..., description="Where checkpoints, the final policy, metrics and samples go.")
    data: PromptDataConfig = Field(..., description="Training and held-out prompts.")
    reward: RewardSourcesConfig = Field(default_factory=RewardSourcesConfig, description="Reward model, reward functions, gold judge.")
    kl: KLConfig = Field(default_factory=KLConfig, description="KL penalty to the reference.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Advantage estimator, losses, epochs and minibatches.")
    train: PPOTrainConfig = Field(default_factory=PPOTrainConfig, description="Steps, micro-batches, evaluation and checkpoints.")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n=4, max_tokens=64), description="Rollout sampling (n samples per prompt; top_p 1 and top_k 0 so the trainer can recompute log-probs).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout engines (vLLM by default).")
    environment: EnvironmentConfig | None = Field(None, description="Multi-turn rollouts in an environment (tool calls, games); None: one response per prompt.")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-5, scheduler="constant"), description="Actor optimizer.")
    critic_optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=5e-5, scheduler="constant"), description="Critic optimizer.")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig, description="DeepSpeed settings of every model (inference models use ZeRO-0 unless stage 3).")
    role_strategies: dict[Role, StrategyConfig] = Field(default_factory=dict, description="Per-model DeepSpeed settings overriding `strategy`, e.g. {critic: {zero_stage: 3}}.")
    colocate: list[list[Role]] = Field(
        default_factory=lambda: [list(ROLES)],
        description="Models that share one group of processes (a list of lists); a model in no list gets its own group, placed on the same devices.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray cluster; ranks per model group.")
    lora: LoRAConfig | None = Field(None, description=LORA_FIELD_HELP + " Adapters on the actor and the critic (its value "
                                    "head trains whole); the reference is then the actor with its adapters disabled "
                                    "unless `reference` names another model.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Metrics and progress output.")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill in the preset's settings wherever the config leaves them unset."""
        if not isinstance(data, dict) or not data.get("preset"):
            return data
        name = data["preset"]
        if name not in PRESETS:
            return data  # the field's own validation names the allowed presets
        data = dict(data)
        settings = {section: dict(values) for section, values in PRESETS[name].items()}
        if name == "dapo":
            sampling = data.get("sampling") if isinstance(data.get("sampling"), dict) else {}
            settings["reward"] = {"overlong_buffer": max(1, int(sampling.get("max_tokens", 64)) // 4)}
        for section, values in settings.items():
            given = data.get(section, {})
            if isinstance(given, dict):
                data[section] = {**values, **given}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PPOConfig:
        algo, n = self.algorithm, self.sampling.n
        batch = algo.prompts_per_step * n
        per_step = self.train.micro_batch_size * self.cluster.num_workers
        if batch % algo.mini_batch_size:
            raise ValueError(f"algorithm.prompts_per_step x sampling.n ({batch}) must be a multiple of algorithm.mini_batch_size ({algo.mini_batch_size})")
        if algo.mini_batch_size % per_step:
            raise ValueError(f"algorithm.mini_batch_size ({algo.mini_batch_size}) must be a multiple of train.micro_batch_size x cluster.num_workers ({per_step})")
        if algo.advantage in GROUP_ESTIMATORS and n < 2:
            raise ValueError(f"algorithm.advantage={algo.advantage} compares samples of the same prompt: sampling.n must be at least 2")
        if self.sampling.top_p < 1 or self.sampling.top_k:
            raise ValueError("sampling.top_p must be 1 and sampling.top_k 0: the trainer recomputes log-probs of the full softmax")
        if self.sampling.temperature <= 0:
            raise ValueError("sampling.temperature must be > 0 (greedy rollouts give no policy gradient signal)")
        if algo.importance_ratio == "sequence" and algo.advantage not in SEQUENCE_ESTIMATORS:
            raise ValueError(f"algorithm.importance_ratio=sequence (GSPO) needs one advantage per sequence: "
                             f"algorithm.advantage must be one of {', '.join(SEQUENCE_ESTIMATORS)} (got {algo.advantage})")
        if algo.dynamic_sampling and algo.advantage not in GROUP_ESTIMATORS:
            raise ValueError(f"algorithm.dynamic_sampling drops groups of equal rewards: algorithm.advantage must be one "
                             f"of {', '.join(GROUP_ESTIMATORS)} (got {algo.advantage})")
        if self.environment is not None and algo.advantage not in SEQUENCE_ESTIMATORS:
            raise ValueError(f"environment: multi-turn episodes are scored as a whole, so algorithm.advantage must be "
                             f"one of {', '.join(SEQUENCE_ESTIMATORS)} (got {algo.advantage})")
        buffer = self.reward.overlong_buffer
        if buffer is not None and buffer > self.sampling.max_tokens:
            raise ValueError(f"reward.overlong_buffer ({buffer}) must be at most sampling.max_tokens ({self.sampling.max_tokens})")
        if not self.reward.model and not self.reward.functions and self.environment is None:
            raise ValueError("reward: set reward.model and/or reward.functions, or an environment (something must score the responses)")
        if self.rollout.lora_sync == "adapter" and (self.lora is None or self.rollout.backend != "vllm"):
            raise ValueError("rollout.lora_sync=adapter sends the actor's LoRA adapter to vLLM: it needs a `lora` "
                             f"section and rollout.backend=vllm (got lora={'set' if self.lora else 'None'}, "
                             f"backend={self.rollout.backend}); allowed: merged, adapter")
        seen = [role for group in self.colocate for role in group]
        if len(seen) != len(set(seen)):
            raise ValueError(f"colocate: a model appears in two groups: {self.colocate}")
        return self

    @property
    def roles(self) -> list[Role]:
        """The models this job runs: the actor always; the critic for GAE; reference and reward when used."""
        roles: list[Role] = ["actor"]
        if self.algorithm.advantage == "gae":
            roles.append("critic")
        if self.kl.coef > 0:
            roles.append("reference")
        if self.reward.model:
            roles.append("reward")
        return roles

    @property
    def kl_in_loss(self) -> bool:
        """The KL to the reference is a term of the policy loss (``kl.use_in=loss``), not of the reward."""
        return self.kl.use_in == "loss" and "reference" in self.roles

    @property
    def reference_is_actor(self) -> bool:
        """LoRA without another reference named: the reference is the actor with its adapters disabled."""
        return self.lora is not None and self.reference is None and "reference" in self.roles

    def groups(self) -> list[list[Role]]:
        """The process groups: each colocate list (restricted to the roles in use), then one per other role.
        A reference that is the actor's base (LoRA) lives with the actor, wherever ``colocate`` puts it."""
        used = [r for r in self.roles if not (r == "reference" and self.reference_is_actor)]
        groups = [[r for r in group if r in used] for group in self.colocate]
        groups = [g for g in groups if g]
        placed = {r for g in groups for r in g}
        groups = groups + [[r] for r in used if r not in placed]
        if self.reference_is_actor:
            groups = [[*g, "reference"] if "actor" in g else g for g in groups]
        return groups

    @property
    def response_budget(self) -> int:
        """Most response tokens of one sample: a turn's sampling.max_tokens, or an episode's environment budget."""
        return self.environment.max_total_tokens if self.environment else self.sampling.max_tokens

    def strategy_for(self, role: Role) -> StrategyConfig:
        return self.role_strategies.get(role, self.strategy)

    def critic_init(self) -> str:
        return self.critic or self.reward.model or self.model
