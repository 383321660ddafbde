"""Collect scripted-expert demonstrations into a LeRobot-format dataset, in parallel worker processes.

Each worker runs the expert with physics only (no rendering: ~10x faster), recording the MuJoCo state of every
step. Only episodes that are kept (successful ones by default) are then rendered, by replaying the recorded states
(no second simulation), and their frames PNG-encoded in the worker. The main process writes the parquet files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .parallel import cached_policy, default_num_workers, episode_env, run_jobs
from .perturbations import Perturbation, expand_perturbations
from .runtime import LiberoConfigError


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
    from .expert import ScriptedExpertPolicy

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
) -> dict[str, Any]:
    """Collect `episodes` expert demonstrations per task (init states `init_offset..`) into `output_dir`.

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
        writer = LeRobotDatasetWriter(output_dir, image_keys=tuple(CAMERAS), image_size=(image_size, image_size))
    except (ValueError, FileExistsError) as err:
        raise LiberoConfigError(str(err)) from err
    jobs = [
        CollectJob(suite, t, init_offset + k, kind, severity, image_size, seed, keep_failures, max_steps, image_stride)
        for t in task_ids
        for kind in kinds
        for k in range(episodes)
    ]
    workers = default_num_workers(len(jobs)) if num_workers is None else num_workers
    attempted = kept = 0
    physics_steps = physics_seconds = render_frames = render_seconds = 0.0
    start = time.perf_counter()
    for result in run_jobs(collect_episode, jobs, workers, desc=f"collect {suite}", progress=progress):
        attempted += 1
        physics_steps += result["length"]
        physics_seconds += result["physics_seconds"]
        if result["images"] is None:
            continue
        kept += 1
        render_frames += result["length"]
        render_seconds += result["render_seconds"]
        writer.add_episode(
            result["states"],
            result["actions"],
            result["images"],
            task=result["task"],
            extra={
                "success": result["success"],
                "suite": result["suite"],
                "task_id": result["task_id"],
                "init_index": result["init_index"],
                "perturbation": result["perturbation"],
                "severity": result["severity"],
                "image_stride": image_stride,
            },
        )
    writer.finalize()
    wall = time.perf_counter() - start
    return {
        "output": str(Path(output_dir)),
        "episodes_attempted": attempted,
        "episodes_kept": kept,
        "frames": int(render_frames),
        "expert_success_rate": kept / attempted if attempted and not keep_failures else None,
        "physics_steps_per_second": physics_steps / physics_seconds if physics_seconds else None,
        "rendered_frames_per_second": render_frames / render_seconds if render_seconds else None,
        "wall_seconds": wall,
        "workers": workers,
    }
