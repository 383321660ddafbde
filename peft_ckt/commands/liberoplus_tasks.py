"""`peft-ckt liberoplus-tasks`: how many official LIBERO-Plus tasks of each suite run offline, per dimension."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "liberoplus-tasks",
        help="Count the official LIBERO-Plus tasks, and those runnable offline, per suite and dimension.",
        description="For every suite given (default: all official ones), per perturbation dimension: the official "
        "task count and how many run offline with the installed assets.",
    )
    parser.add_argument(
        "suites", nargs="*", metavar="SUITE", help="LIBERO-Plus suites to count (default: every official suite)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peft_ckt.libero.liberoplus import OFFICIAL_SUITES, runnable_summary
    from peft_ckt.libero.runtime import LiberoConfigError

    for name in args.suites or OFFICIAL_SUITES:
        try:
            summary = runnable_summary(name)
        except LiberoConfigError as err:
            raise SystemExit(f"liberoplus-tasks: error: {err}") from err
        print(name, summary)
    return 0
