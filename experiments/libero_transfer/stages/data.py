"""Stage 1: scripted demonstrations collected in LIBERO, and the datasets each model trains on."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from peft_ckt.atomic import commit_directory

from ..cache import dataset_folders, dataset_specs
from ..settings import TransferSettings

logger = logging.getLogger(__name__)


def collect_all(settings: TransferSettings, cache: Path, progress: bool = True) -> dict[str, Path]:
    """The demonstration sets (teacher clean, teacher perturbed, held-out and, with `student_tasks`, the student's),
    collected in one worker pool.

    All the episodes of a task run back to back, so each worker builds each task's environment once (building one
    costs ~9 s, as much as two episodes). Each set is written into a temporary folder and renamed when complete.
    """
    from peft_ckt.libero.collect import CollectJob, collect_into
    from peft_ckt.libero.dataset import LeRobotDatasetWriter
    from peft_ckt.libero.env import CAMERAS

    s = settings
    specs = dataset_specs(s)
    finals = dataset_folders(s, cache)
    todo = [name for name, path in finals.items() if not (path / "meta" / "episodes.jsonl").is_file()]
    for name in finals:
        if name not in todo:
            logger.info(f"{name} demonstrations: cached ({finals[name]})")
    if not todo:
        return finals
    jobs = []
    for name in todo:
        tasks, episodes, kinds, offset = specs[name]
        for task in tasks:
            for kind in kinds:
                for k in range(episodes):
                    job = CollectJob(
                        s.suite, task, offset + k, kind, s.severity, s.image_size, s.seed, False, None, s.image_stride
                    )
                    jobs.append((name, job))
    jobs.sort(key=lambda item: item[1].task_id)  # stable: each task's episodes together
    writers = {}
    for name in todo:
        partial = finals[name].with_name(finals[name].name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        writers[name] = LeRobotDatasetWriter(partial, image_keys=tuple(CAMERAS), image_size=(s.image_size,) * 2)
    logger.info(f"collecting {len(jobs)} scripted demonstrations ({', '.join(todo)}) with {s.workers} worker(s)")
    start = time.perf_counter()
    kept = dict.fromkeys(todo, 0)
    for name, _, kept_episode in collect_into(jobs, writers, s.workers, "collect demonstrations", progress):
        kept[name] += kept_episode  # an episode the expert failed is not a demonstration
    for name in todo:
        writers[name].finalize()
        commit_directory(finals[name].with_name(finals[name].name + ".partial"), finals[name])
    attempted = {name: sum(1 for n, _ in jobs if n == name) for name in todo}
    logger.info(
        "kept "
        + ", ".join(f"{name} {kept[name]}/{attempted[name]}" for name in todo)
        + f" in {time.perf_counter() - start:.0f} s"
    )
    return finals


def split_datasets(settings: TransferSettings, data: dict[str, Path]) -> dict[str, Any]:
    """Teacher (broad), student (narrow), target (small, clean) and held-out episode lists."""
    from peft_ckt.wam.data import read_episodes

    clean = read_episodes(data["clean"])
    perturbed = read_episodes(data["perturbed"])
    heldout = read_episodes(data["heldout"])
    first = min(e["init_index"] for e in clean)
    student = (
        read_episodes(data["student"])
        if "student" in data
        else [e for e in clean if e["init_index"] < first + settings.student_episodes]
    )
    return {
        "teacher": clean + perturbed,
        "student": student,
        "target": [e for e in clean if e["init_index"] < first + settings.target_episodes],
        "heldout": heldout,
    }


__all__ = ["collect_all", "split_datasets"]
