"""Named training setups: which teacher, student, CKT configuration, data and student loss a run uses.

A preset only builds things; [`CKTTrainer`] trains whatever it gets. Register more with [`register_preset`].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn
from torch.utils.data import Dataset

from .arguments import CKTTrainingArguments


@dataclass
class TrainingSetup:
    """What a preset builds for a run."""

    model: nn.Module  # a PeftModel with a CKT adapter
    train_dataset: Dataset
    student_loss: Callable[..., Any]  # student_loss(model, batch, ckt_context=...) -> scalar loss
    teacher: Optional[nn.Module] = None  # None when training from a teacher-feature cache
    collate_fn: Optional[Callable] = None
    dataset_description: Optional[str] = None


@dataclass
class Preset:
    """A named setup. `build_teacher` and `build_dataset` are also used alone by `peft-ckt cache-teacher`."""

    name: str
    description: str
    teacher_layer: str
    build_teacher: Callable[[], nn.Module]
    build_student: Callable[[], nn.Module]
    build_dataset: Callable[[CKTTrainingArguments], Dataset]
    describe_dataset: Callable[[CKTTrainingArguments], str]
    build_student_loss: Callable[[], Callable[..., Any]]
    ckt_config_kwargs: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"A training preset named {preset.name!r} is already registered.")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; available: {sorted(PRESETS)}.")
    return PRESETS[name]


_CONFIG_OVERRIDES = (
    "num_context_tokens",
    "num_experts",
    "top_k",
    "adapter_dropout",
    "attention_dropout",
    "router_noise",
    "load_balance_weight",
    "use_generalized_adapter",
    "use_specialized_adapters",
)


def build_training_setup(args: CKTTrainingArguments) -> TrainingSetup:
    """Builds the preset's models and data. With `args.teacher_cache`, no teacher is built: the adapter is sized
    from the cache's metadata and its config still names the cached teacher."""
    from peft import get_peft_model

    from ..config import CKTConfig
    from ..teacher_cache import CachedTeacherFeatures, TeacherFeatureCache

    if not args.preset:
        raise ValueError("No --preset given. Use `--preset tiny`, or build the models yourself and use CKTTrainer.")
    preset = get_preset(args.preset)
    config_kwargs = dict(preset.ckt_config_kwargs)
    for name in _CONFIG_OVERRIDES:
        if getattr(args, name) is not None:
            config_kwargs[name] = getattr(args, name)

    dataset = preset.build_dataset(args)
    description = preset.describe_dataset(args)
    if args.teacher_cache:
        cache = TeacherFeatureCache(args.teacher_cache)
        cache.check_compatible(len(dataset), teacher_layer=preset.teacher_layer, dataset_description=description)
        teacher = None
        # The adapter names the teacher it was trained from (so it loads with it later); with its width known, the
        # teacher itself is never loaded here.
        config = CKTConfig(
            teacher=cache.metadata.get("teacher"),
            teacher_class=cache.metadata.get("teacher_class"),
            teacher_layer=cache.teacher_layer,
            teacher_hidden_size=cache.hidden_size,
            **config_kwargs,
        )
        model = get_peft_model(preset.build_student(), config)
        dataset = CachedTeacherFeatures(dataset, cache)
    else:
        teacher = preset.build_teacher()
        config = CKTConfig(teacher=teacher, teacher_layer=preset.teacher_layer, **config_kwargs)
        model = get_peft_model(preset.build_student(), config)
    return TrainingSetup(
        model=model,
        train_dataset=dataset,
        student_loss=preset.build_student_loss(),
        teacher=teacher,
        dataset_description=description,
    )


# --------------------------------------------------------------------------------------------------- "tiny"
def _tiny_dataset(args: CKTTrainingArguments) -> Dataset:
    from ..testing import TINY_CHANNELS, TINY_FRAMES, TINY_HEIGHT, TINY_TEXT_LENGTH, TINY_WIDTH
    from .data import SyntheticMovingBlobs

    # The data seed is fixed (not --seed) so that one teacher-feature cache serves every training seed.
    return SyntheticMovingBlobs(
        num_samples=args.num_train_samples or 256,
        channels=TINY_CHANNELS,
        num_frames=TINY_FRAMES,
        height=TINY_HEIGHT,
        width=TINY_WIDTH,
        text_length=TINY_TEXT_LENGTH,
        student_text_dim=24,
        teacher_text_dim=32,
        seed=0,
    )


def _tiny_teacher() -> nn.Module:
    from ..testing import tiny_wan_teacher

    return tiny_wan_teacher()


def _tiny_student() -> nn.Module:
    from ..testing import tiny_cosmos_student

    return tiny_cosmos_student()


def _tiny_loss():
    from .data import FlowMatchingLoss

    return FlowMatchingLoss(conditioning_keys={"encoder_hidden_states": "student_conditioning"})


register_preset(
    Preset(
        name="tiny",
        description="Tiny diffusers Wan teacher -> Cosmos student on a SYNTHETIC moving-blob latent set (CPU, seconds).",
        teacher_layer="blocks.2",
        build_teacher=_tiny_teacher,
        build_student=_tiny_student,
        build_dataset=_tiny_dataset,
        describe_dataset=lambda args: f"SyntheticMovingBlobs(num_samples={args.num_train_samples or 256}, seed=0)",
        build_student_loss=_tiny_loss,
        ckt_config_kwargs={
            "context_kwarg": "encoder_hidden_states",
            "num_context_tokens": 4,
            "num_experts": 4,
            "top_k": 2,
            "bottleneck_dim": 32,
            "router_hidden_dim": 32,
            "num_attention_heads": 2,
            "adapter_dropout": 0.1,
            "router_noise": True,
            "load_balance_weight": 0.01,
        },
    )
)
