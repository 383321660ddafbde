"""`peft-ckt eval-libero`: evaluate a policy on LIBERO / LIBERO-Plus (needs the `libero` extra)."""

from __future__ import annotations

import argparse

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
        parser, output_help="output folder", episodes_help="episodes per task and perturbation (init states)"
    )
    parser.add_argument(
        "--policy", default="scripted", help="'scripted' (privileged expert) or a policy folder with config.json"
    )
    parser.add_argument("--video", action="store_true", help="write an MP4 of every episode (agent view)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the policy folder name a class outside diffusers/transformers/peft_ckt (policy_class, or a CKT "
        "adapter's teacher_class) and read pickle teacher weights: both run code from the folder's source",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_episode_arguments("eval-libero", args)
    from peft_ckt.libero.policy import check_policy_spec

    try:  # before the simulator import: nothing of the policy's is imported here
        check_policy_spec(args.policy, args.trust_remote_code)
    except ValueError as err:
        raise SystemExit(f"eval-libero: error: {err}") from None
    require_libero("eval-libero")
    from peft_ckt.libero.evaluation import evaluate_libero, markdown_report
    from peft_ckt.libero.runtime import LiberoConfigError

    try:
        results = evaluate_libero(
            policy=args.policy, video=args.video, trust_remote_code=args.trust_remote_code, **episode_kwargs(args)
        )
    except LiberoConfigError as err:
        raise SystemExit(f"eval-libero: error: {err}") from err
    print(markdown_report(results))
    print(f"Wrote {args.output}/results.json, results.md, success_rates.png")
    return 0
