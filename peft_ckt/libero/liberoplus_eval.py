"""Evaluation on the official LIBERO-Plus tasks: the published table's seven columns, offline where the files allow.

Tasks whose files are missing (with the LIBERO assets: all Light, most Background and the Layout-add tasks) are
reported as not runnable, never as failures; the Total is then labelled as over the runnable subset. Episodes run in
the same worker pool, with the same incremental `episodes.jsonl`, `--resume` and reports as `evaluate_libero`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_json, write_text
from .envs import LiberoPlusEnvConfig, make_env
from .episode import (
    RenderPlan,
    check_n_action_steps,
    choose_image_size,
    episode_policy,
    play_episode,
    policy_spec,
    write_video,
)
from .liberoplus import (
    DIMENSIONS,
    OFFICIAL_IMAGE_SIZE,
    OFFICIAL_INIT_INDEX,
    OFFICIAL_SEED,
    OFFICIAL_SETTLE_STEPS,
    OFFICIAL_SUITES,
    configure_liberoplus,
    get_official_task,
    list_official_tasks,
    missing_files,
)
from .records import open_episode_log
from .runner import EpisodeError, run_episode_jobs
from .runtime import LiberoConfigError
from .tables.liberoplus import TOTAL_OVER_SUBSET, bar_chart_official, markdown_report_official, summarize_official
from .workers import cached_env, check_backend

__all__ = [
    "TOTAL_OVER_SUBSET",
    "OfficialEpisodeJob",
    "OfficialEpisodeResult",
    "evaluate_liberoplus",
    "official_error_row",
    "load_task_classification",
    "markdown_report_official",
    "run_official_episode",
    "run_official_episode_row",
    "summarize_official",
]


@dataclass(frozen=True)
class OfficialEpisodeJob:
    suite: str
    task: str
    init_index: int
    policy: str
    image_size: int
    seed: int
    max_steps: int | None
    assets: str | None
    video_dir: str | None
    n_action_steps: int | None = None  # None: the policy's own setting


@dataclass
class OfficialEpisodeResult:
    suite: str
    task_index: int
    task: str
    dimension: str
    instruction: str
    init_index: int
    success: bool
    steps: int
    seconds: float
    video: str | None = None


def run_official_episode(job: OfficialEpisodeJob) -> OfficialEpisodeResult:
    """One episode of an official task in this process (env and policy cached between calls)."""
    configure_liberoplus(job.assets)
    policy = episode_policy(job.policy, n_action_steps=job.n_action_steps)
    plan = RenderPlan.of(policy)
    config = LiberoPlusEnvConfig(
        suite=job.suite,
        task=job.task,
        assets=job.assets,
        image_size=job.image_size,
        cameras=plan.cameras,
        render_images=plan.render_every_step,
        privileged=plan.privileged,
        seed=job.seed,
        max_steps=job.max_steps,
    )
    env = cached_env(config.cache_key(), lambda: make_env(config))
    task = get_official_task(job.suite, job.task)
    start = time.perf_counter()
    success, frames = play_episode(env, policy, job.init_index, plan, job.video_dir is not None)
    video = None
    if job.video_dir is not None:
        video = str(Path(job.video_dir) / f"{job.suite}_{task.index:04d}_{'success' if success else 'failure'}.mp4")
        write_video(video, frames)
    return OfficialEpisodeResult(
        suite=job.suite,
        task_index=task.index,
        task=task.name,
        dimension=task.dimension,
        instruction=env.instruction,
        init_index=job.init_index,
        success=bool(success),
        steps=env.num_steps,
        seconds=round(time.perf_counter() - start, 3),
        video=video,
    )


# ----------------------------------------------------------------------------- levels (user-supplied file)
def load_task_classification(path: str | os.PathLike) -> dict[str, str]:
    """Task name -> difficulty level from the benchmark's classification file (JSON), which users supply.

    Accepted shapes: `{task_name: level}`, `{task_name: {"level": ...}}` or a list of records with a task name
    (`task`, `name` or `task_name`) and a level (`level` or `difficulty`).
    """
    path = Path(path)
    if not path.is_file():
        raise LiberoConfigError(f"task_classification {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LiberoConfigError(f"task_classification {path}: not JSON ({err})") from err

    def level_of(value: Any) -> str | None:
        if isinstance(value, dict):
            value = value.get("level", value.get("difficulty"))
        return None if value is None else str(value)

    levels: dict[str, str] = {}
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = [
            (next((r[k] for k in ("task", "name", "task_name") if k in r), None), r)
            for r in data
            if isinstance(r, dict)
        ]
    else:
        items = []
    for name, value in items:
        level = level_of(value)
        if isinstance(name, str) and level is not None:
            levels[name.removesuffix(".bddl")] = level
    if not levels:
        raise LiberoConfigError(f"task_classification {path}: found no task -> level entries")
    return levels


# ----------------------------------------------------------------------------- entry point
def run_official_episode_row(job: OfficialEpisodeJob) -> dict[str, Any]:
    """`run_official_episode` as the row the episode log stores (module level: sent to worker processes)."""
    return asdict(run_official_episode(job))


def official_error_row(job: OfficialEpisodeJob, error: EpisodeError) -> dict[str, Any]:
    """The row of an official episode that raised: which task and init state, and the error (neither a success
    nor a failure)."""
    task = get_official_task(job.suite, job.task)
    return {
        "suite": job.suite,
        "task_index": task.index,
        "task": task.name,
        "dimension": task.dimension,
        "instruction": task.language,
        "init_index": job.init_index,
        "success": None,
        "steps": None,
        "seconds": None,
        "video": None,
        "error": error.as_dict(),
    }


def evaluate_liberoplus(
    suite: str,
    output_dir: str | os.PathLike,
    policy: str = "scripted",
    dimensions: list[str] | None = None,
    limit_per_dimension: int | None = None,
    episodes: int = 1,
    num_workers: int | None = None,
    video: bool = False,
    image_size: int | None = None,
    seed: int = OFFICIAL_SEED,
    max_steps: int | None = None,
    assets: str | os.PathLike | None = None,
    task_classification: str | os.PathLike | None = None,
    progress: bool = True,
    resume: bool = False,
    backend: str = "process",
    ray_address: str | None = None,
    ray_gpus_per_worker: float = 0.0,
    n_action_steps: int | None = None,
    retry_errors: bool = False,
) -> dict[str, Any]:
    """Run the official tasks of `suite` (all, or the first `limit_per_dimension` per dimension in the benchmark's
    order), `episodes` per task from init states 0.. (official: 1), and write the reports to `output_dir`.

    Writes `episodes.jsonl` as episodes end (`resume=True` continues an interrupted run), then `results.json`
    (`summary`: the seven columns, the Total over what ran, not-runnable counts per column), `results.md` and
    `success_rates.png`. Returns the content of results.json.

    `image_size` (None: the size in the policy's saved config, else the official 256) is the size the policy sees;
    the sensor noise of the Noise tasks is applied at the benchmark's own resolution first (see `LiberoPlusEnv`).
    An episode that raises is recorded as an error row and the others go on; errors are in no success rate
    (`summary["num_errors"]`, `summary["errors"]`), and a resumed run keeps them unless `retry_errors=True`.
    """
    from .suites import SUITE_MAX_STEPS

    try:
        check_n_action_steps(n_action_steps)
        if suite not in OFFICIAL_SUITES:
            raise ValueError(f"LIBERO-Plus has no suite {suite!r}; expected one of {', '.join(OFFICIAL_SUITES)}")
        chosen = list(DIMENSIONS) if not dimensions else list(dict.fromkeys(dimensions))
        unknown = [d for d in chosen if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown LIBERO-Plus dimension(s) {unknown}; expected among {', '.join(DIMENSIONS)}")
        if limit_per_dimension is not None and limit_per_dimension < 1:
            raise ValueError(f"limit_per_dimension must be >= 1; got {limit_per_dimension}")
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1; got {episodes}")
        spec = policy_spec(policy)
        from .policies import check_policy_spec

        check_policy_spec(spec, False)  # before any worker starts, nothing of the policy's imported
        check_backend(backend, num_workers, ray_gpus_per_worker)
        size = choose_image_size(image_size, spec, OFFICIAL_IMAGE_SIZE)
        assets_path = str(Path(assets).expanduser().resolve()) if assets is not None else None
        levels = load_task_classification(task_classification) if task_classification is not None else None
    except (ValueError, FileNotFoundError) as err:
        raise LiberoConfigError(str(err)) from err
    paths = configure_liberoplus(assets_path)

    all_tasks = list_official_tasks(suite)
    official = {DIMENSIONS[d]: sum(t.dimension == d for t in all_tasks) for d in DIMENSIONS}
    selected_tasks = []
    for dimension in chosen:
        of_dimension = [t for t in all_tasks if t.dimension == dimension]
        selected_tasks += of_dimension[:limit_per_dimension] if limit_per_dimension else of_dimension
    selected_tasks.sort(key=lambda t: t.index)
    missing = {t.name: missing_files(t, paths.assets) for t in selected_tasks}
    runnable = [t for t in selected_tasks if not missing[t.name]]
    selected = {DIMENSIONS[d]: sum(t.dimension == d for t in selected_tasks) for d in DIMENSIONS}
    not_runnable = {
        DIMENSIONS[d]: sum(t.dimension == d and bool(missing[t.name]) for t in selected_tasks) for d in DIMENSIONS
    }

    config = {
        "benchmark": "libero-plus",
        "suite": suite,
        "dimensions": chosen,
        "limit_per_dimension": limit_per_dimension,
        "episodes_per_task": episodes,
        "policy": spec,
        "policy_name": "scripted expert" if spec == "scripted" else Path(spec).name,
        "image_size": size.pixels,
        "seed": seed,
        "settle_steps": OFFICIAL_SETTLE_STEPS,
        "max_steps": max_steps or SUITE_MAX_STEPS[suite],
        "assets": str(paths.assets),
    }
    if n_action_steps is not None:
        config["n_action_steps"] = n_action_steps
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    video_dir = None
    if video:
        video_dir = out / "videos"
        video_dir.mkdir(exist_ok=True)
    recorded, log = open_episode_log(out, {**config, "video": video}, "resume" if resume else "new")
    jobs = [
        OfficialEpisodeJob(
            suite=suite,
            task=task.name,
            init_index=OFFICIAL_INIT_INDEX + k,
            policy=spec,
            image_size=size.pixels,
            seed=seed,
            max_steps=max_steps,
            assets=assets_path,
            video_dir=str(video_dir) if video_dir else None,
            n_action_steps=n_action_steps,
        )
        for task in runnable
        for k in range(episodes)
    ]
    run = run_episode_jobs(
        jobs,
        run_official_episode_row,
        log=log,
        recorded=recorded,
        job_key=lambda j: (j.task, j.init_index),
        row_key=lambda r: (r["task"], r["init_index"]),
        num_workers=num_workers,
        desc=f"LIBERO-Plus {suite}",
        progress=progress,
        backend=backend,
        ray_address=ray_address,
        ray_gpus_per_worker=ray_gpus_per_worker,
        error_row=official_error_row,
        retry_errors=retry_errors,
    )
    results = {
        "config": config,
        "episodes": run.rows,
        "not_runnable": [{"task": name, "missing": files} for name, files in missing.items() if files],
        "summary": {
            **summarize_official(run.rows, selected, not_runnable, official, levels),
            "image_size": size.as_dict(),
        },
        "speed": run.speed(),
    }
    write_json(out / "results.json", results)
    write_text(out / "results.md", markdown_report_official(results))
    bar_chart_official(results, out / "success_rates.png")
    return results
