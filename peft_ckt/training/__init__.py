"""Training CKT adapters with Accelerate (mixed precision, gradient accumulation, checkpoints, DDP/FSDP/DeepSpeed).

See docs/training.md. Entry points: `peft-ckt train`, `examples/train_ckt.py`, or [`CKTTrainer`] from Python.
"""

from .arguments import CKTTrainingArguments, build_train_parser
from .data import FlowMatchingLoss, SyntheticMovingBlobs
from .presets import PRESETS, Preset, TrainingSetup, build_training_setup, register_preset
from .trainer import CKTTrainer, CKTTrainingStep, TrainResult, build_param_groups, train

__all__ = [
    "CKTTrainer",
    "CKTTrainingArguments",
    "CKTTrainingStep",
    "FlowMatchingLoss",
    "PRESETS",
    "Preset",
    "SyntheticMovingBlobs",
    "TrainResult",
    "TrainingSetup",
    "build_param_groups",
    "build_train_parser",
    "build_training_setup",
    "register_preset",
    "train",
]
