"""Stage 4: every policy rolled out in LIBERO, clean and under each perturbation, and the rollouts summarised."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peft_ckt.libero.metrics import success_cell

from ..cache import eval_key
from ..settings import PERTURBATION_KINDS, TransferSettings

logger = logging.getLogger(__name__)


def evaluate_policies(settings: TransferSettings, policies: dict[str, str], out: Path, progress: bool = True):
    """Every policy on every (task, condition, init state); resumable through `episodes.jsonl`."""
    from peft_ckt.libero.evaluation import EpisodeJob
    from peft_ckt.libero.parallel import run_jobs
    from peft_ckt.libero.records import open_episode_log

    # Through JSON, as it is stored (tuples become lists), so that a resumed run recognises its own config. The
    # policies are not part of it: an episode is reused when its policy folder (named by the policy's settings) is
    # still one of the policies, so adding the ablation rows keeps the episodes of the others. Nor are the tasks and
    # the episode count: every row names its task and init state, so `--eval-episodes 4` after a 2-episode run runs
    # the 2 new init states only, and the report counts the episodes the settings ask for.
    config = json.loads(json.dumps({"settings": eval_key(settings)}))
    recorded, log = open_episode_log(out, config, "auto")
    # Policies are matched by their resolved folder, so a relative and an absolute `--cache` find the same episodes.
    specs = {os.path.realpath(spec): spec for spec in policies.values()}
    by_key = {os.path.realpath(spec): name for name, spec in policies.items()}
    done = {(os.path.realpath(r["policy"]), r["task_id"], r["perturbation"], r["init_index"]): r for r in recorded}
    conditions = ["none", *PERTURBATION_KINDS]
    jobs = []
    for task in settings.eval_tasks:
        for key, spec in specs.items():
            for kind in conditions:
                for k in range(settings.eval_episodes):
                    init = settings.eval_init_offset + k
                    if (key, task, kind, init) in done:
                        continue
                    jobs.append(
                        EpisodeJob(
                            suite=settings.suite,
                            task_id=task,
                            init_index=init,
                            perturbation=kind,
                            severity=settings.severity,
                            policy=spec,
                            image_size=settings.image_size,
                            seed=settings.seed,
                            max_steps=settings.eval_max_steps,
                            video_dir=None,
                            n_action_steps=settings.n_action_steps,
                        )
                    )
    with log:
        if jobs:
            logger.info(f"evaluation: {len(jobs)} episode(s) to run ({len(done)} already recorded)")
            for result in run_jobs(_run_episode, jobs, settings.workers, desc="evaluate", progress=progress):
                key = os.path.realpath(result["policy"])
                row = {**result, "policy_name": by_key[key]}
                done[(key, row["task_id"], row["perturbation"], row["init_index"])] = row
                log.append(row)
    wanted = {
        (task, settings.eval_init_offset + k) for task in settings.eval_tasks for k in range(settings.eval_episodes)
    }
    return [
        {**row, "policy_name": by_key[key]}
        for (key, task, _, init), row in done.items()
        if key in by_key and (task, init) in wanted
    ]


def _run_episode(job) -> dict[str, Any]:
    """One rollout in a worker, with the policy it ran (module level: sent to worker processes)."""
    from peft_ckt.libero.evaluation import run_episode

    return {**asdict(run_episode(job)), "policy": job.policy}


def summarize_rollouts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def rate(subset):
        return success_cell(sum(bool(r["success"]) for r in subset), len(subset))

    perturbed = [r for r in rows if r["perturbation"] != "none"]
    return {
        "success_rate": rate(perturbed)["success_rate"],  # the LIBERO-Plus total: pooled over perturbed episodes
        "perturbed": rate(perturbed),
        "clean": rate([r for r in rows if r["perturbation"] == "none"]),
        "by_perturbation": {
            k: rate([r for r in rows if r["perturbation"] == k]) for k in ["none", *PERTURBATION_KINDS]
        },
    }


__all__ = ["evaluate_policies", "summarize_rollouts"]
