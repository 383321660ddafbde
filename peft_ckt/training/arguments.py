"""Arguments of a CKT training run, and their command-line flags (`peft-ckt train`, `examples/train_ckt.py`)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
SCHEDULER_CHOICES = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")

# Named optimisation recipes (`--recipe`): values of CKTTrainingArguments fields. Flags given explicitly win.
RECIPES: dict[str, dict[str, Any]] = {
    # The authors' training script (CKT-WAM): AdamW betas (0.9, 0.95), eps 1e-8, adapter lr 3e-4, weight decay 0.01,
    # linear warm-up over 1,000 of 100,000 iterations then cosine to 0, gradient clipping at 1.0, bf16 autocast.
    "paper": {
        "learning_rate": 3e-4,
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-8,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.01,
        "mixed_precision": "bf16",
    },
}
_RECIPE_FIELDS = frozenset(name for recipe in RECIPES.values() for name in recipe)


@dataclass
class CKTTrainingArguments:
    """Everything a CKT training run needs besides the models and the data.

    The optimizer steps counted here are optimizer updates: one step consumes `gradient_accumulation_steps`
    micro-batches of `per_device_batch_size` samples on every process.
    """

    output_dir: str = field(
        default="outputs/ckt",
        metadata={"help": "Folder for the final adapter, checkpoints (checkpoints/), logs (logs/) and metrics.jsonl."},
    )
    preset: Optional[str] = field(
        default=None,
        metadata={
            "help": "Named setup that builds teacher, student, CKT config and data, e.g. 'tiny' (tiny diffusers Wan "
            "teacher -> Cosmos student on a small synthetic moving-blob set; runs on a laptop CPU)."
        },
    )
    recipe: Optional[str] = field(
        default=None,
        metadata={
            "help": f"Named optimisation recipe ({', '.join(RECIPES)}): 'paper' is the authors' (AdamW betas (0.9, 0.95), "
            "lr 3e-4, 1%% warm-up then cosine, bf16). Flags given explicitly override it; fields left at their "
            "defaults take the recipe's values."
        },
    )
    # ----------------------------------------------------------------------------------------------- schedule
    max_steps: int = field(default=200, metadata={"help": "Number of optimizer steps to train for."})
    per_device_batch_size: int = field(default=8, metadata={"help": "Samples per micro-batch on each process."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches whose gradients are accumulated into one optimizer step."}
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of the adapter branches."})
    router_learning_rate: Optional[float] = field(
        default=None, metadata={"help": "Peak learning rate of the router (default: --learning-rate)."}
    )
    weight_decay: float = field(
        default=0.01,
        metadata={
            "help": "AdamW weight decay of weight matrices. Biases, norms, learned queries, the separator token and "
            "the router noise scale get none."
        },
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip the global gradient norm to this value (0 disables clipping)."}
    )
    lr_scheduler: str = field(
        default="cosine",
        metadata={"help": f"Learning-rate schedule after warm-up (transformers.get_scheduler): {SCHEDULER_CHOICES}."},
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "Linear warm-up steps (overrides --warmup-ratio when > 0)."}
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "Warm-up as a fraction of --max-steps."})
    # ----------------------------------------------------------------------------------------------- precision, seed
    mixed_precision: Optional[str] = field(
        default=None,
        metadata={
            "help": f"{MIXED_PRECISION_CHOICES}; default: the `accelerate config` / `accelerate launch` setting. The "
            "adapter weights stay fp32; the forward runs under autocast."
        },
    )
    teacher_dtype: Optional[str] = field(
        default=None,
        metadata={
            "help": "Cast the frozen teacher to this dtype (fp32, fp16, bf16) to save memory; default: unchanged."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, data order, noise and dropout."})
    full_determinism: bool = field(
        default=False,
        metadata={"help": "Also force deterministic kernels (torch.use_deterministic_algorithms); slower on GPU."},
    )
    # ----------------------------------------------------------------------------------------------- checkpoints
    checkpointing_steps: int = field(
        default=50,
        metadata={
            "help": "Save the full training state (adapter, optimizer, scheduler, RNG) every N steps (0: never)."
        },
    )
    checkpoints_total_limit: Optional[int] = field(
        default=2, metadata={"help": "Keep only the newest N checkpoints (0 keeps all)."}
    )
    resume: Optional[str] = field(
        default=None,
        metadata={
            "help": "Resume from a checkpoint: a checkpoint folder, or 'latest' (the newest under "
            "OUTPUT_DIR/checkpoints; starts fresh when there is none). A bare --resume means 'latest'."
        },
    )
    # ----------------------------------------------------------------------------------------------- logging
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every N optimizer steps."})
    report_to: str = field(
        default="tensorboard",
        metadata={"help": "Accelerate tracker(s), comma separated: tensorboard, wandb, ... or 'none'."},
    )
    project_name: str = field(default="ckt", metadata={"help": "Run name used by the trackers."})
    progress_bar: bool = field(default=True, metadata={"help": "Show a progress bar (main process only)."})
    # ----------------------------------------------------------------------------------------------- data
    teacher_cache: Optional[str] = field(
        default=None,
        metadata={
            "help": "Train from precomputed teacher features (a folder written by `peft-ckt cache-teacher`): the "
            "teacher is not loaded."
        },
    )
    num_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Size of the preset's dataset (the tiny preset's synthetic set: 256)."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    # ----------------------------------------------------------------------------------------------- CKT overrides
    num_context_tokens: Optional[int] = field(default=None, metadata={"help": "Override K of the preset's CKTConfig."})
    num_experts: Optional[int] = field(default=None, metadata={"help": "Override M of the preset's CKTConfig."})
    top_k: Optional[int] = field(default=None, metadata={"help": "Override top-k of the preset's CKTConfig."})
    adapter_dropout: Optional[float] = field(
        default=None, metadata={"help": "Override the adapter dropout of the preset's CKTConfig."}
    )
    attention_dropout: Optional[float] = field(
        default=None, metadata={"help": "Override the attention-weight dropout of the preset's CKTConfig."}
    )
    router_noise: Optional[bool] = field(
        default=None, metadata={"help": "Override the router noise (--router-noise / --no-router-noise)."}
    )
    load_balance_weight: Optional[float] = field(
        default=None,
        metadata={
            "help": "Override the load-balancing loss weight of the preset's CKTConfig (0: the paper's 'no "
            "auxiliary loss' ablation)."
        },
    )
    use_generalized_adapter: Optional[bool] = field(
        default=None,
        metadata={"help": "--no-use-generalized-adapter: the paper's 'no generalized adapter' ablation."},
    )
    use_specialized_adapters: Optional[bool] = field(
        default=None,
        metadata={"help": "--no-use-specialized-adapters: the paper's 'no specialized adapters' ablation."},
    )
    # ----------------------------------------------------------------------------------------------- testing aid
    stop_after_steps: Optional[int] = field(
        default=None,
        metadata={
            "help": "Stop abruptly after this many optimizer steps, without saving (simulates a killed job; the "
            "schedule still targets --max-steps). For testing --resume."
        },
    )

    def __post_init__(self) -> None:
        if self.recipe is not None:
            if self.recipe not in RECIPES:
                raise ValueError(f"Unknown --recipe {self.recipe!r}; available: {sorted(RECIPES)}.")
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name, value in RECIPES[self.recipe].items():
                if getattr(self, name) == defaults[name]:  # left at its default: the recipe decides
                    setattr(self, name, value)
        if self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}.")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}.")
        if self.router_learning_rate is not None and not self.router_learning_rate > 0:
            raise ValueError(f"--router-learning-rate must be > 0, got {self.router_learning_rate}.")
        if self.per_device_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("--per-device-batch-size and --gradient-accumulation-steps must be >= 1.")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(
                f"--mixed-precision must be one of {MIXED_PRECISION_CHOICES}, got {self.mixed_precision!r}."
            )
        if self.lr_scheduler not in SCHEDULER_CHOICES:
            raise ValueError(f"--lr-scheduler must be one of {SCHEDULER_CHOICES}, got {self.lr_scheduler!r}.")
        if self.teacher_dtype is not None and self.teacher_dtype not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"--teacher-dtype must be fp32, fp16 or bf16, got {self.teacher_dtype!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.checkpointing_steps < 0 or self.logging_steps < 1:
            raise ValueError("--checkpointing-steps must be >= 0 and --logging-steps >= 1.")

    @property
    def num_warmup_steps(self) -> int:
        return self.warmup_steps if self.warmup_steps > 0 else int(self.warmup_ratio * self.max_steps)

    @property
    def trackers(self) -> list[str]:
        names = [name.strip() for name in self.report_to.split(",") if name.strip()]
        return [] if names in ([], ["none"]) else names

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------- argparse
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    if get_origin(annotation) is Union:
        non_none = [arg for arg in get_args(annotation) if arg is not type(None)]
        return non_none[0] if len(non_none) == 1 else str
    return annotation


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Adds one `--kebab-case` flag per dataclass field, with the field's `help` and default."""
    hints = get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if cls is CKTTrainingArguments and f.name in _RECIPE_FIELDS:
            # Absent from the namespace unless given, so that a recipe never overrides an explicit flag.
            suffix = f" (default: {default}, or the --recipe's)" if default is not None else " (or the --recipe's)"
            extra_default: dict[str, Any] = {"default": argparse.SUPPRESS}
        else:
            suffix, extra_default = None, {"default": default}
        help_text = f.metadata.get("help", "")
        group = groups.setdefault("args", parser)
        if kind is bool:
            group.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                help=help_text + (suffix or (f" (default: {default})" if default is not None else "")),
                **extra_default,
            )
        elif f.name == "resume":
            group.add_argument(
                _flag(f.name),
                dest=f.name,
                nargs="?",
                const="latest",
                default=default,
                metavar="CHECKPOINT",
                help=help_text,
            )
        else:
            extra: dict[str, Any] = {}
            if f.name == "mixed_precision":
                extra["choices"] = MIXED_PRECISION_CHOICES
            elif f.name == "lr_scheduler":
                extra["choices"] = SCHEDULER_CHOICES
            elif f.name == "teacher_dtype":
                extra["choices"] = ("fp32", "fp16", "bf16")
            elif f.name == "recipe" and cls is CKTTrainingArguments:
                extra["choices"] = tuple(RECIPES)
            group.add_argument(
                _flag(f.name),
                dest=f.name,
                type=kind if kind in (int, float) else str,
                metavar=f.name.upper(),
                help=help_text + (suffix or (" (default: %(default)s)" if default is not None else "")),
                **extra_default,
                **extra,
            )


def arguments_from_namespace(namespace: argparse.Namespace, cls: type = CKTTrainingArguments):
    """Builds the dataclass from a parsed namespace (unknown attributes, e.g. `func`, are ignored). With a recipe,
    its values fill the fields whose flags were not given; explicit flags win even when equal to the defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {key: value for key, value in vars(namespace).items() if key in names}
    recipe = values.get("recipe")
    if cls is not CKTTrainingArguments or recipe is None or recipe not in RECIPES:
        return cls(**values)
    # The recipe is resolved here, against what was given; the dataclass must not re-apply it to explicit flags
    # that happen to equal the defaults.
    args = cls(**{**RECIPES[recipe], **values, "recipe": None})
    args.recipe = recipe
    return args


def build_train_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        description="Train a CKT adapter with Accelerate (single GPU, DDP, FSDP, DeepSpeed: see docs/training.md)."
    )
    add_dataclass_arguments(parser, CKTTrainingArguments)
    return parser
