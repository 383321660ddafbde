"""Evaluate a policy on LIBERO / LIBERO-Plus: parallel episodes, results.json, a LIBERO-Plus table, a chart, videos."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_json, write_text
from .perturbations import LIBERO_PLUS_COLUMNS, PERTURBATIONS, Perturbation, expand_perturbations
from .records import open_episode_log
from .runtime import LiberoConfigError
from .workers import cached_policy, check_backend, episode_env, run_jobs


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


def check_n_action_steps(n_action_steps: int | None) -> None:
    if n_action_steps is not None and (isinstance(n_action_steps, bool) or n_action_steps < 1):
        raise ValueError(f"n_action_steps must be >= 1 (or None: the policy's own); got {n_action_steps}")


def _load_policy(spec: str, trust_remote_code: bool = False, n_action_steps: int | None = None):
    from .policies import load_policy

    policy = load_policy(spec, trust_remote_code=trust_remote_code)
    if n_action_steps is not None:
        policy.n_action_steps = n_action_steps
    return policy


def episode_policy(spec: str, trust_remote_code: bool = False, n_action_steps: int | None = None):
    """An episode's policy, loaded once per process (cached by its folder and its `n_action_steps` override)."""
    return cached_policy(f"{spec}|{n_action_steps}", lambda: _load_policy(spec, trust_remote_code, n_action_steps))


def run_episode(job: EpisodeJob) -> EpisodeResult:
    """One episode in this process (envs and policy cached between calls)."""

    policy = episode_policy(job.policy, job.trust_remote_code, job.n_action_steps)
    needs_images = bool(getattr(policy, "needs_images", True))
    privileged = bool(getattr(policy, "needs_privileged", False))
    cameras = tuple(getattr(policy, "image_keys", ("image", "wrist_image")))
    image_size = getattr(policy, "image_size", None) or job.image_size
    # A chunking policy looks at the cameras only when its action queue is empty: render just then.
    lazy_render = needs_images and callable(getattr(policy, "needs_observation", None))
    render_every_step = needs_images and not lazy_render
    env = episode_env(
        job.suite,
        job.task_id,
        perturbation=job.perturbation,
        severity=job.severity,
        seed=job.seed,
        max_steps=job.max_steps,
        image_size=image_size,
        cameras=cameras,
        render_images=render_every_step,
        privileged=privileged,
    )
    start = time.perf_counter()
    success, frames = play_episode(
        env, policy, job.init_index, lazy_render, render_every_step, job.video_dir is not None
    )
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


def play_episode(
    env, policy, init_index: int, lazy_render: bool, render_every_step: bool, record: bool
) -> tuple[bool, list[np.ndarray]]:
    """Reset `env` to `init_index` and run `policy` until success or the step limit; returns the success and, with
    `record`, the agent-view frames (the last one after the final step)."""
    policy.reset()
    observation = env.reset(init_index)
    frames: list[np.ndarray] = []
    success = env.check_success()
    while not success and env.num_steps < env.max_steps:
        if lazy_render and policy.needs_observation():
            observation = env.render_observation()
        if record:
            kept = observation.get("observation.images.image") if render_every_step else env.render("image", True)
            frames.append(kept)
        observation, _, terminated, truncated, info = env.step(np.asarray(policy.select_action(observation)))
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    if record:
        frames.append(env.render("image", for_record=True))  # noise of its own: the policy's stream is untouched
    return success, frames


def write_video(path: str | os.PathLike, frames: list[np.ndarray], fps: int = 20) -> None:
    """MP4 (H.264 through imageio-ffmpeg); sides padded to even sizes as yuv420p requires."""
    import imageio.v2 as imageio

    if not frames:
        return
    height, width = frames[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    with (
        atomic_path(path, suffix=".mp4") as tmp,
        imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=1) as writer,
    ):
        for frame in frames:
            writer.append_data(np.pad(frame, pad, mode="edge"))


# ----------------------------------------------------------------------------- summary and reports
def _rate(results: list[dict[str, Any]]) -> float | None:
    return float(np.mean([r["success"] for r in results])) if results else None


