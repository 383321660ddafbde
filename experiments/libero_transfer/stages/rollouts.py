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
    from peft_ckt.libero.records import open_episode_log
    from peft_ckt.libero.runner import run_episode_jobs

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
    jobs = [
        EpisodeJob(
            suite=settings.suite,
            task_id=task,
            init_index=settings.eval_init_offset + k,
            perturbation=kind,
            severity=settings.severity,
            policy=spec,
            image_size=settings.image_size,
            seed=settings.seed,
            max_steps=settings.eval_max_steps,
            video_dir=None,
            n_action_steps=settings.n_action_steps,
        )
        for task in settings.eval_tasks
        for spec in specs.values()
        for kind in ["none", *PERTURBATION_KINDS]
        for k in range(settings.eval_episodes)
    ]

    def job_key(job: EpisodeJob) -> tuple:
        return os.path.realpath(job.policy), job.task_id, job.perturbation, job.init_index

    def row_key(row: dict[str, Any]) -> tuple:
        return os.path.realpath(row["policy"]), row["task_id"], row["perturbation"], row["init_index"]

    recorded_keys = {row_key(row) for row in recorded}
    pending = sum(job_key(job) not in recorded_keys for job in jobs)
    if pending:
        logger.info(f"evaluation: {pending} episode(s) to run ({len(jobs) - pending} already recorded)")
    run = run_episode_jobs(
        jobs,
        _run_episode,
        log=log,
        recorded=recorded,
        job_key=job_key,
        row_key=row_key,
        num_workers=settings.workers,
        desc="evaluate",
        progress=progress,
        prepare_row=lambda row: {**row, "policy_name": by_key[os.path.realpath(row["policy"])]},
    )
    return [{**row, "policy_name": by_key[os.path.realpath(row["policy"])]} for row in run.rows]


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
