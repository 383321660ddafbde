"""The LIBERO transfer experiment: can a frozen student WAM gain a frozen teacher WAM's robustness through CKT?

    python -m experiments.libero_transfer                 # the full run (`make demo`), ~28 min on 2 CPU cores
    python -m experiments.libero_transfer --quick         # every stage at the smallest counts (`make demo QUICK=1`)
    python -m experiments.libero_transfer --ablations     # + the paper's CKT ablations (`make demo ABLATIONS=1`)
    python -m experiments.libero_transfer --adapter-seeds 0,1,2,3   # the adapters retrained per seed, pooled

The stages, each cached under `--cache` keyed by the settings it depends on (a second run skips what is done, an
interrupted one resumes):

    1. data       scripted demonstrations: the teacher's broad set, the student's narrow one, target, held-out
    2. pretrain   the teacher (Wan backbone) and the student (Cosmos backbone) WAMs, then frozen
    3. adapters   student+CKT and student+LoRA (and the ablations) on the small clean target set
    4. rollouts   every policy in LIBERO, clean and under the seven perturbations (`episodes.jsonl`)
    5. offline    every model on a fixed held-out set beside trivial predictors; `report.md`, plots and a GIF

Writes the report into `--output` (default `outputs/demo`; `outputs/demo-quick` with `--quick`). Every setting of
`TransferSettings` is a flag (tuples comma-separated, 'none' for an empty one). See docs/wam.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import get_args, get_type_hints

from peft_ckt.training.arguments import add_dataclass_arguments

from .settings import ABLATIONS, TransferSettings

LOGGER = "experiments.libero_transfer"


def _tuple_value(parser: argparse.ArgumentParser, name: str, text: str, hint) -> tuple:
    """A comma-separated flag value as the field's tuple ('none': the empty tuple)."""
    flag = "--" + name.replace("_", "-")
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if name == "ckt_modules_to_save" and not items:
        parser.error(f"{flag} names no module (use 'none' for the frozen student): {text!r}")
    if not items:
        parser.error(f"{flag} names nothing (use 'none' for an empty list): {text!r}")
    if items == ("none",):
        return ()
    if get_args(hint)[0] is int:
        try:
            items = tuple(int(item) for item in items)
        except ValueError:
            parser.error(f"{flag} must be comma-separated integers; got {text!r}")
    if name == "eval_tasks" and any(not 0 <= t < 10 for t in items):
        parser.error(f"{flag} must name libero_object tasks 0-9; got {text!r}")
    return items


def parse_settings(
    argv: list[str] | None = None,
) -> tuple[argparse.Namespace, TransferSettings, tuple[int, ...] | None]:
    """The command line as `(args, settings, adapter seeds or None)`; bad values end with a usage error."""
    from .seeds import check_adapter_seeds

    # --quick chooses the defaults every other flag overrides.
    quick = argparse.ArgumentParser(add_help=False)
    quick.add_argument("--quick", action="store_true")
    base = TransferSettings.quick() if quick.parse_known_args(argv)[0].quick else TransferSettings()

    parser = argparse.ArgumentParser(
        prog="python -m experiments.libero_transfer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smallest counts: a check of every stage (~5 min)")
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also train and evaluate the paper's CKT ablations (no specialized adapters, no generalized adapter, no "
        "auxiliary loss) as extra report rows",
    )
    parser.add_argument(
        "--output", default=None, help="report folder (default: outputs/demo, with --quick outputs/demo-quick)"
    )
    parser.add_argument("--cache", default=None, help="cache folder (default: OUTPUT/cache)")
    parser.add_argument(
        "--adapter-seeds",
        default=None,
        help="comma-separated adapter seeds: the experiment once per seed into OUTPUT/adapter-seed-N/ (one cache, "
        "one episode log: the teacher and the student are trained and played once), pooled into "
        "OUTPUT/adapter-seeds.md",
    )
    fields = [f.name for f in dataclasses.fields(TransferSettings) if f.name != "ablations"]
    add_dataclass_arguments(parser.add_argument_group("settings"), TransferSettings, skip=("ablations",))
    # Unset flags keep the base settings' values (the quick ones with --quick), so they are never overridden.
    parser.set_defaults(**{name: getattr(base, name) for name in fields})
    args = parser.parse_args(argv)
    if args.output is None:  # a pipeline check must not overwrite the full run's report
        args.output = "outputs/demo-quick" if args.quick else "outputs/demo"

    hints = get_type_hints(TransferSettings)
    values = {}
    for name in fields:
        value = getattr(args, name)
        if isinstance(value, str) and hints[name] is not str:  # a tuple given on the command line
            value = _tuple_value(parser, name, value, hints[name])
        values[name] = value
    values["workers"] = max(0, values["workers"])
    if args.ablations:
        values["ablations"] = ABLATIONS
    try:
        settings = dataclasses.replace(base, **values)
    except ValueError as error:
        parser.error(str(error))
    seeds = None
    if args.adapter_seeds is not None:
        given = sys.argv[1:] if argv is None else argv
        if any(arg == "--adapter-seed" or arg.startswith("--adapter-seed=") for arg in given):
            parser.error("give --adapter-seed or --adapter-seeds, not both")
        try:
            seeds = check_adapter_seeds(int(s) for s in args.adapter_seeds.split(",") if s.strip())
        except ValueError as error:
            parser.error(f"--adapter-seeds {args.adapter_seeds!r}: {error}")
    return args, settings, seeds


def main(argv: list[str] | None = None) -> None:
    from .run import run_transfer
    from .seeds import run_adapter_seeds

    args, settings, seeds = parse_settings(argv)
    # The stages log to `experiments.libero_transfer.*`: shown as the `[demo] ...` progress lines.
    logger = logging.getLogger(LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[demo] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    if seeds is not None:
        run_adapter_seeds(settings, seeds, args.output, args.cache)
        print(open(f"{args.output}/adapter-seeds.md").read())
        print(f"Per-seed reports in {args.output}/adapter-seed-N/.")
        return
    report = run_transfer(settings, args.output, args.cache)
    print(open(f"{args.output}/report.md").read())
    print(f"Report, plots and GIF in {args.output}/ ({report['timing']['total'] / 60:.1f} min).")


if __name__ == "__main__":
    main()
