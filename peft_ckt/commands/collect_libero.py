"""`peft-ckt collect-libero`: scripted-expert demonstrations into a LeRobot-format dataset (needs `libero`)."""

from __future__ import annotations

import argparse
import json

from .eval_libero import _int_list


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect-libero",
        help="Collect scripted-expert LIBERO demonstrations into a LeRobot-format dataset (parquet).",
        description=(
            "Run the privileged-state expert on LIBERO tasks (physics only), render the kept episodes by replaying "
            "their states, and write a LeRobot v2.1 dataset loadable with `datasets` / peft_ckt.libero.dataset."
        ),
    )
    parser.add_argument(
        "--suite",
        required=True,
        choices=["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"],
    )
    parser.add_argument("--tasks", type=_int_list, default=None, help="task ids, e.g. 0,1,2 (default: all)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task and perturbation")
    parser.add_argument("--perturbation", default="none", help="none, a LIBERO-Plus kind, all, or a comma list")
    parser.add_argument("--severity", type=int, default=3, choices=[1, 2, 3, 4, 5])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--output", required=True, help="dataset folder (must be new or empty)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count; 0: inline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-failures", action="store_true", help="also keep unsuccessful episodes")
    parser.add_argument("--max-steps", type=int, default=None, help="override the suite's step limit")
    parser.add_argument(
        "--image-stride",
        type=int,
        default=1,
        help="render the cameras every k-th step only; the steps in between repeat the last frame (k x faster)",
    )
    parser.add_argument("--init-offset", type=int, default=0, help="first init state index")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peft_ckt.libero.runtime import LiberoConfigError, libero_import_error

    reason = libero_import_error()
    if reason is not None:
        raise SystemExit(f"collect-libero: {reason}")
    from peft_ckt.libero.collect import collect_demonstrations

    try:
        summary = collect_demonstrations(
            suite=args.suite,
            output_dir=args.output,
            tasks=args.tasks,
            episodes=args.episodes,
            perturbation=args.perturbation,
            severity=args.severity,
            image_size=args.image_size,
            num_workers=args.workers,
            seed=args.seed,
            keep_failures=args.keep_failures,
            max_steps=args.max_steps,
            init_offset=args.init_offset,
            image_stride=args.image_stride,
            progress=not args.no_progress,
        )
    except LiberoConfigError as err:
        raise SystemExit(f"collect-libero: error: {err}") from err
    print(json.dumps(summary, indent=2))
    return 0
