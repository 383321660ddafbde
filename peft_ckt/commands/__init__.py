"""The `peft-ckt` console command.

Each subcommand lives in its own module of this package and exposes `register(subparsers)`, which adds an
argparse sub-parser whose `func` default runs the command. Add a new module's name to `SUBCOMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules are imported lazily so that `peft-ckt --help` stays fast and optional extras are only needed by the
# subcommands that use them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "train",
    "cache_teacher",
    "push",
    "convert_upstream",
    "eval_libero",
    "collect_libero",
    "ablations",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-ckt",
        description="Context Knowledge Transfer (CKT) between world action models: train, cache, share, evaluate.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{module_name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
