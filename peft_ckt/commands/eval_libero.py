"""`peft-ckt eval-libero`: evaluate a policy on LIBERO / LIBERO-Plus (needs the `libero` extra)."""

from __future__ import annotations

import argparse


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2; got {text!r}") from err


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-libero",
        help="Evaluate a policy on LIBERO / LIBERO-Plus (parallel episodes, results.json, table, chart, videos).",
        description=(
            "Run episodes of a LIBERO suite with the standard protocol (shipped init states, per-suite step limits) "
            "and optional LIBERO-Plus perturbations. Writes DIR/results.json, DIR/results.md (LIBERO-Plus table), "
            "DIR/success_rates.png and, with --video, DIR/videos/*.mp4."
        ),
    )
    parser.add_argument(
        "--suite",
        required=True,
        choices=["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"],
    )
    parser.add_argument("--tasks", type=_int_list, default=None, help="task ids, e.g. 0,1,2 (default: all)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task and perturbation (init states)")
    parser.add_argument(
        "--perturbation",
        default="none",
        help="none, camera, robot, language, light, background, noise, layout, all, or a comma list",
    )
    parser.add_argument("--severity", type=int, default=3, choices=[1, 2, 3, 4, 5], help="perturbation level")
    parser.add_argument(
        "--policy", default="scripted", help="'scripted' (privileged expert) or a policy folder with config.json"
    )
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--video", action="store_true", help="write an MP4 of every episode (agent view)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count; 0: inline)")
    parser.add_argument("--image-size", type=int, default=128, help="rendered image size (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="override the suite's step limit")
    parser.add_argument("--init-offset", type=int, default=0, help="first init state index")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peft_ckt.libero.runtime import LiberoConfigError, libero_import_error

    reason = libero_import_error()
    if reason is not None:
        raise SystemExit(f"eval-libero: {reason}")
    from peft_ckt.libero.evaluation import evaluate_libero, markdown_report

    try:
        results = evaluate_libero(
            suite=args.suite,
            output_dir=args.output,
            policy=args.policy,
            tasks=args.tasks,
            episodes=args.episodes,
            perturbation=args.perturbation,
            severity=args.severity,
            num_workers=args.workers,
            video=args.video,
            image_size=args.image_size,
            seed=args.seed,
            max_steps=args.max_steps,
            init_offset=args.init_offset,
            progress=not args.no_progress,
        )
    except LiberoConfigError as err:
        raise SystemExit(f"eval-libero: error: {err}") from err
    print(markdown_report(results))
    print(f"Wrote {args.output}/results.json, results.md, success_rates.png")
    return 0
