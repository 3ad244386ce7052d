"""Job configs: pydantic schemas, loaded from YAML with dotted command-line overrides.

Every field carries a one-line description: the schema is the documentation of every knob.
``load_config(SFTConfig, "configs/sft_tiny.yaml", ["train.lr=1e-4"])`` validates everything
before any work starts and raises :class:`AlignError` naming the key and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alignment.errors import AlignError


def align_home() -> Path:
    """Where align keeps caches and default state: ``$ALIGN_HOME``, else ``~/.cache/align``."""
    return Path(os.environ.get("ALIGN_HOME") or Path.home() / ".cache" / "align").expanduser()


CHAT_TEMPLATE_HELP = ("Chat template for conversational (message-list) data: a built-in name ('chatml') or a Jinja "
                      "file; None uses the tokenizer's own. Saved with the tokenizer. Plain-text rows need none.")
CHAT_TEMPLATE_FIELD = Field(None, description=CHAT_TEMPLATE_HELP)


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ClusterConfig(Section):
    address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://host:port'); None starts a local runtime.")
    num_workers: int = Field(2, ge=1, description="Ray actors (ranks) in each model's group.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor; also the torch threads each actor uses.")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per actor (0 on CPU machines).")
    object_store_mb: int = Field(256, ge=64, description="Ray object store size when starting a local runtime.")
    spread_nodes: bool = Field(False, description="Place one group's actors on different nodes (STRICT_SPREAD) instead of packing them.")
    placement_timeout_s: float = Field(120.0, gt=0, description="How long to wait for Ray to find room for a group before failing.")


class StrategyConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage: 0 plain data parallel, 1 optimizer, 2 +gradients, 3 +parameters sharded.")
    dtype: Literal["auto", "fp32", "bf16"] = Field("auto", description="Training precision; auto is bf16 on GPU, fp32 on CPU (bf16 is 4-7x slower on AVX2).")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this value (0 disables).")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: keep optimizer state in CPU memory (stage >= 1).")
    offload_params: bool = Field(False, description="ZeRO-Infinity: keep parameters in CPU memory (stage 3).")
    param_persistence_threshold: int = Field(100_000, ge=0, description="ZeRO-3: parameters smaller than this many elements stay whole on every rank.")
    timeout_minutes: int = Field(30, ge=1, description="torch.distributed timeout for collectives.")

    @model_validator(mode="after")
    def _offload_needs_stage(self) -> StrategyConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("strategy.offload_params needs strategy.zero_stage=3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("strategy.offload_optimizer needs strategy.zero_stage in 1, 2, 3")
        return self


class OptimConfig(Section):
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    scheduler: Literal["constant", "linear", "cosine"] = Field("cosine", description="LR schedule after warm-up.")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Fraction of steps spent warming the LR up linearly from 0.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final LR as a fraction of the peak (linear and cosine).")


class LoRAConfig(Section):
    """LoRA adapters (through PEFT) instead of full fine-tuning; setting the section (even `lora: {}`) enables them."""

    rank: int = Field(8, ge=1, description="Rank r of each adapter: B (out x r) times A (r x in) is added to the frozen weight.")
    alpha: float = Field(16.0, gt=0, description="Scale of the adapter's update: (alpha / rank) * B A.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input while training (the frozen path has none).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names that get adapters (e.g. [q_proj, v_proj]; a name matches a module's "
        "last name part), or all-linear: every linear layer except the output (lm_head).")
    load_in_4bit: bool = Field(False, description="QLoRA: a 4-bit base model (CUDA and bitsandbytes only; refused elsewhere).")

    @model_validator(mode="after")
    def _some_targets(self) -> LoRAConfig:
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("lora.target_modules is empty: list module names or use all-linear")
        return self


LORA_FIELD_HELP = ("LoRA adapters (docs/lora.md); None trains every weight. "
                   "Setting the section, even `lora: {}` or `lora.rank=8`, enables them.")


class TrackingConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard events to <output_dir>/tensorboard.")
    wandb_project: str | None = Field(None, description="Weights & Biases project; None disables W&B.")
    log_every: int = Field(1, ge=1, description="Write metrics every N steps.")
    progress: bool = Field(True, description="Show a progress bar.")


class DataConfig(Section):
    train: str = Field(..., description="Training data: a .jsonl/.json/.parquet file or a local `datasets` directory.")
    eval: str | None = Field(None, description="Held-out data (same formats); None splits eval_fraction off train.")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="Share of train held out when `eval` is None.")
    max_length: int = Field(256, ge=8, description="Sequences are truncated to this many tokens.")
    messages_field: str = Field("messages", description="Column holding chat messages [{role, content}, ...].")
    prompt_field: str = Field("prompt", description="Column holding the prompt when rows are prompt/completion pairs.")
    completion_field: str = Field("completion", description="Column holding the response when rows are prompt/completion pairs.")
    shuffle: bool = Field(True, description="Shuffle the training order each epoch (seeded).")


class TrainConfig(Section):
    micro_batch_size: int = Field(4, ge=1, description="Sequences per forward pass on one rank.")
    global_batch_size: int = Field(16, ge=1, description="Sequences per optimizer step over all ranks (micro x ranks x accumulation).")
    epochs: int = Field(1, ge=1, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    eval_every: int = Field(50, ge=1, description="Evaluate on the held-out split every N steps (and at the end).")
    save_every: int = Field(100, ge=1, description="Write a resumable checkpoint every N steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many most recent checkpoints to keep.")
    seed: int = Field(0, description="Seed for initialisation, data order and sampling.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")


class SFTConfig(Section):
    """Supervised fine-tuning: loss on response tokens of chat or prompt/completion data."""

    model: str = Field(..., description="Local Hugging Face model directory to fine-tune.")
    tokenizer: str | None = Field(None, description="Tokenizer directory; None uses the model's.")
    chat_template: str | None = CHAT_TEMPLATE_FIELD
    output_dir: str = Field(..., description="Where checkpoints, the final model and metrics go.")
    data: DataConfig = Field(..., description="Training and held-out data.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Batching, steps, evaluation and checkpoints.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer and learning-rate schedule.")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig, description="DeepSpeed ZeRO settings.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray cluster and workers per model.")
    lora: LoRAConfig | None = Field(None, description=LORA_FIELD_HELP)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Metrics and progress output.")

    @model_validator(mode="after")
    def _batch_divides(self) -> SFTConfig:
        per_step = self.train.micro_batch_size * self.cluster.num_workers
        if self.train.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size ({self.train.global_batch_size}) must be a multiple of "
                f"train.micro_batch_size x cluster.num_workers ({per_step})"
            )
        return self


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-5"`` -> (["optim", "lr"], 1e-5); the value is parsed as YAML."""
    if "=" not in text:
        raise AlignError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise AlignError(f"override {text!r} has an empty key part")
    return key.split("."), yaml.safe_load(raw) if raw else None


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise AlignError(f"override {'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def describe_validation_error(error: ValidationError, schema: type[BaseModel]) -> str:
    """One readable line per problem, each naming the dotted key and what is allowed."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parent = _section_at(schema, item["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else "?"
            message = f"unknown key; allowed here: {allowed}"
        elif item["type"] == "missing":
            message = "required key is missing"
        if "input" in item and item["type"] not in ("missing", "extra_forbidden") and not isinstance(item["input"], dict):
            message += f" (got {item['input']!r})"
        lines.append(f"{key}: {message}")
    return "invalid config:\n  " + "\n  ".join(lines)


def _section_at(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = schema.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        annotation = next((arg for arg in get_args(annotation) if isinstance(arg, type)), annotation)  # X | None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        schema = annotation
    return schema


def load_config(schema: type[ConfigT], path: str | Path | None, overrides: list[str] = ()) -> ConfigT:
    """Read YAML (optional), apply dotted overrides, validate. Raises AlignError on any problem."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AlignError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise AlignError(f"config file {path} is not valid YAML: {error}") from error
        if not isinstance(tree, dict):
            raise AlignError(f"config file {path} must hold a mapping of keys, not {type(tree).__name__}")
    for text in overrides:
        apply_override(tree, *parse_override(text))
    tree = _expand_home(tree)
    try:
        return schema.model_validate(tree)
    except ValidationError as error:
        raise AlignError(describe_validation_error(error, schema)) from None


def _expand_home(node: Any) -> Any:
    """Replace ``${ALIGN_HOME}`` and a leading ``~`` in string values, so configs stay machine-independent."""
    if isinstance(node, dict):
        return {key: _expand_home(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand_home(value) for value in node]
    if isinstance(node, str):
        node = node.replace("${ALIGN_HOME}", str(align_home()))
        return os.path.expanduser(node) if node.startswith("~") else node
    return node


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (what --print-config shows and what a run saves)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _check_batch_divides(train: TrainConfig, cluster: ClusterConfig) -> None:
    per_step = train.micro_batch_size * cluster.num_workers
    if train.global_batch_size % per_step:
        raise ValueError(
            f"train.global_batch_size ({train.global_batch_size}) must be a multiple of "
            f"train.micro_batch_size x cluster.num_workers ({per_step})"
        )


class PreferenceDataConfig(Section):
    """Preference pairs (prompt/chosen/rejected) or rankings (prompt/responses/ranks), text or conversational."""

    train: str = Field(..., description="Training data: a .jsonl/.json/.parquet file or a local `datasets` directory.")
    eval: str | None = Field(None, description="Held-out data (same formats); None splits eval_fraction off train.")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="Share of train pairs held out when `eval` is None.")
    max_length: int = Field(256, ge=8, description="Prompt plus response are truncated to this many tokens.")
    prompt_field: str = Field("prompt", description="Column with the prompt: text, or a list of {role, content} messages.")
    chosen_field: str = Field("chosen", description="Column with the preferred response (text or assistant messages).")
    rejected_field: str = Field("rejected", description="Column with the dispreferred response.")
    responses_field: str = Field("responses", description="Ranking rows: column with the list of K responses.")
    ranks_field: str = Field("ranks", description="Ranking rows: column with each response's rank (1 = best; ties give no pair).")
    margin_field: str | None = Field(None, description="Optional column with a per-pair margin (reward models only).")
    shuffle: bool = Field(True, description="Shuffle the training order each epoch (seeded).")
    share_prefix: bool = Field(True, description="One row per pair: chosen, then rejected's tokens after their common "
                               "prefix (the prompt), which is computed once (4D attention mask, own positions); false = "
                               "one padded row per sequence (attention implementations without custom masks, or short "
                               "prompts with long responses, where attention over the whole row costs more than it saves).")


class DPOLossConfig(Section):
    loss_type: Literal["sigmoid", "cdpo", "ipo", "simpo"] = Field(
        "sigmoid", description="sigmoid = DPO; cdpo = DPO with label smoothing; ipo; simpo = reference-free, length-normalised.")
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward (IPO: the regulariser tau).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO / SimPO: assumed probability that a label is flipped.")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target reward margin gamma.")
    nll_coef: float = Field(0.0, ge=0, description="Weight of an extra per-token NLL term on the chosen response (0 disables).")
    precompute_ref_logps: bool = Field(False, description="Compute reference log-probs once before training and free the reference.")
    reference: str | None = Field(None, description="Reference model directory; None uses `model` (the usual choice).")


