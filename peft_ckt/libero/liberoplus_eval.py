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

import numpy as np

from ..atomic import atomic_path, write_json, write_text
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
from .runtime import LiberoConfigError
from .workers import cached_env, check_backend, run_jobs

TOTAL_OVER_SUBSET = "Total (runnable subset)"


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
    from .evaluation import episode_policy, play_episode, write_video
    from .liberoplus import make_env

    configure_liberoplus(job.assets)
    task = get_official_task(job.suite, job.task)
    policy = episode_policy(job.policy, n_action_steps=job.n_action_steps)
    needs_images = bool(getattr(policy, "needs_images", True))
    privileged = bool(getattr(policy, "needs_privileged", False))
    cameras = tuple(getattr(policy, "image_keys", ("image", "wrist_image")))
    lazy_render = needs_images and callable(getattr(policy, "needs_observation", None))
    render_every_step = needs_images and not lazy_render
    key = ("liberoplus", job.suite, job.task, job.image_size, cameras, render_every_step, privileged, job.seed)
    env = cached_env(
        key,
        lambda: make_env(
            task,
            image_size=job.image_size,
            cameras=cameras,
            render_images=render_every_step,
            privileged=privileged,
            seed=job.seed,
            max_steps=job.max_steps,
        ),
    )
    start = time.perf_counter()
    success, frames = play_episode(
        env, policy, job.init_index, lazy_render, render_every_step, job.video_dir is not None
    )
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
        raise LiberoConfigError(f"--task-classification {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LiberoConfigError(f"--task-classification {path}: not JSON ({err})") from err

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
        raise LiberoConfigError(f"--task-classification {path}: found no task -> level entries")
    return levels


# ----------------------------------------------------------------------------- summary and report
def _rate(rows: list[dict[str, Any]]) -> float | None:
    return float(np.mean([r["success"] for r in rows])) if rows else None


def summarize_official(
    episodes: list[dict[str, Any]],
    selected: dict[str, int],
    not_runnable: dict[str, int],
    official: dict[str, int],
    levels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The published table's columns over the episodes that ran, with what did not run and what is complete.

    `selected` / `not_runnable` / `official`: per column, the tasks chosen, those of them not runnable offline, and
    the suite's official task count. A column is complete when every official task of it ran.
    """
    columns: dict[str, float | None] = {}
    detail: dict[str, dict[str, Any]] = {}
    for dimension, column in DIMENSIONS.items():
        rows = [e for e in episodes if e["dimension"] == dimension]
        columns[column] = _rate(rows)
        ran_tasks = len({e["task"] for e in rows})
        detail[column] = {
            "success_rate": columns[column],
            "episodes": len(rows),
            "tasks_selected": selected.get(column, 0),
            "tasks_run": ran_tasks,
            "not_runnable": not_runnable.get(column, 0),
            "official_tasks": official.get(column, 0),
            "complete": ran_tasks == official.get(column, 0) and ran_tasks > 0,
        }
    complete = all(d["complete"] for d in detail.values())
    total = _rate(episodes)
    summary: dict[str, Any] = {
        **columns,
        "Total": total,
        "total_label": "Total" if complete else TOTAL_OVER_SUBSET,
        "complete": complete,
        "not_runnable": {c: d["not_runnable"] for c, d in detail.items()},
        "columns": detail,
        "num_episodes": len(episodes),
        "num_successes": int(sum(e["success"] for e in episodes)),
        "num_not_runnable": int(sum(not_runnable.values())),
    }
    if levels is not None:
        by_level: dict[str, dict[str, Any]] = {}
        for level in sorted({levels[e["task"]] for e in episodes if e["task"] in levels}):
            rows = [e for e in episodes if levels.get(e["task"]) == level]
            by_level[level] = {DIMENSIONS[d]: _rate([e for e in rows if e["dimension"] == d]) for d in DIMENSIONS} | {
                "Total": _rate(rows),
                "episodes": len(rows),
            }
        summary["by_level"] = by_level
        summary["unclassified_episodes"] = sum(e["task"] not in levels for e in episodes)
    return summary


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_report_official(results: dict[str, Any]) -> str:
    summary, config = results["summary"], results["config"]
    columns = list(DIMENSIONS.values())
    total_label = summary["total_label"]
    lines = [
        f"# Official LIBERO-Plus tasks: {config['suite']}",
        "",
        f"Policy `{config['policy']}`, {summary['num_episodes']} episodes ({config['episodes_per_task']} per task), "
        f"{config['image_size']} px, seed {config['seed']}, {config['settle_steps']} settle steps, "
        f"{config['max_steps']} steps at most. Success rate in %.",
        "",
        "| Policy | " + " | ".join(columns) + f" | {total_label} |",
        "|---|" + "---:|" * (len(columns) + 1),
        f"| {config['policy_name']} | "
        + " | ".join(_pct(summary[c]) for c in columns)
        + f" | {_pct(summary['Total'])} |",
        "",
        "| Column | Tasks run | Not runnable offline | Official tasks | Complete |",
        "|---|---:|---:|---:|---|",
    ]
    for column, row in summary["columns"].items():
        lines.append(
            f"| {column} | {row['tasks_run']} | {row['not_runnable']} | {row['official_tasks']} | "
            f"{'yes' if row['complete'] else 'no'} |"
        )
    if not summary["complete"]:
        lines += [
            "",
            f"{total_label}: pooled over the episodes that ran; the published Total is over all "
            f"{sum(r['official_tasks'] for r in summary['columns'].values())} official tasks of the suite. "
            f"{summary['num_not_runnable']} selected task(s) need files that are not installed (the benchmark's "
            "assets: --assets PATH).",
        ]
    if "by_level" in summary:
        lines += ["", "| Level | " + " | ".join(columns) + " | Total | Episodes |", "|---|" + "---:|" * 9]
        for level, row in summary["by_level"].items():
            lines.append(
                f"| {level} | "
                + " | ".join(_pct(row[c]) for c in columns)
                + f" | {_pct(row['Total'])} | {row['episodes']} |"
            )
    speed = results.get("speed", {})
    if speed.get("episodes_resumed"):
        lines += ["", f"{speed['episodes_resumed']} episode(s) resumed from an interrupted run's episodes.jsonl."]
    return "\n".join(lines) + "\n"


def _bar_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    labels = [*DIMENSIONS.values(), "Total"]
    values = [100 * summary[c] if summary[c] is not None else 0.0 for c in labels]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(labels, values, color=["#4C72B0"] * 7 + ["#DD8452"])
    for bar, label in zip(bars, labels):
        if summary[label] is None:
            bar.set_alpha(0.25)
    ax.bar_label(bars, labels=[_pct(summary[c]) for c in labels], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("success (%)")
    ax.set_title(f"Official LIBERO-Plus {results['config']['suite']}: {results['config']['policy_name']}")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- entry point
def evaluate_liberoplus(
    suite: str,
    output_dir: str | os.PathLike,
    policy: str = "scripted",
    dimensions: list[str] | None = None,
    limit_per_dimension: int | None = None,
    episodes: int = 1,
    num_workers: int | None = None,
    video: bool = False,
    image_size: int = OFFICIAL_IMAGE_SIZE,
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
) -> dict[str, Any]:
    """Run the official tasks of `suite` (all, or the first `limit_per_dimension` per dimension in the benchmark's
    order), `episodes` per task from init states 0.. (official: 1), and write the reports to `output_dir`.

    Writes `episodes.jsonl` as episodes end (`resume=True` continues an interrupted run), then `results.json`
    (`summary`: the seven columns, the Total over what ran, not-runnable counts per column), `results.md` and
    `success_rates.png`. Returns the content of results.json.
    """
    from .evaluation import _policy_spec, check_n_action_steps
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
            raise ValueError(f"--limit-per-dimension must be >= 1; got {limit_per_dimension}")
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1; got {episodes}")
        policy_spec = _policy_spec(policy)
        from .policies import check_policy_spec

        check_policy_spec(policy_spec, False)  # before any worker starts, nothing of the policy's imported
        check_backend(backend, num_workers, ray_gpus_per_worker)
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
        "policy": policy_spec,
        "policy_name": "scripted expert" if policy_spec == "scripted" else Path(policy_spec).name,
        "image_size": image_size,
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
    done = {(r["task"], r["init_index"]): r for r in recorded}
    jobs = [
        OfficialEpisodeJob(
            suite=suite,
            task=task.name,
            init_index=OFFICIAL_INIT_INDEX + k,
            policy=policy_spec,
            image_size=image_size,
            seed=seed,
            max_steps=max_steps,
            assets=assets_path,
            video_dir=str(video_dir) if video_dir else None,
            n_action_steps=n_action_steps,
        )
        for task in runnable
        for k in range(episodes)
    ]
    order = {(j.task, j.init_index): i for i, j in enumerate(jobs)}
    todo = [j for j in jobs if (j.task, j.init_index) not in done]
    ray_options = {"backend": backend, "ray_address": ray_address, "ray_gpus_per_worker": ray_gpus_per_worker}
    pool: dict[str, Any] = {"workers": 0}
    start = time.perf_counter()
    ran = []
    with log:
        if todo:
            for result in run_jobs(
                run_official_episode,
                todo,
                num_workers,
                desc=f"LIBERO-Plus {suite}",
                progress=progress,
                info=pool,
                **ray_options,
            ):
                row = asdict(result)
                log.append(row)
                ran.append(row)
    wall = time.perf_counter() - start
    for row in ran:
        done[(row["task"], row["init_index"])] = row
    collected = sorted(done.values(), key=lambda r: order[(r["task"], r["init_index"])])
    env_steps = int(sum(r["steps"] for r in ran))
    results = {
        "config": config,
        "episodes": collected,
        "not_runnable": [{"task": name, "missing": files} for name, files in missing.items() if files],
        "summary": summarize_official(collected, selected, not_runnable, official, levels),
        "speed": {
            "episodes_run": len(ran),
            "episodes_resumed": len(collected) - len(ran),
            "env_steps": env_steps,
            "wall_seconds": round(wall, 2),
            "workers": pool["workers"],
            "backend": backend,
            "steps_per_second": round(env_steps / wall, 2) if ran and wall > 0 else None,
        },
    }
    write_json(out / "results.json", results)
    write_text(out / "results.md", markdown_report_official(results))
    _bar_chart(results, out / "success_rates.png")
    return results
