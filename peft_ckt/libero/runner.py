"""The one resumable evaluation runner: episode jobs through the worker pool, each result logged as it ends.

Both benchmarks (`evaluate_libero`, the package's perturbations; `evaluate_liberoplus`, the official LIBERO-Plus
tasks) and the LIBERO transfer experiment build their jobs and reports themselves and leave the running to
`run_episode_jobs`: it skips the jobs whose episode is already recorded in the log (an interrupted run resumes),
runs the rest in worker processes (or on Ray), appends every row to the log the moment its episode ends, and returns
the rows of all jobs in job order with the speed of what ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import RecordLog
from .workers import run_jobs

__all__ = ["EvaluationRun", "run_episode_jobs"]


@dataclass
class EvaluationRun:
    """What `run_episode_jobs` returns: `rows` (one per job, in job order: recorded or run now), `ran` (the rows
    this call ran), the wall-clock of the run and the worker count."""

    rows: list[dict[str, Any]]
    ran: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0
    workers: int = 0
    backend: str = "process"

    def speed(self, per_episode: bool = False) -> dict[str, Any]:
        """Steps per second of the episodes this call ran (a resumed call did not time the recorded ones);
        `per_episode` adds the rate inside episodes only (no process start-up or env creation)."""
        env_steps = int(sum(r["steps"] for r in self.ran))
        speed: dict[str, Any] = {
            "episodes_run": len(self.ran),
            "episodes_resumed": len(self.rows) - len(self.ran),
            "env_steps": env_steps,
            "wall_seconds": round(self.wall_seconds, 2),
            "workers": self.workers,
            "backend": self.backend,
            "steps_per_second": round(env_steps / self.wall_seconds, 2)
            if self.ran and self.wall_seconds > 0
            else None,
        }
        if per_episode:
            episode_seconds = float(sum(r["seconds"] for r in self.ran))
            speed["episode_steps_per_second"] = round(env_steps / episode_seconds, 2) if episode_seconds > 0 else None
        return speed


def run_episode_jobs(
    jobs: Sequence[Any],
    run_one: Callable[[Any], dict[str, Any]],
    *,
    log: RecordLog,
    recorded: list[dict[str, Any]],
    job_key: Callable[[Any], Hashable],
    row_key: Callable[[dict[str, Any]], Hashable],
    num_workers: int | None,
    desc: str,
    progress: bool = True,
    backend: str = "process",
    ray_address: str | None = None,
    ray_gpus_per_worker: float = 0.0,
    prepare_row: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> EvaluationRun:
    """Runs every job whose episode the log does not hold yet and returns the rows of all `jobs`.

    Args:
        jobs: picklable job records, in the order the rows are returned (jobs of one task next to each other, so
            workers keep their environment between episodes).
        run_one: a module-level function (sent to worker processes) playing one job and returning its row.
        log: the open episode log (`records.open_episode_log`); each row is appended as its episode ends.
        recorded: the rows the log already held when it was opened.
        job_key / row_key: the identity of an episode, from its job and from its row (equal for the same episode).
        prepare_row: applied to each new row before it is logged (e.g. to add a name the worker does not know).
        num_workers, desc, progress, backend, ray_address, ray_gpus_per_worker: see `workers.run_jobs`.
    """
    done = {row_key(row): row for row in recorded}
    todo = [job for job in jobs if job_key(job) not in done]
    pool: dict[str, Any] = {"workers": 0}
    ran: list[dict[str, Any]] = []
    start = time.perf_counter()
    with log:
        if todo:
            for row in run_jobs(
                run_one,
                todo,
                num_workers,
                desc=desc,
                progress=progress,
                backend=backend,
                ray_address=ray_address,
                ray_gpus_per_worker=ray_gpus_per_worker,
                info=pool,
            ):
                if prepare_row is not None:
                    row = prepare_row(row)
                log.append(row)
                ran.append(row)
                done[row_key(row)] = row
    wall = time.perf_counter() - start
    rows = [done[key] for key in dict.fromkeys(job_key(job) for job in jobs) if key in done]
    return EvaluationRun(rows=rows, ran=ran, wall_seconds=wall, workers=pool["workers"], backend=backend)
