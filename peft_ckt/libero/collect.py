"""Collect scripted-expert demonstrations into a LeRobot-format dataset, in parallel worker processes.

Each worker runs the expert with physics only (no rendering: ~10x faster), recording the MuJoCo state of every
step. Only episodes that are kept (successful ones by default) are then rendered, by replaying the recorded states
(no second simulation), and their frames PNG-encoded in the worker. The main process writes the parquet files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json
from .perturbations import Perturbation, expand_perturbations
from .records import RecordLog, config_differences, read_records
from .runtime import LiberoConfigError
from .workers import cached_policy, default_num_workers, episode_env, run_jobs


@dataclass(frozen=True)
class CollectJob:
    suite: str
    task_id: int
    init_index: int
    perturbation: str
    severity: int
    image_size: int
    seed: int
    keep_failures: bool
    max_steps: int | None
    image_stride: int = 1


def collect_episode(job: CollectJob) -> dict[str, Any]:
    """Run one expert episode without rendering; render and encode its frames if it is kept."""
    from .dataset import encode_png
    from .policies import ScriptedExpertPolicy

    policy = cached_policy("scripted", ScriptedExpertPolicy)
    env = episode_env(
        job.suite,
        job.task_id,
        perturbation=job.perturbation,
        severity=job.severity,
        seed=job.seed,
        max_steps=job.max_steps,
        image_size=job.image_size,
        render_images=False,
        privileged=True,
    )
    start = time.perf_counter()
    policy.reset()
    observation = env.reset(job.init_index)
    states, actions, sim_states = [], [], []
    success = env.check_success()
    while not success and env.num_steps < env.max_steps:
        action = np.asarray(policy.select_action(observation), dtype=np.float32)
        states.append(observation["observation.state"])
        actions.append(action)
        sim_states.append(env.sim.get_state().flatten())
        observation, _, terminated, truncated, info = env.step(action)
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    physics_seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "suite": job.suite,
        "task_id": job.task_id,
        "init_index": job.init_index,
        "perturbation": job.perturbation,
        "severity": job.severity,
        "task": env.instruction,
        "success": bool(success),
        "length": len(actions),
        "physics_seconds": physics_seconds,
        "images": None,
    }
    if actions and (success or job.keep_failures):
        render_start = time.perf_counter()
        images: dict[str, list[bytes]] = {key: [] for key in env.cameras}
        last = len(sim_states) - 1
        for index, flat in enumerate(sim_states):
            if index % job.image_stride and index != last:
                # A camera at 1/stride of the control rate: the frame in between holds the last render.
                for key in env.cameras:
                    images[key].append(images[key][-1])
                continue
            env.sim.set_state_from_flattened(flat)
            env.sim.forward()
            for key in env.cameras:
                images[key].append(encode_png(env.render(key)))
        result["images"] = images
        result["states"] = np.stack(states)
        result["actions"] = np.stack(actions)
        result["render_seconds"] = time.perf_counter() - render_start
    return result


def _collect_tagged(tagged: tuple[int, tuple[str, CollectJob]]) -> dict[str, Any]:
    """`collect_episode` of a job tagged with its position and the dataset it belongs to (module level: sent to
    worker processes)."""
    index, (name, job) = tagged
    return {**collect_episode(job), "dataset": name, "image_stride": job.image_stride, "index": index}


def collect_into(
    jobs: Sequence[tuple[str, CollectJob]],
    writers: dict[str, Any],
    num_workers: int | None,
    desc: str,
    progress: bool = True,
) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Runs expert episodes of one or several datasets in one worker pool and writes each kept episode into its
    dataset's writer (`LeRobotDatasetWriter`) in the order of `jobs`, whatever order the workers finish them in: the
    same jobs then give the same dataset, episode for episode, on every run (a training that reads it in order, too).

    `jobs` are `(dataset name, job)` pairs (keep each task's jobs together: a worker then builds each task's
    environment once). Yields `(dataset name, result, kept)` per episode as it is written, for the caller's
    bookkeeping.
    """
    finished: dict[int, dict[str, Any]] = {}  # episodes that ended before an earlier job: held until it has
    written = 0
    for result in run_jobs(_collect_tagged, list(enumerate(jobs)), num_workers, desc=desc, progress=progress):
        finished[result.pop("index")] = result
        while written in finished:
            result = finished.pop(written)
            written += 1
            kept = result["images"] is not None
            if kept:
                writers[result["dataset"]].add_episode(
                    result["states"],
                    result["actions"],
                    result["images"],
                    task=result["task"],
                    extra={
                        key: result[key]
                        for key in (
                            "success",
                            "suite",
                            "task_id",
                            "init_index",
                            "perturbation",
                            "severity",
                            "image_stride",
                        )
                    },
                )
            yield result["dataset"], result, kept


COLLECTION_CONFIG = "collection.json"
COLLECTION_ATTEMPTS = "collection_attempts.jsonl"


def _job_key(row: dict[str, Any]) -> tuple[int, str, int]:
    return (int(row["task_id"]), str(row["perturbation"]), int(row["init_index"]))


