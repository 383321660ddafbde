"""`peft-ckt train`: train a CKT adapter with Accelerate (use `accelerate launch` for several GPUs/processes)."""

from __future__ import annotations

import argparse

DESCRIPTION = """Train a CKT adapter: a frozen teacher's layer features become a learned context for a frozen student.

Runs on one device as is; for many GPUs or processes start it with Accelerate, e.g.
  accelerate launch --config_file examples/accelerate/multi_gpu.yaml -m peft_ckt.commands train --preset tiny
(see docs/training.md). The final adapter (adapter_model.safetensors, adapter_config.json) lands in --output-dir,
checkpoints in OUTPUT_DIR/checkpoints, TensorBoard logs in OUTPUT_DIR/logs and per-step metrics in
OUTPUT_DIR/metrics.jsonl."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..training.arguments import build_train_parser

    parser = subparsers.add_parser(
        "train",
        help="Train a CKT adapter with Accelerate (mixed precision, accumulation, checkpoints, --resume).",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build_train_parser(parser)
    parser.set_defaults(func=run)


def check_train_arguments(args: argparse.Namespace):
    """The training arguments, checked before any model is built; SystemExit with one line naming the problem."""
    import os
    import sys

    from ..config import CKTConfig
    from ..training.arguments import CKTTrainingArguments, arguments_from_namespace
    from ..training.presets import _CONFIG_OVERRIDES, get_preset
    from . import config_error

    try:
        training_args = arguments_from_namespace(args, CKTTrainingArguments)
        if training_args.preset is not None:
            preset = get_preset(training_args.preset)
            # The adapter's config is checked here (no teacher), so that its errors name the flag before any model
            # is built.
            config_kwargs = dict(preset.ckt_config_kwargs)
            for name in _CONFIG_OVERRIDES:
                if getattr(training_args, name) is not None:
                    config_kwargs[name] = getattr(training_args, name)
            CKTConfig(teacher_layer=preset.teacher_layer, **config_kwargs)
    except ValueError as err:
        raise config_error("train", err) from None
    if training_args.preset is None:
        raise SystemExit("peft-ckt train: error: no --preset given (e.g. `--preset tiny`); see --help.")
    if os.path.exists(training_args.output_dir) and not os.path.isdir(training_args.output_dir):
        print(
            f"peft-ckt train: error: --output-dir: {training_args.output_dir!r} is a file, not a folder.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    resume = training_args.resume
    if resume and resume != "latest" and not os.path.isdir(resume):
        raise SystemExit(f"peft-ckt train: error: --resume {resume!r}: no such checkpoint folder.")
    if training_args.teacher_cache and not os.path.isdir(training_args.teacher_cache):
        raise SystemExit(f"peft-ckt train: error: --teacher-cache {training_args.teacher_cache!r}: no such folder.")
    return training_args


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import train

    result = train(check_train_arguments(args))
    if result.stopped_early:
        print(f"Stopped after step {result.global_step} (--stop-after-steps); resume with --resume.")
    return 0
