"""Arguments shared by the LIBERO commands (`eval-libero`, `collect-libero`): one definition, one behaviour."""

from __future__ import annotations

import argparse

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


def int_list(text: str) -> list[int]:
    """`"0,1,2"` -> `[0, 1, 2]` (argparse type)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2; got {text!r}") from err


def add_episode_arguments(
    parser: argparse.ArgumentParser,
    output_help: str,
    episodes_help: str,
    image_size_help: str = "rendered image size in pixels (default 128)",
) -> None:
    """Which episodes to run (suite, tasks, init states, perturbations), where, and how."""
    parser.add_argument("--suite", required=True, choices=SUITES)
    parser.add_argument("--tasks", type=int_list, default=None, help="task ids, e.g. 0,1,2 (default: all)")
    parser.add_argument("--episodes", type=int, default=None, help=episodes_help)
    parser.add_argument(
        "--perturbation",
        default="none",
        help="none, camera, robot, language, light, background, noise, layout, all, or a comma list",
    )
    parser.add_argument("--severity", type=int, default=3, choices=[1, 2, 3, 4, 5], help="perturbation level")
    parser.add_argument("--output", required=True, help=output_help)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count; 0: inline)")
    parser.add_argument("--image-size", type=int, default=None, help=image_size_help)
    parser.add_argument("--seed", type=int, default=None, help="base seed (default 0; LIBERO-Plus: 7, official)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the suite's step limit")
    parser.add_argument("--init-offset", type=int, default=0, help="first init state index")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --output (same settings): recorded episodes are kept, the rest run",
    )


NUM_INIT_STATES = 50  # LIBERO ships 50 init states per task


def check_episode_arguments(command: str, args: argparse.Namespace) -> None:
    """One clear line for bad episode arguments, before the (slow) simulator import and any work."""
    problems = []
    if args.episodes is None:
        args.episodes = 10
    if args.episodes < 1:
        problems.append(f"--episodes must be >= 1; got {args.episodes}")
    if args.init_offset < 0:
        problems.append(f"--init-offset must be >= 0; got {args.init_offset}")
    elif args.init_offset + args.episodes > NUM_INIT_STATES:
        problems.append(
            f"LIBERO ships {NUM_INIT_STATES} init states per task (0-{NUM_INIT_STATES - 1}); --init-offset "
            f"{args.init_offset} with --episodes {args.episodes} would need states up to "
            f"{args.init_offset + args.episodes - 1}"
        )
    if args.max_steps is not None and args.max_steps < 1:
        problems.append(f"--max-steps must be >= 1; got {args.max_steps}")
    if args.image_size is not None and args.image_size < 8:
        problems.append(f"--image-size must be >= 8 pixels; got {args.image_size}")
    if problems:
        raise SystemExit(f"{command}: error: " + "; ".join(problems))
    problem = output_folder_problem(args.output)
    if problem:
        raise SystemExit(f"{command}: error: cannot create the output folder {args.output}: {problem}")


def output_folder_problem(path: str) -> str | None:
    """Why `path` cannot be created as a folder (None when it can), checked without creating anything."""
    import os
    from pathlib import Path

    target = Path(path).absolute()
    if target.exists():
        return None if target.is_dir() else "it exists and is not a folder"
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file"
    if not os.access(parent, os.W_OK | os.X_OK) or str(parent).startswith(("/proc", "/sys")):
        return f"{parent} is not writable"
    return None


def episode_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of `evaluate_libero` / `collect_demonstrations` that the shared flags set."""
    return {
        "suite": args.suite,
        "output_dir": args.output,
        "tasks": args.tasks,
        "episodes": args.episodes,
        "perturbation": args.perturbation,
        "severity": args.severity,
        "num_workers": args.workers,
        "image_size": 128 if args.image_size is None else args.image_size,
        "seed": 0 if args.seed is None else args.seed,
        "max_steps": args.max_steps,
        "init_offset": args.init_offset,
        "progress": not args.no_progress,
        "resume": args.resume,
    }


def require_libero(command: str) -> None:
    """Exit with one line when the `libero` extra cannot be imported."""
    from peft_ckt.libero.runtime import libero_import_error

    reason = libero_import_error()
    if reason is not None:
        raise SystemExit(f"{command}: {reason}")
