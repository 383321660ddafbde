"""`peft-ckt collect-libero`: scripted-expert demonstrations into a LeRobot-format dataset (needs `libero`)."""

from __future__ import annotations

import argparse
import json

from .libero_arguments import add_episode_arguments, check_episode_arguments, episode_kwargs, require_libero


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect-libero",
        help="Collect scripted-expert LIBERO demonstrations into a LeRobot-format dataset (parquet).",
        description=(
            "Run the privileged-state expert on LIBERO tasks (physics only), render the kept episodes by replaying "
            "their states, and write a LeRobot v2.1 dataset loadable with `datasets` / peft_ckt.libero.dataset."
        ),
    )
    add_episode_arguments(
        parser,
        output_help="dataset folder (new or empty; with --resume, an interrupted collection to finish)",
        episodes_help="episodes per task and perturbation",
    )
    parser.add_argument("--keep-failures", action="store_true", help="also keep unsuccessful episodes")
    parser.add_argument(
        "--image-stride",
        type=int,
        default=1,
        help="render the cameras every k-th step only; the steps in between repeat the last frame (k x faster)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_episode_arguments("collect-libero", args)
    require_libero("collect-libero")
    from peft_ckt.libero.collect import collect_demonstrations
    from peft_ckt.libero.runtime import LiberoConfigError

    try:
        summary = collect_demonstrations(
            keep_failures=args.keep_failures, image_stride=args.image_stride, **episode_kwargs(args)
        )
    except LiberoConfigError as err:
        raise SystemExit(f"collect-libero: error: {err}") from err
    print(json.dumps(summary, indent=2))
    return 0
