"""`peft-ckt libero-speed`: LIBERO simulation and rendering speed on this machine (needs the `libero` extra)."""

from __future__ import annotations

import argparse
import json

from .libero_arguments import require_libero


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "libero-speed",
        help="Measure LIBERO simulation and rendering speed on this machine (JSON).",
        description=(
            "Reports env creation time, reset time, physics steps/s (no rendering), rendered steps/s with two "
            "cameras (fast renderer settings and LIBERO's defaults), and the cost of one camera frame."
        ),
    )
    parser.add_argument("--suite", default="libero_object", help="LIBERO suite of the measured task")
    parser.add_argument("--task", type=int, default=0, help="task index within the suite")
    parser.add_argument("--image-size", type=int, default=128, help="camera image size in pixels (square)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_libero("libero-speed")
    from peft_ckt.libero.speed import measure_speed

    print(json.dumps(measure_speed(args.suite, args.task, args.image_size), indent=2))
    return 0
