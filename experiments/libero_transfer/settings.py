"""The settings of the LIBERO transfer experiment: everything that decides its result."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from peft_ckt.libero.perturbations import PERTURBATIONS

# The library's perturbation kinds, in its order (the report's columns and the collection order follow it).
PERTURBATION_KINDS = PERTURBATIONS
POLICIES = ("teacher", "student", "student+lora", "student+ckt")
ABLATIONS = ("no_specialized", "no_generalized", "no_auxiliary_loss")  # `make demo ABLATIONS=1`


def ablation_policy(name: str) -> str:
    return f"student+ckt ({name.replace('_', ' ')})"


# Fields that must be >= 1 and >= 0 (the others are checked one by one in `__post_init__`).
_POSITIVE = (
    "image_size", "image_stride", "teacher_clean_episodes", "student_episodes", "target_episodes", "teacher_layers",
    "teacher_heads", "student_layers", "student_heads", "head_dim", "text_dim", "future_pool", "batch_size",
    "teacher_steps", "student_steps", "adapter_steps", "num_context_tokens", "num_experts", "top_k", "bottleneck_dim",
    "eval_episodes", "eval_max_steps", "n_action_steps", "heldout_samples",
)  # fmt: skip
_NON_NEGATIVE = (
    "seed", "teacher_perturbed_episodes", "heldout_init", "lora_rank", "adapter_seed", "eval_init_offset", "workers",
)  # fmt: skip
_LEARNING_RATES = ("teacher_lr", "student_lr", "ckt_lr", "lora_lr")
_TASK_LISTS = ("teacher_tasks", "student_tasks", "heldout_tasks", "eval_tasks")


@dataclass
class TransferSettings:
    """Everything that decides the experiment's result (the cache keys hash the parts each stage depends on).

    Data: init states 0.. for training, `heldout_init` for the offline set, `eval_init_offset..` for rollouts.
    """

    suite: str = field(default="libero_object", metadata={"help": "LIBERO suite of every task."})
    image_size: int = field(default=32, metadata={"help": "Camera images and the WAMs' frames (a multiple of 8)."})
    image_stride: int = field(
        default=8,
        metadata={"help": "Cameras rendered every Nth control step during collection (rendering dominates its cost)."},
    )
    severity: int = field(default=3, metadata={"help": "Perturbation severity (1-5)."})
    seed: int = field(default=0, metadata={"help": "Seed of collection, pretraining and rollouts."})
    # ----------------------------------------------------------------------------------------------- data
    teacher_tasks: tuple[int, ...] = field(
        default=(0, 1, 2, 3), metadata={"help": "Tasks of the teacher's broad pretraining set."}
    )
    teacher_clean_episodes: int = field(default=3, metadata={"help": "Clean teacher demonstrations per task."})
    teacher_perturbed_episodes: int = field(
        default=2, metadata={"help": "Teacher demonstrations per task under each perturbation."}
    )
    student_episodes: int = field(default=5, metadata={"help": "Student demonstrations per task."})
    student_tasks: tuple[int, ...] = field(
        default=(4, 5, 6, 7, 8, 9),
        metadata={
            "help": "Tasks of the student's narrow pretraining: by default the other six libero_object tasks, so the "
            "evaluated tasks, their objects' words and their perturbations are what the teacher knows and the "
            "student does not. (): the evaluated tasks, on the first `student_episodes` of the teacher's clean "
            "demonstrations (measured in docs/wam.md: the student then needs nothing from the teacher on the clean "
            "target set)."
        },
    )
    target_episodes: int = field(
        default=3, metadata={"help": "Clean demonstrations per task of the adapters' small target set."}
    )
    heldout_tasks: tuple[int, ...] = field(default=(0, 1, 2, 3), metadata={"help": "Tasks of the offline set."})
    heldout_init: int = field(default=45, metadata={"help": "Init state of the offline set's demonstrations."})
    # ----------------------------------------------------------------------------------------------- models
    teacher_layers: int = field(default=6, metadata={"help": "Blocks of the teacher (Wan backbone)."})
    teacher_heads: int = field(default=3, metadata={"help": "Attention heads of the teacher."})
    student_layers: int = field(default=4, metadata={"help": "Blocks of the student (Cosmos backbone)."})
    student_heads: int = field(default=2, metadata={"help": "Attention heads of the student."})
    head_dim: int = field(default=32, metadata={"help": "Width of an attention head (both models)."})
    text_dim: int = field(default=32, metadata={"help": "Width of the instruction embedding (both models)."})
    future_pool: int = field(
        default=2,
        metadata={"help": "The generated future view at image_size / future_pool (WorldActionModel's future_pool)."},
    )
    future_residual: bool = field(
        default=True, metadata={"help": "The future view generated as its change from the current one."}
    )
    # ----------------------------------------------------------------------------------------------- training
    batch_size: int = field(default=32, metadata={"help": "Batch size of every training stage."})
    teacher_steps: int = field(default=1200, metadata={"help": "Pretraining steps of the teacher."})
    student_steps: int = field(default=1200, metadata={"help": "Pretraining steps of the student."})
    adapter_steps: int = field(default=1200, metadata={"help": "Training steps of each adapter."})
    teacher_lr: float = field(default=1.5e-3, metadata={"help": "Learning rate of the teacher's pretraining."})
    student_lr: float = field(default=1.5e-3, metadata={"help": "Learning rate of the student's pretraining."})
    ckt_lr: float = field(default=4e-3, metadata={"help": "Learning rate of the CKT adapter."})
    lora_lr: float = field(default=4e-3, metadata={"help": "Learning rate of the LoRA adapter."})
    # ----------------------------------------------------------------------------------------------- CKT and LoRA
    # Paper defaults scaled to the small widths.
    teacher_layer: int = field(
        default=4,
        metadata={
            "help": "The teacher block CKT reads (-1: the middle one, the paper's l* = L/2, here block 2 of 6). "
            "Block 4 and K=16 measured better on the held-out set (docs/wam.md)."
        },
    )
    num_context_tokens: int = field(default=16, metadata={"help": "CKT's context tokens (K)."})
    num_experts: int = field(default=4, metadata={"help": "CKT's specialized adapters."})
    top_k: int = field(default=2, metadata={"help": "Specialized adapters the router picks per sample."})
    bottleneck_dim: int = field(default=64, metadata={"help": "Width of the adapters' bottleneck and the router."})
    # The paper's dropouts (0.1) kept CKT from fitting the 231 target samples at this width (docs/wam.md): off.
    adapter_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the adapters' projected teacher tokens."}
    )
    attention_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the learnable queries' attention weights."}
    )
    ckt_modules_to_save: tuple[str, ...] = field(
        default=("attn2.to_k", "attn2.to_v"),
        metadata={
            "help": "Student modules CKT trains and saves beside its bank (peft's `modules_to_save`), by name suffix. "
            "The default trains the key and value projections through which the student's cross-attention reads its "
            "conditioning, and so the context: this student's were trained on six other tasks' words only, and a "
            "frozen reading that narrow keeps CKT from fitting the target set (docs/wam.md, 'Why CKT underfits'). "
            "'none': the paper's entirely frozen student."
        },
    )
    lora_rank: int = field(default=0, metadata={"help": "0: the smallest rank whose budget is at least CKT's."})
    adapter_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the adapters' initial weights, batches and noise: another value retrains both adapters "
            "from scratch on the same student, teacher and data (how much a retraining moves the rollouts)."
        },
    )
    # ----------------------------------------------------------------------------------------------- evaluation
    eval_tasks: tuple[int, ...] = field(default=(0, 1, 2, 3), metadata={"help": "libero_object tasks evaluated."})
    eval_episodes: int = field(default=2, metadata={"help": "Episodes per task and condition."})
    eval_init_offset: int = field(default=40, metadata={"help": "Init state of the first evaluated episode."})
    eval_max_steps: int = field(
        default=200,
        metadata={
            "help": "Steps of an episode at most (the longest success in 768 recorded rollouts took 192 steps; "
            "failures run to it)."
        },
    )
    n_action_steps: int = field(default=8, metadata={"help": "Actions executed of each predicted chunk."})
    workers: int = field(default=2, metadata={"help": "Simulation worker processes."})
    heldout_samples: int = field(default=512, metadata={"help": "Samples of the offline held-out set at most."})
    ablations: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "The paper's CKT ablations (names of `peft_ckt.ablations.PAPER_ABLATIONS`) trained and evaluated "
            "beside the rest."
        },
    )

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        for name in _LEARNING_RATES:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
        for name in _TASK_LISTS:
            tasks = getattr(self, name)
            if any(task < 0 for task in tasks):
                raise ValueError(f"{name} must hold task ids >= 0; got {tasks}")
            if not tasks and name != "student_tasks":  # () is meaningful for the student only
                raise ValueError(f"{name} must name at least one task")
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (the WAMs' pixel block); got {self.image_size}")
        if not 1 <= self.severity <= 5:
            raise ValueError(f"severity must be in 1..5; got {self.severity}")
        if not -1 <= self.teacher_layer < self.teacher_layers:
            raise ValueError(
                f"teacher_layer={self.teacher_layer}: the teacher has {self.teacher_layers} blocks "
                f"(give 0..{self.teacher_layers - 1}, or -1 for the middle one)"
            )
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k must be <= num_experts ({self.num_experts}); got {self.top_k}")
        for name in ("adapter_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {getattr(self, name)}")
        unknown = [name for name in self.ablations if name not in ABLATIONS]
        if unknown:
            raise ValueError(f"ablations: unknown {unknown}; expected names of {ABLATIONS}")

    @classmethod
    def quick(cls) -> TransferSettings:
        """The same steps at the smallest counts that still exercise every stage (`make demo QUICK=1`)."""
        return cls(
            teacher_tasks=(0,),
            teacher_clean_episodes=1,
            teacher_perturbed_episodes=1,
            student_episodes=1,
            student_tasks=(1,),
            target_episodes=1,
            heldout_tasks=(0,),
            teacher_steps=100,
            student_steps=60,
            adapter_steps=40,
            eval_tasks=(0,),
            eval_episodes=1,
            eval_max_steps=80,
            heldout_samples=128,
        )

    def key(self, *names: str) -> str:
        values = {name: getattr(self, name) for name in names}
        return hashlib.sha1(json.dumps(values, sort_keys=True, default=list).encode()).hexdigest()[:10]


# The name the experiment had inside `peft_ckt.wam` (kept for its callers).
DemoSettings = TransferSettings

__all__ = ["ABLATIONS", "PERTURBATION_KINDS", "POLICIES", "DemoSettings", "TransferSettings", "ablation_policy"]
