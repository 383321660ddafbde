"""The `peft-ckt` console command.

Each subcommand lives in its own module of this package and exposes `register(subparsers)`, which adds an
argparse sub-parser whose `func` default runs the command. Add a new module's name to `SUBCOMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import re
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
    "libero_speed",
    "liberoplus_tasks",
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


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def join_negative_values(argv: list[str]) -> list[str]:
    """`--flag -1e-3` -> `--flag=-1e-3`: argparse takes `-1e-3` (an exponent, unlike `-1` or `-0.5`) for an option
    and says "expected one argument"; joined, the value parses and the command's own check names the problem."""
    joined: list[str] = []
    for token in argv:
        previous = joined[-1] if joined else ""
        if _NEGATIVE_NUMBER.match(token) and previous.startswith("--") and "=" not in previous and previous != "--":
            joined[-1] = f"{previous}={token}"
        else:
            joined.append(token)
    return joined


def flag_of(name: str) -> str:
    """The command-line flag of a config or argument field: `top_k` -> `--top-k`."""
    return "--" + name.strip("`-").replace("_", "-")


def config_error(command: str, err: Exception) -> SystemExit:
    """One line `peft-ckt COMMAND: error: --flag: message` on stderr for a ValueError a config or the arguments
    raised, and exit status 2 (as argparse's own errors). The flag is the first `parameter` or `--flag` the message
    names."""
    message = str(err)
    leading = re.match(r"^(--[\w-]+)\s+(.*)$", message, re.S)
    named = re.search(r"`(\w+)`", message)
    if leading is not None:
        message = f"{leading.group(1)}: {leading.group(2)}"
    elif named is not None:
        message = f"{flag_of(named.group(1))}: {message}"
    print(f"peft-ckt {command}: error: {message}", file=sys.stderr)
    return SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