class DPOConfig(Section):
    """Direct preference optimisation (DPO, cDPO, IPO, SimPO) of a causal LM against a frozen reference."""

    model: str = Field(..., description="Local Hugging Face model directory to train (the policy).")
    tokenizer: str | None = Field(None, description="Tokenizer directory; None uses the model's.")
    chat_template: str | None = CHAT_TEMPLATE_FIELD
    output_dir: str = Field(..., description="Where checkpoints, the final model and metrics go.")
    data: PreferenceDataConfig = Field(..., description="Preference pairs or rankings.")
    dpo: DPOLossConfig = Field(default_factory=DPOLossConfig, description="Loss type and its parameters.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Batching (in pairs), steps, evaluation, checkpoints.")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=5e-6), description="Optimizer and learning-rate schedule.")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig, description="DeepSpeed ZeRO settings (policy and reference).")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray cluster and workers; the reference shares them.")
    lora: LoRAConfig | None = Field(None, description=LORA_FIELD_HELP)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Metrics and progress output.")

    @model_validator(mode="after")
    def _batch_divides(self) -> DPOConfig:
        _check_batch_divides(self.train, self.cluster)
        return self


class FeedbackDataConfig(Section):
    """Unpaired feedback for KTO: TRL's unpaired format, one judged answer per row."""

    train: str = Field(..., description="Training data: a .jsonl/.json/.parquet file or a local `datasets` directory.")
    eval: str | None = Field(None, description="Held-out data (same formats); None splits eval_fraction off train.")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="Share of train rows held out when `eval` is None.")
    max_length: int = Field(256, ge=8, description="Prompt plus completion are truncated to this many tokens.")
    prompt_field: str = Field("prompt", description="Column with the prompt: text, or a list of {role, content} messages.")
    completion_field: str = Field("completion", description="Column with the judged answer (text or assistant messages).")
    label_field: str = Field("label", description="Column with true (desirable) or false (undesirable).")
    chosen_field: str = Field("chosen", description="Pair rows are unpaired: this column's answer is desirable ...")
    rejected_field: str = Field("rejected", description="... and this one's undesirable (TRL's unpair_preference_dataset).")
    shuffle: bool = Field(True, description="Shuffle the training order each epoch (seeded).")