def summarize(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rates overall, by task, by perturbation, and in the LIBERO-Plus columns."""
    by_task: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(e["task"] for e in episodes):
        subset = [e for e in episodes if e["task"] == name]
        by_task[name] = {"task_id": subset[0]["task_id"], "success_rate": _rate(subset), "episodes": len(subset)}
    by_perturbation: dict[str, dict[str, Any]] = {}
    for kind in ["none", *PERTURBATIONS]:
        subset = [e for e in episodes if e["perturbation"] == kind]
        if subset:
            by_perturbation[kind] = {"success_rate": _rate(subset), "episodes": len(subset)}
    perturbed = [e for e in episodes if e["perturbation"] != "none"]
    libero_plus: dict[str, float | None] = {"Original": by_perturbation.get("none", {}).get("success_rate")}
    for kind, column in LIBERO_PLUS_COLUMNS.items():
        libero_plus[column] = by_perturbation.get(kind, {}).get("success_rate")
    # LIBERO-Plus "Total" is over the perturbed episodes; with no perturbation evaluated it is the plain rate.
    libero_plus["Total"] = _rate(perturbed) if perturbed else _rate(episodes)
    return {
        "success_rate": _rate(episodes),
        "num_episodes": len(episodes),
        "num_successes": int(sum(e["success"] for e in episodes)),
        "by_task": by_task,
        "by_perturbation": by_perturbation,
        "libero_plus": libero_plus,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_report(results: dict[str, Any]) -> str:
    """LIBERO-Plus style table (success %, one row per policy) plus a per-task table."""
    summary, config = results["summary"], results["config"]
    columns = list(summary["libero_plus"])
    if summary["libero_plus"]["Original"] is None:
        columns.remove("Original")
    lines = [
        f"# LIBERO evaluation: {config['suite']}",
        "",
        f"Policy `{config['policy']}`, {summary['num_episodes']} episodes, severity {config['severity']}, "
        f"seed {config['seed']}. Success rate in %.",
        "",
        "| Policy | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
        f"| {config['policy_name']} | " + " | ".join(_pct(summary["libero_plus"][c]) for c in columns) + " |",
        "",
        "| Task | Episodes | Success |",
        "|---|---:|---:|",
    ]
    for name, row in summary["by_task"].items():
        lines.append(f"| {row['task_id']}: {name} | {row['episodes']} | {_pct(row['success_rate'])} |")
    speed = results.get("speed", {})
    if speed.get("steps_per_second") and speed.get("episode_steps_per_second"):
        lines += [
            "",
            f"{speed['env_steps']} environment steps in {speed['wall_seconds']:.1f} s with {speed['workers']} "
            f"worker(s): {speed['steps_per_second']:.1f} steps/s overall, "
            f"{speed['episode_steps_per_second']:.1f} steps/s per worker inside episodes.",
        ]
    if speed.get("episodes_resumed"):
        lines += ["", f"{speed['episodes_resumed']} episode(s) resumed from an interrupted run's episodes.jsonl."]
    return "\n".join(lines) + "\n"


def bar_chart(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Success rate by perturbation (LIBERO-Plus columns) and by task, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    plus = {k: v for k, v in summary["libero_plus"].items() if v is not None}
    tasks = summary["by_task"]
    fig, axes = plt.subplots(
        1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [max(len(plus), 2), max(len(tasks), 2)]}
    )
    for ax, labels, values, title in (
        (axes[0], list(plus), [100 * v for v in plus.values()], "By perturbation (LIBERO-Plus)"),
        (
            axes[1],
            [str(r["task_id"]) for r in tasks.values()],
            [100 * r["success_rate"] for r in tasks.values()],
            "By task",
        ),
    ):
        bars = ax.bar(labels, values, color="#4C72B0")
        ax.set_ylim(0, 105)
        ax.set_ylabel("success (%)")
        ax.set_title(title)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.tick_params(axis="x", labelrotation=30)
    axes[1].set_xlabel("task id")
    fig.suptitle(f"{results['config']['suite']}: {results['config']['policy_name']}")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- entry point
def _policy_spec(policy: str | os.PathLike) -> str:
    """'scripted' or the absolute path of a policy / adapter folder (FileNotFoundError otherwise)."""
    policy_spec = str(policy) if str(policy) == "scripted" else str(Path(policy).resolve())
    if policy_spec != "scripted" and not any(
        (Path(policy_spec) / name).is_file() for name in ("config.json", "adapter_config.json")
    ):
        raise FileNotFoundError(
            f"--policy must be 'scripted', a policy folder with config.json or an adapter folder with "
            f"adapter_config.json; got {policy}"
        )
    return policy_spec


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
    image_size: int = 128,
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
) -> dict[str, Any]:
    """Run `episodes` episodes per task and perturbation (init states `init_offset..`), write the reports.

    Every finished episode is appended to `output_dir/episodes.jsonl` (its settings in `eval_config.json`) as it
    ends. `resume=True` continues an interrupted evaluation: the recorded episodes are kept, only the missing ones
    run, and the reports are those of an uninterrupted run (a different configuration is refused). Without it, a
    folder that already holds recorded episodes is refused. At the end, writes `output_dir/results.json`,
    `results.md`, `success_rates.png` and, with `video`, `videos/*.mp4`. Returns the content of results.json.
    A policy folder naming a class outside the trusted packages (see `load_policy`) needs `trust_remote_code=True`.
    `n_action_steps` overrides how many actions of each predicted chunk the policy plays before predicting again.
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
        policy_spec = _policy_spec(policy)
        from .policies import check_policy_spec

        check_policy_spec(policy_spec, trust_remote_code)  # before any worker starts, nothing imported
        check_backend(backend, num_workers, ray_gpus_per_worker)
    except (ValueError, FileNotFoundError) as err:
        raise LiberoConfigError(str(err)) from err

    config = {
        "suite": suite,
        "tasks": task_ids,
        "episodes_per_task": episodes,
        "perturbations": kinds,
        "severity": severity,
        "policy": policy_spec,
        "policy_name": "scripted expert" if policy_spec == "scripted" else Path(policy_spec).name,
        "image_size": image_size,
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
    done = {(r["task_id"], r["perturbation"], r["init_index"]): r for r in recorded}
    jobs = [
        EpisodeJob(
            suite=suite,
            task_id=task_id,
            init_index=init_offset + k,
            perturbation=kind,
            severity=severity,
            policy=policy_spec,
            image_size=image_size,
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
    order = {(j.task_id, j.perturbation, j.init_index): i for i, j in enumerate(jobs)}
    todo = [j for j in jobs if (j.task_id, j.perturbation, j.init_index) not in done]
    ray_options = {"backend": backend, "ray_address": ray_address, "ray_gpus_per_worker": ray_gpus_per_worker}
    pool: dict[str, Any] = {"workers": 0}
    start = time.perf_counter()
    ran = []
    with log:
        if todo:
            for result in run_jobs(
                run_episode, todo, num_workers, desc=f"eval {suite}", progress=progress, info=pool, **ray_options
            ):
                row = asdict(result)
                log.append(row)
                ran.append(row)
    wall = time.perf_counter() - start
    for row in ran:
        done[(row["task_id"], row["perturbation"], row["init_index"])] = row
    collected = sorted(done.values(), key=lambda r: order[(r["task_id"], r["perturbation"], r["init_index"])])
    # Speed of the episodes this call ran (a resumed call did not time the recorded ones).
    env_steps = int(sum(r["steps"] for r in ran))
    episode_seconds = float(sum(r["seconds"] for r in ran))
    results = {
        "config": config,
        "episodes": collected,
        "summary": summarize(collected),
        "speed": {
            "episodes_run": len(ran),
            "episodes_resumed": len(collected) - len(ran),
            "env_steps": env_steps,
            "wall_seconds": round(wall, 2),
            "workers": pool["workers"],
            "backend": backend,
            "steps_per_second": round(env_steps / wall, 2) if ran and wall > 0 else None,
            # Inside episodes only (no process start-up or env creation): the simulation + policy rate per worker.
            "episode_steps_per_second": round(env_steps / episode_seconds, 2) if episode_seconds > 0 else None,
        },
    }
    write_json(out / "results.json", results)
    write_text(out / "results.md", markdown_report(results))
    bar_chart(results, out / "success_rates.png")
    return results
