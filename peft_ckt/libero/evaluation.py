"""Evaluate a policy on LIBERO / LIBERO-Plus: parallel episodes, results.json, a LIBERO-Plus table, a chart, videos."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_json, write_text
from .episode import (
    RenderPlan,
    check_n_action_steps,
    choose_image_size,
    episode_policy,
    play_episode,
    policy_spec,
    write_video,
)
from .perturbations import Perturbation, expand_perturbations
from .records import open_episode_log
from .runner import EpisodeError, run_episode_jobs
from .runtime import LiberoConfigError
from .tables.libero import bar_chart, markdown_report, summarize
from .workers import check_backend, episode_env

# Names other code imports from here: the episode helpers and the report of this benchmark.
__all__ = [
    "EpisodeJob",
    "EpisodeResult",
    "bar_chart",
    "check_n_action_steps",
    "episode_policy",
    "episode_error_row",
    "evaluate_libero",
    "markdown_report",
    "play_episode",
    "run_episode",
    "run_episode_row",
    "summarize",
    "write_video",
]


@dataclass(frozen=True)
class EpisodeJob:
    suite: str
    task_id: int
    init_index: int
    perturbation: str
    severity: int
    policy: str
    image_size: int
    seed: int
    max_steps: int | None
    video_dir: str | None
    trust_remote_code: bool = False
    # Actions played from each predicted chunk before the next prediction (None: the policy's own setting).
    n_action_steps: int | None = None


@dataclass
class EpisodeResult:
    suite: str
    task_id: int
    task: str
    instruction: str
    init_index: int
    perturbation: str
    severity: int
    success: bool
    steps: int
    seconds: float
    video: str | None = None


def run_episode(job: EpisodeJob) -> EpisodeResult:
    """One episode in this process (envs and policy cached between calls)."""

    policy = episode_policy(job.policy, job.trust_remote_code, job.n_action_steps)
    plan = RenderPlan.of(policy)
    env = episode_env(
        job.suite,
        job.task_id,
        perturbation=job.perturbation,
        severity=job.severity,
        seed=job.seed,
        max_steps=job.max_steps,
        image_size=job.image_size,
        cameras=plan.cameras,
        render_images=plan.render_every_step,
        privileged=plan.privileged,
    )
    start = time.perf_counter()
    success, frames = play_episode(env, policy, job.init_index, plan, job.video_dir is not None)
    video = None
    if job.video_dir is not None:
        name = f"{job.suite}_task{job.task_id:02d}_init{job.init_index:02d}_{job.perturbation}"
        video = str(Path(job.video_dir) / f"{name}_{'success' if success else 'failure'}.mp4")
        write_video(video, frames)
    return EpisodeResult(
        suite=job.suite,
        task_id=job.task_id,
        task=env.task.name,
        instruction=env.instruction,
        init_index=job.init_index,
        perturbation=job.perturbation,
        severity=job.severity,
        success=bool(success),
        steps=env.num_steps,
        seconds=round(time.perf_counter() - start, 3),
        video=video,
    )


# ----------------------------------------------------------------------------- entry point
# The render size when neither the caller nor the policy's saved config gives one.
DEFAULT_IMAGE_SIZE = 128


def run_episode_row(job: EpisodeJob) -> dict[str, Any]:
    """`run_episode` as the row the episode log stores (module level: sent to worker processes)."""
    return asdict(run_episode(job))


def episode_error_row(job: EpisodeJob, error: EpisodeError) -> dict[str, Any]:
    """The row of an episode that raised: which episode, and the error (neither a success nor a failure)."""
    from .suites import get_task

    task = get_task(job.suite, job.task_id)
    return {
        "suite": job.suite,
        "task_id": job.task_id,
        "task": task.name,
        "instruction": task.language,
        "init_index": job.init_index,
        "perturbation": job.perturbation,
        "severity": job.severity,
        "success": None,
        "steps": None,
        "seconds": None,
        "video": None,
        "error": error.as_dict(),
    }


def evaluate_libero(
    suite: str,
    output_dir: str | os.PathLike,
    policy: str = "scripted",
    tasks: list[int] | None = None,
    episodes: int = 10,
    perturbation: str = "none",
    severity: int = 3,
    num_workers: int | None = None,
    video: bool = False,
    image_size: int | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    init_offset: int = 0,
    progress: bool = True,
    resume: bool = False,
    backend: str = "process",
    ray_address: str | None = None,
    ray_gpus_per_worker: float = 0.0,
    trust_remote_code: bool = False,
    n_action_steps: int | None = None,
    retry_errors: bool = False,
) -> dict[str, Any]:
    """Run `episodes` episodes per task and perturbation (init states `init_offset..`), write the reports.

    Every finished episode is appended to `output_dir/episodes.jsonl` (its settings in `eval_config.json`) as it
    ends. `resume=True` continues an interrupted evaluation: the recorded episodes are kept, only the missing ones
    run, and the reports are those of an uninterrupted run (a different configuration is refused). Without it, a
    folder that already holds recorded episodes is refused. At the end, writes `output_dir/results.json`,
    `results.md`, `success_rates.png` and, with `video`, `videos/*.mp4`. Returns the content of results.json.
    A policy folder naming a class outside the trusted packages (see `load_policy`) needs `trust_remote_code=True`.
    `n_action_steps` overrides how many actions of each predicted chunk the policy plays before predicting again.
    `image_size` (None: the size in the policy's saved config, else 128) is the render size; the report says which
    ran and why (`summary["image_size"]`).

    An episode that raises is recorded as an error row (`row["error"]`: type, message, where) and the others go on;
    errors are counted apart (`summary["num_errors"]`, `summary["errors"]`), in no success rate. A resumed run keeps
    them unless `retry_errors=True`.
    """
    from .suites import SUITE_MAX_STEPS, num_tasks

    try:
        check_n_action_steps(n_action_steps)
        if suite not in SUITE_MAX_STEPS:
            raise ValueError(f"Unknown suite {suite!r}; expected one of {', '.join(SUITE_MAX_STEPS)}")
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1; got {episodes}")
        if init_offset < 0 or init_offset + episodes > 50:
            raise ValueError(
                f"LIBERO ships 50 init states per task (0-49); init_offset={init_offset} with episodes={episodes} "
                f"needs states {init_offset}-{init_offset + episodes - 1}"
            )
        kinds = expand_perturbations(perturbation)
        Perturbation("none", severity)  # validates the severity
        task_ids = list(range(num_tasks(suite))) if not tasks else list(tasks)
        total_tasks = num_tasks(suite)
        bad = [t for t in task_ids if not 0 <= t < total_tasks]
        if bad:
            raise ValueError(f"{suite} has tasks 0..{total_tasks - 1}; got {bad}")
        spec = policy_spec(policy)
        from .policies import check_policy_spec

        check_policy_spec(spec, trust_remote_code)  # before any worker starts, nothing imported
        check_backend(backend, num_workers, ray_gpus_per_worker)
        size = choose_image_size(image_size, spec, DEFAULT_IMAGE_SIZE)
    except (ValueError, FileNotFoundError) as err:
        raise LiberoConfigError(str(err)) from err

    config = {
        "suite": suite,
        "tasks": task_ids,
        "episodes_per_task": episodes,
        "perturbations": kinds,
        "severity": severity,
        "policy": spec,
        "policy_name": "scripted expert" if spec == "scripted" else Path(spec).name,
        "image_size": size.pixels,
        "seed": seed,
        "max_steps": max_steps or SUITE_MAX_STEPS[suite],
        "init_offset": init_offset,
    }
    if n_action_steps is not None:  # only when given, so that folders written before the option still resume
        config["n_action_steps"] = n_action_steps
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    video_dir = None
    if video:
        video_dir = out / "videos"
        video_dir.mkdir(exist_ok=True)
    # The video flag changes the episode records (their `video` path), so it belongs to what a resume must match.
    recorded, log = open_episode_log(out, {**config, "video": video}, "resume" if resume else "new")
    jobs = [
        EpisodeJob(
            suite=suite,
            task_id=task_id,
            init_index=init_offset + k,
            perturbation=kind,
            severity=severity,
            policy=spec,
            image_size=size.pixels,
            seed=seed,
            max_steps=max_steps,
            video_dir=str(video_dir) if video_dir else None,
            trust_remote_code=trust_remote_code,
            n_action_steps=n_action_steps,
        )
        for task_id in task_ids
        for kind in kinds
        for k in range(episodes)
    ]
    run = run_episode_jobs(
        jobs,
        run_episode_row,
        log=log,
        recorded=recorded,
        job_key=lambda j: (j.task_id, j.perturbation, j.init_index),
        row_key=lambda r: (r["task_id"], r["perturbation"], r["init_index"]),
        num_workers=num_workers,
        desc=f"eval {suite}",
        progress=progress,
        backend=backend,
        ray_address=ray_address,
        ray_gpus_per_worker=ray_gpus_per_worker,
        error_row=episode_error_row,
        retry_errors=retry_errors,
    )
    results = {
        "config": config,
        "episodes": run.rows,
        "summary": {**summarize(run.rows), "image_size": size.as_dict()},
        "speed": run.speed(per_episode=True),
    }
    write_json(out / "results.json", results)
    write_text(out / "results.md", markdown_report(results))
    bar_chart(results, out / "success_rates.png")
    return results
