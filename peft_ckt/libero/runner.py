"""The one resumable evaluation runner: episode jobs through the worker pool, each result logged as it ends.

Both benchmarks (`evaluate_libero`, the package's perturbations; `evaluate_liberoplus`, the official LIBERO-Plus
tasks) and the LIBERO transfer experiment build their jobs and reports themselves and leave the running to
`run_episode_jobs`: it skips the jobs whose episode is already recorded in the log (an interrupted run resumes),
runs the rest in worker processes (or on Ray), appends every row to the log the moment its episode ends, and returns
the rows of all jobs in job order with the speed of what ran.

An episode that raises does not stop the run when the caller says how to record it (`error_row`): its row names the
task, the init state and the exception (`row["error"]`, `row["success"]` is None: neither a success nor a failure),
and the other episodes go on. A resumed run keeps such rows like any other, unless asked to run them again
(`retry_errors`).
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import RecordLog
from .workers import drop_cached_env, run_jobs

__all__ = ["EpisodeError", "EvaluationRun", "episode_errors", "is_error", "run_episode_jobs"]


@dataclass(frozen=True)
class EpisodeError:
    """Why an episode raised: the exception's type and message, and where (the innermost frame, `file:line`)."""

    type: str
    message: str
    where: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "where": self.where}


def is_error(row: dict[str, Any]) -> bool:
    """Whether a row records an episode that raised (see `run_episode_jobs(error_row=...)`)."""
    return bool(row.get("error"))


def episode_errors(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The error rows of `rows`, in order."""
    return [row for row in rows if is_error(row)]


def _run_numbered(
    run_one: Callable[[Any], dict[str, Any]], numbered_job: tuple[int, Any]
) -> tuple[int, dict[str, Any] | EpisodeError]:
    """`(number, run_one(job))`, or the `EpisodeError` it raised instead (module level: sent to worker processes)."""
    number, job = numbered_job
    try:
        return number, run_one(job)
    except Exception as err:  # noqa: BLE001 - any episode failure is recorded; Ctrl-C and exits still stop the run
        frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
        where = f"{frame.filename}:{frame.lineno} in {frame.name}" if frame else ""
        # The env may be left mid-step by the exception: the next episode of this worker builds a fresh one.
        drop_cached_env()
        return number, EpisodeError(type(err).__name__, str(err), where)


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
        finished = [r for r in self.ran if not is_error(r)]
        env_steps = int(sum(r["steps"] for r in finished))
        speed: dict[str, Any] = {
            "episodes_run": len(self.ran),
            "episodes_errored": len(episode_errors(self.ran)),
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
            episode_seconds = float(sum(r["seconds"] for r in finished))
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
    error_row: Callable[[Any, EpisodeError], dict[str, Any]] | None = None,
    retry_errors: bool = False,
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
        error_row: the row of a job whose episode raised, from the job and the error; it must carry
            `"error": error.as_dict()` and `row_key` must work on it. With it, an episode that raises is logged as
            that row and the run goes on; without it, the exception ends the run (the rows logged so far stay).
        retry_errors: run again the jobs whose recorded row is an error row (by default they count as done); the
            new row is appended to the log and replaces the error row.
        num_workers, desc, progress, backend, ray_address, ray_gpus_per_worker: see `workers.run_jobs`.
    """
    # The last row of an episode wins: a retried episode's row follows its error row in the log.
    done = {row_key(row): row for row in recorded}
    if retry_errors:
        done = {key: row for key, row in done.items() if not is_error(row)}
    todo = [job for job in jobs if job_key(job) not in done]
    pool: dict[str, Any] = {"workers": 0}
    ran: list[dict[str, Any]] = []
    start = time.perf_counter()
    with log:
        if todo:
            # Results arrive in completion order: an error comes back with its job's number to name the job.
            guarded = functools.partial(_run_numbered, run_one) if error_row is not None else run_one
            for row in run_jobs(
                guarded,
                list(enumerate(todo)) if error_row is not None else todo,
                num_workers,
                desc=desc,
                progress=progress,
                backend=backend,
                ray_address=ray_address,
                ray_gpus_per_worker=ray_gpus_per_worker,
                info=pool,
            ):
                if error_row is not None:
                    number, row = row
                    if isinstance(row, EpisodeError):
                        row = error_row(todo[number], row)
                if prepare_row is not None:
                    row = prepare_row(row)
                log.append(row)
                ran.append(row)
                done[row_key(row)] = row
    wall = time.perf_counter() - start
    rows = [done[key] for key in dict.fromkeys(job_key(job) for job in jobs) if key in done]
    return EvaluationRun(rows=rows, ran=ran, wall_seconds=wall, workers=pool["workers"], backend=backend)
