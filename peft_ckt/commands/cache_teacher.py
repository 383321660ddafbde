"""`peft-ckt cache-teacher`: run the frozen teacher once over a dataset and store its layer features."""

from __future__ import annotations

import argparse

DESCRIPTION = """Run the frozen teacher once over a preset's dataset, up to the CKT teacher layer only, and write
the features as sharded safetensors with an index JSON. Train from them with `peft-ckt train --teacher-cache DIR`:
no teacher is loaded at training time. Under `accelerate launch`, every process caches its share of the data."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache-teacher",
        help="Precompute the teacher's layer features for training without the teacher in memory.",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset", required=True, help="Named setup whose teacher and dataset are cached, e.g. 'tiny'."
    )
    parser.add_argument("--output-dir", required=True, help="Folder to write the cache to (created).")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="Storage dtype of the features (default: %(default)s; bf16/fp16 halve the size).",
    )
    parser.add_argument(
        "--teacher-dtype",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="Run the teacher in this dtype (default: as built, fp32 for the tiny preset).",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="Samples per teacher forward (default: %(default)s)."
    )
    parser.add_argument(
        "--max-shard-size-mb",
        type=float,
        default=512.0,
        help="Start a new safetensors shard beyond this size in MiB (default: %(default)s).",
    )
    parser.add_argument(
        "--num-train-samples",
        type=int,
        default=None,
        help="Size of the preset's dataset; must match the training run's --num-train-samples.",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing cache in --output-dir.")
    parser.add_argument("--no-progress-bar", action="store_true", help="Do not show a progress bar.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..teacher_cache import cache_teacher_features
    from ..training.arguments import CKTTrainingArguments
    from ..training.presets import get_preset
    from . import config_error

    # Checked before anything is built or the output folder is created.
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}.")
        if not args.max_shard_size_mb > 0:
            raise ValueError(f"--max-shard-size-mb must be > 0, got {args.max_shard_size_mb}.")
        if args.num_train_samples is not None and args.num_train_samples < 1:
            raise ValueError(f"--num-train-samples must be >= 1, got {args.num_train_samples}.")
        preset = get_preset(args.preset)
    except ValueError as err:
        raise config_error("cache-teacher", err) from None
    training_args = CKTTrainingArguments(preset=args.preset, num_train_samples=args.num_train_samples)
    teacher = preset.build_teacher()
    if args.teacher_dtype:
        teacher.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.teacher_dtype])
    cache = cache_teacher_features(
        teacher,
        preset.teacher_layer,
        preset.build_dataset(training_args),
        args.output_dir,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_shard_size_mb=args.max_shard_size_mb,
        dataset_description=preset.describe_dataset(training_args),
        overwrite=args.overwrite,
        progress=not args.no_progress_bar,
    )
    meta = cache.metadata
    print(
        f"Cached {len(cache)} samples of {meta['teacher_class']} layer {meta['teacher_layer']} "
        f"(d_t={meta['hidden_size']}, N={meta['num_tokens']}, {meta['dtype']}) in {args.output_dir}"
    )
    return 0