def check_collection_folder(root: Path, config: dict[str, Any], resume: bool) -> None:
    """Refuse, in one line, a folder this collection cannot write to: a non-empty one without `resume`, or a
    resumed one that was collected with other settings."""
    meta = root / "meta"
    if not root.exists() or not any(root.iterdir()):
        return
    episodes = read_records(meta / "episodes.jsonl")
    complete = (meta / "info.json").is_file()
    if not resume:
        if complete:
            state = f"already holds a dataset ({len(episodes)} episode(s))"
        elif (meta / COLLECTION_CONFIG).is_file():
            state = f"holds an interrupted collection ({len(episodes)} episode(s) kept, no meta/info.json)"
        else:
            state = "is not empty"
        raise FileExistsError(
            f"Dataset folder {root} {state}: continue the same collection with --resume (resume=True), or choose "
            f"a new folder"
        )
    if (meta / COLLECTION_CONFIG).is_file():
        differences = config_differences(json.loads((meta / COLLECTION_CONFIG).read_text()), config)
        if differences:
            raise ValueError(
                f"cannot resume the collection in {root}: the recorded settings differ ({differences}); run again "
                f"with the recorded settings, or without --resume into a new folder"
            )
    elif episodes:
        raise ValueError(
            f"cannot resume the collection in {root}: it holds {len(episodes)} episode(s) but no meta/"
            f"{COLLECTION_CONFIG} saying how they were collected; choose a new folder"
        )


def collect_demonstrations(
    suite: str,
    output_dir: str | os.PathLike,
    tasks: list[int] | None = None,
    episodes: int = 10,
    perturbation: str = "none",
    severity: int = 3,
    image_size: int = 128,
    num_workers: int | None = None,
    seed: int = 0,
    keep_failures: bool = False,
    max_steps: int | None = None,
    init_offset: int = 0,
    progress: bool = True,
    image_stride: int = 1,
    resume: bool = False,
) -> dict[str, Any]:
    """Collect `episodes` expert demonstrations per task (init states `init_offset..`) into `output_dir`.

    Every kept episode is on disk as soon as it is written; `meta/collection.json` holds the settings and
    `meta/collection_attempts.jsonl` every finished attempt. `resume=True` finishes an interrupted collection with
    the same settings (only the missing episodes run); a different configuration is refused.

    `image_stride` k > 1 renders the cameras on every k-th step only (and on the last one); the steps in between
    repeat the last frame, like a camera at 1/k of the control rate. Rendering is most of the cost on CPU.
    Episodes record `image_stride` in their metadata.

    Returns a summary: episodes attempted / kept, frames, success rate, physics and render speed.
    """
    from .dataset import LeRobotDatasetWriter
    from .env import CAMERAS
    from .suites import num_tasks

    try:
        kinds = expand_perturbations(perturbation)
        Perturbation("none", severity)
        total = num_tasks(suite)
        task_ids = list(range(total)) if not tasks else list(tasks)
        if any(not 0 <= t < total for t in task_ids):
            raise ValueError(f"{suite} has tasks 0..{total - 1}; got {task_ids}")
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1; got {episodes}")
        if init_offset < 0 or init_offset + episodes > 50:
            raise ValueError(
                f"LIBERO ships 50 init states per task (0-49); init_offset={init_offset} with episodes={episodes} "
                f"needs states {init_offset}-{init_offset + episodes - 1}"
            )
        if image_stride < 1:
            raise ValueError(f"image_stride must be >= 1; got {image_stride}")
        config = {
            "suite": suite,
            "tasks": task_ids,
            "episodes": episodes,
            "init_offset": init_offset,
            "perturbations": kinds,
            "severity": severity,
            "image_size": image_size,
            "seed": seed,
            "keep_failures": keep_failures,
            "max_steps": max_steps,
            "image_stride": image_stride,
        }
        root = Path(output_dir)
        check_collection_folder(root, config, resume)
        writer = LeRobotDatasetWriter(
            root, image_keys=tuple(CAMERAS), image_size=(image_size, image_size), resume=resume
        )
        write_json(root / "meta" / COLLECTION_CONFIG, config)
        attempts = RecordLog(root / "meta" / COLLECTION_ATTEMPTS)
        # Done: every recorded attempt, and every recorded episode (its attempt line may have been cut by a kill).
        done = {_job_key(row) for row in attempts.open()} | {_job_key(row) for row in writer.episodes}
    except (ValueError, OSError) as err:
        raise LiberoConfigError(str(err)) from err
    jobs = [
        job
        for job in (
            CollectJob(
                suite, t, init_offset + k, kind, severity, image_size, seed, keep_failures, max_steps, image_stride
            )
            for t in task_ids
            for kind in kinds
            for k in range(episodes)
        )
        if _job_key(vars(job)) not in done
    ]
    workers = default_num_workers(len(jobs)) if num_workers is None else num_workers
    resumed = len(done)
    physics_steps = physics_seconds = render_frames = render_seconds = 0.0
    start = time.perf_counter()
    ran = 0
    with attempts:
        if jobs:
            tagged = [("collection", job) for job in jobs]
            for _, result, kept in collect_into(tagged, {"collection": writer}, workers, f"collect {suite}", progress):
                ran += 1
                physics_steps += result["length"]
                physics_seconds += result["physics_seconds"]
                if kept:
                    render_frames += result["length"]
                    render_seconds += result["render_seconds"]
                attempts.append(
                    {
                        **{k: result[k] for k in ("task_id", "init_index", "perturbation", "success", "length")},
                        "kept": kept,
                    }
                )
        writer.finalize()
    wall = time.perf_counter() - start
    recorded = {_job_key(row): row for row in writer.episodes}
    recorded.update((_job_key(row), row) for row in read_records(root / "meta" / COLLECTION_ATTEMPTS))
    successes = sum(bool(row["success"]) for row in recorded.values())
    return {
        "output": str(root),
        "episodes_attempted": len(recorded),
        "episodes_kept": len(writer.episodes),
        "episodes_run": ran,
        "episodes_resumed": resumed,
        "frames": writer.total_frames,
        "expert_success_rate": successes / len(recorded) if recorded else None,
        "physics_steps_per_second": physics_steps / physics_seconds if physics_seconds else None,
        "rendered_frames_per_second": render_frames / render_seconds if render_seconds else None,
        "wall_seconds": wall,
        "workers": workers,
    }