class KTOLossConfig(Section):
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(
        "kto", description="kto (Ethayarajh et al. 2024) or apo_zero_unpaired (no KL reference point).")
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward log pi/pi_ref.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight w_D of desirable examples' losses.")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight w_U of undesirable examples' losses "
                                      "(KTO's paper: keep w_D n_D / (w_U n_U) in [1, 4/3]).")
    precompute_ref_logps: bool = Field(False, description="Compute reference log-probs once before training and free the reference.")
    reference: str | None = Field(None, description="Reference model directory; None uses `model` (the usual choice).")


class KTOConfig(Section):
    """KTO: the policy learns from answers judged desirable or undesirable one at a time (no pairs)."""

    model: str = Field(..., description="Local Hugging Face model directory to train (the policy).")
    tokenizer: str | None = Field(None, description="Tokenizer directory; None uses the model's.")
    chat_template: str | None = CHAT_TEMPLATE_FIELD
    output_dir: str = Field(..., description="Where checkpoints, the final model and metrics go.")
    data: FeedbackDataConfig = Field(..., description="Rows of prompt, completion and a desirable/undesirable label.")
    kto: KTOLossConfig = Field(default_factory=KTOLossConfig, description="Loss type and its parameters.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Batching (in rows), steps, evaluation, checkpoints.")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=5e-6), description="Optimizer and learning-rate schedule.")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig, description="DeepSpeed ZeRO settings (policy and reference).")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray cluster and workers; the reference shares them.")
    lora: LoRAConfig | None = Field(None, description=LORA_FIELD_HELP)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Metrics and progress output.")

    @model_validator(mode="after")
    def _batch_divides(self) -> KTOConfig:
        _check_batch_divides(self.train, self.cluster)
        if self.kto.loss_type == "kto" and self.train.global_batch_size < 2:
            raise ValueError("kto.loss_type kto estimates its KL term from the other rows of each batch: "
                             "train.global_batch_size must be at least 2")
        return self


