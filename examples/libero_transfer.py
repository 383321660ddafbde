"""The main experiment: CKT from a teacher world action model into a student on LIBERO, clean and perturbed.

    python examples/libero_transfer.py                 # the full run (`make demo`), ~28 min on 2 CPU cores
    python examples/libero_transfer.py --quick         # every stage at the smallest counts (`make demo QUICK=1`)
    python examples/libero_transfer.py --ablations     # + the paper's CKT ablations (`make demo ABLATIONS=1`)
    python examples/libero_transfer.py --adapter-seeds 0,1,2,3   # the adapters retrained per seed, pooled

Writes `report.md`, `report.json`, the plots and a GIF into `--output` (default `outputs/demo`; `outputs/demo-quick`
with `--quick`); everything it builds (demonstrations, pretrained models, adapters, recorded episodes) is cached
under `--cache` keyed by its settings, so a second run skips what is done and an interrupted one resumes. See
peft_ckt/wam/experiment.py and docs/wam.md.
"""

import argparse
import dataclasses

from peft_ckt.wam.experiment import ABLATIONS, DemoSettings, run_demo
from peft_ckt.wam.seeds import check_adapter_seeds, run_adapter_seeds


def parse_settings(argv: list[str] | None = None) -> tuple[argparse.Namespace, DemoSettings, tuple[int, ...] | None]:
    """The command line as `(args, settings, adapter seeds or None)`; bad values end with a usage error."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per task and condition")
    parser.add_argument("--eval-tasks", default=None, help="comma-separated libero_object task ids to evaluate")
    parser.add_argument("--workers", type=int, default=None, help="simulation worker processes")
    parser.add_argument(
        "--adapter-seed",
        type=int,
        default=None,
        help="retrain both adapters with another seed (initial weights, batches, noise) on the same cached teacher, "
        "student and data; give another --output and the same --cache to keep both reports",
    )
    parser.add_argument(
        "--ckt-modules-to-save",
        default=None,
        help="comma-separated student module name suffixes CKT also trains and saves (peft's modules_to_save); "
        "default 'attn2.to_k,attn2.to_v': the projections through which the student's cross-attention reads the "
        "context; 'none': the paper's entirely frozen student",
    )
    parser.add_argument(
        "--adapter-seeds",
        default=None,
        help="comma-separated adapter seeds: the experiment once per seed into OUTPUT/adapter-seed-N/ (one cache, "
        "one episode log: the teacher and the student are trained and played once), pooled into "
        "OUTPUT/adapter-seeds.md",
    )
    args = parser.parse_args(argv)
    if args.output is None:  # a pipeline check must not overwrite the full run's report
        args.output = "outputs/demo-quick" if args.quick else "outputs/demo"
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    changes = {}
    if args.eval_episodes is not None:
        if args.eval_episodes < 1:
            parser.error(f"--eval-episodes must be >= 1; got {args.eval_episodes}")
        changes["eval_episodes"] = args.eval_episodes
    if args.eval_tasks is not None:
        try:
            tasks = tuple(int(t) for t in args.eval_tasks.split(",") if t.strip())
        except ValueError:
            parser.error(f"--eval-tasks must be comma-separated integers; got {args.eval_tasks!r}")
        if not tasks or any(not 0 <= t < 10 for t in tasks):
            parser.error(f"--eval-tasks must name libero_object tasks 0-9; got {args.eval_tasks!r}")
        changes["eval_tasks"] = tasks
    if args.ablations:
        changes["ablations"] = ABLATIONS
    if args.workers is not None:
        changes["workers"] = max(0, args.workers)
    if args.adapter_seed is not None:
        if args.adapter_seed < 0:
            parser.error(f"--adapter-seed must be >= 0; got {args.adapter_seed}")
        changes["adapter_seed"] = args.adapter_seed
    if args.ckt_modules_to_save is not None:
        names = tuple(n.strip() for n in args.ckt_modules_to_save.split(",") if n.strip())
        if not names:
            parser.error(
                f"--ckt-modules-to-save names no module (use 'none' for the frozen student): "
                f"{args.ckt_modules_to_save!r}"
            )
        changes["ckt_modules_to_save"] = () if names == ("none",) else names
    seeds = None
    if args.adapter_seeds is not None:
        if args.adapter_seed is not None:
            parser.error("give --adapter-seed or --adapter-seeds, not both")
        try:
            seeds = check_adapter_seeds(int(s) for s in args.adapter_seeds.split(",") if s.strip())
        except ValueError as error:
            parser.error(f"--adapter-seeds {args.adapter_seeds!r}: {error}")
    return args, dataclasses.replace(settings, **changes), seeds


def main() -> None:
    args, settings, seeds = parse_settings()
    if seeds is not None:
        run_adapter_seeds(settings, seeds, args.output, args.cache)
        print(open(f"{args.output}/adapter-seeds.md").read())
        print(f"Per-seed reports in {args.output}/adapter-seed-N/.")
        return
    report = run_demo(settings, args.output, args.cache)
    print(open(f"{args.output}/report.md").read())
    print(f"Report, plots and GIF in {args.output}/ ({report['timing']['total'] / 60:.1f} min).")


if __name__ == "__main__":
    main()
