"""The experiment's adapters retrained with several seeds on the same teacher, student and data, and pooled.

One training of an adapter is one draw: on the same teacher, student, data and episodes, a retraining alone moved
student+CKT's perturbed successes from 9 to 15 of 56 (from 1 to 10 with the student entirely frozen; docs/wam.md).
[`run_adapter_seeds`] runs the experiment once per adapter seed (`TransferSettings.adapter_seed`: the adapters' initial
weights, batches and noise) into `OUTPUT/adapter-seed-N/`, every run sharing one cache and one episode log
(`OUTPUT/episodes.jsonl`), so the frozen teacher and student are trained and played once. [`pool_adapter_seeds`] then sums every policy's successes over the
seeds: a policy whose folder is the same in every run (the teacher, the student) counts its episodes once; a
retrained one counts every seed's, so its interval is over trainings and episodes together.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from peft_ckt.atomic import write_json, write_text
from peft_ckt.libero.metrics import compare_policies, comparison_lines, success_cell

from .run import run_transfer
from .settings import TransferSettings

logger = logging.getLogger(__name__)


def check_adapter_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """The seeds as a tuple; refuses none, negative or repeated ones."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("Give at least one adapter seed")
    if any(s < 0 for s in seeds):
        raise ValueError(f"Adapter seeds must be >= 0; got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Adapter seeds must differ; got {list(seeds)}")
    return seeds


def run_adapter_seeds(
    settings: TransferSettings,
    seeds: Sequence[int],
    output: str | os.PathLike,
    cache: Optional[str | os.PathLike] = None,
) -> dict[str, Any]:
    """The experiment once per adapter seed (resumable like one run), then `adapter-seeds.{json,md}` in `output`.

    With the defaults of `make demo` (`output="outputs/demo"`), seed `settings.adapter_seed` reuses that run's
    adapters and episodes: only the other seeds train and play.
    """
    seeds = check_adapter_seeds(seeds)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache is not None else out / "cache"
    reports = {}
    for index, seed in enumerate(seeds):
        logger.info(f"adapter seed {seed} ({index + 1} of {len(seeds)})")
        reports[seed] = run_transfer(
            dataclasses.replace(settings, adapter_seed=seed), out / f"adapter-seed-{seed}", cache, episode_log=out
        )
    pooled = pool_adapter_seeds(reports)
    write_json(out / "adapter-seeds.json", pooled)
    write_text(out / "adapter-seeds.md", adapter_seeds_markdown(pooled))
    return pooled


def pool_adapter_seeds(reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per policy: each seed's clean and perturbed successes and held-out action MSE, and the pooled rates.

    `reports` maps a seed to its `report.json` content. Every report must hold the same policies.
    """
    if not reports:
        raise ValueError("No reports to pool")
    names = list(next(iter(reports.values()))["policies"])
    for seed, report in reports.items():
        if list(report["policies"]) != names:
            raise ValueError(f"Seed {seed} reports policies {list(report['policies'])}, the first one {names}")
    pooled: dict[str, Any] = {"seeds": list(reports), "policies": {}}
    for name in names:
        rows = {seed: report["policies"][name] for seed, report in reports.items()}
        offline = {seed: report["offline"].get(name) for seed, report in reports.items()}
        # The same folder in every run played the same episodes: counted once.
        shared = len({row["path"] for row in rows.values()}) == 1
        counted = [next(iter(rows.values()))] if shared else list(rows.values())
        entry: dict[str, Any] = {"retrained": not shared, "per_seed": {}}
        for split in ("clean", "perturbed"):
            entry[split] = success_cell(
                sum(row[split]["successes"] for row in counted), sum(row[split]["episodes"] for row in counted)
            )
        for seed, row in rows.items():
            scores = offline[seed] or {}
            entry["per_seed"][seed] = {
                "clean": [row["clean"]["successes"], row["clean"]["episodes"]],
                "perturbed": [row["perturbed"]["successes"], row["perturbed"]["episodes"]],
                "action_mse": {s: scores[s]["action_mse"] for s in ("clean", "perturbed") if s in scores},
            }
        pooled["policies"][name] = entry
    pooled["comparisons"] = compare_policies(pooled["policies"])
    return pooled


def adapter_seeds_markdown(pooled: dict[str, Any]) -> str:
    seeds = pooled["seeds"]
    lines = [
        f"# The adapters retrained with {len(seeds)} seeds on the same teacher, student and data",
        "",
        "Perturbed successes of each seed (clean in brackets), the same episodes (tasks, init states, perturbations, "
        "sampling noise) for every seed. Pooled: the teacher's and the student's episodes are the same in every seed "
        "and counted once; a retrained adapter's are summed over the seeds (95% Wilson intervals over trainings and "
        "episodes together).",
        "",
        "| Policy | " + " | ".join(f"seed {s}" for s in seeds) + " | perturbed, pooled (95% CI) | clean, pooled |",
        "|---|" + "---:|" * len(seeds) + "---:|---:|",
    ]
    for name, entry in pooled["policies"].items():
        cells = []
        for seed in seeds:
            row = entry["per_seed"][seed]
            cells.append(f"{row['perturbed'][0]}/{row['perturbed'][1]} ({row['clean'][0]}/{row['clean'][1]})")
        pert, clean = entry["perturbed"], entry["clean"]
        low, high = pert["ci95"]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {pert['successes']}/{pert['episodes']} = {100 * (pert['success_rate'] or 0):.0f}% "
            f"({100 * low:.0f}-{100 * high:.0f}) | {clean['successes']}/{clean['episodes']} |"
        )
    if pooled.get("comparisons"):
        lines += ["", "Pooled (each training's episodes as draws of one policy):", ""]
        lines += comparison_lines(pooled["policies"], pooled["comparisons"])
    lines += [
        "",
        "Held-out action MSE on the perturbed demonstrations (lower is better):",
        "",
        "| Policy | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---:|" * len(seeds),
    ]
    for name, entry in pooled["policies"].items():
        values = [entry["per_seed"][s]["action_mse"].get("perturbed") for s in seeds]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["adapter_seeds_markdown", "check_adapter_seeds", "pool_adapter_seeds", "run_adapter_seeds"]