class RewardLossConfig(Section):
    center_coef: float = Field(0.0, ge=0, description="Reward centring: weight of (r_chosen + r_rejected)^2 (0 disables).")
    use_margin: bool = Field(False, description="Subtract the per-pair margin from data.margin_field inside the sigmoid.")


class RMConfig(Section):
    """Bradley-Terry reward model: a causal-LM backbone with a scalar head, trained on preference pairs or rankings."""

    model: str = Field(..., description="Local Hugging Face causal-LM directory for the backbone.")
    tokenizer: str | None = Field(None, description="Tokenizer directory; None uses the model's.")
    chat_template: str | None = CHAT_TEMPLATE_FIELD
    output_dir: str = Field(..., description="Where checkpoints, the final reward model and metrics go.")
    data: PreferenceDataConfig = Field(..., description="Preference pairs or rankings.")
    reward: RewardLossConfig = Field(default_factory=RewardLossConfig, description="Loss options.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Batching (in pairs), steps, evaluation, checkpoints.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer and learning-rate schedule.")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig, description="DeepSpeed ZeRO settings.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray cluster and workers.")
    lora: LoRAConfig | None = Field(None, description=LORA_FIELD_HELP)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Metrics and progress output.")

    @model_validator(mode="after")
    def _batch_divides(self) -> RMConfig:
        _check_batch_divides(self.train, self.cluster)
        if self.reward.use_margin and not self.data.margin_field:
            raise ValueError("reward.use_margin needs data.margin_field (the column holding each pair's margin)")
        return self
