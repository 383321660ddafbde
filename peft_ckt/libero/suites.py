"""LIBERO task suites: names, step limits of the standard protocol, tasks and their shipped init states."""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runtime import configure_libero

# Standard evaluation protocol (LIBERO / OpenVLA / LeRobot): the episode horizon per suite.
SUITE_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
SUITE_NAMES: tuple[str, ...] = tuple(SUITE_MAX_STEPS)
# No-op steps run after placing the init state so that objects settle before the policy acts.
NUM_SETTLE_STEPS = 10
# LIBERO ships 50 init states per task.


@dataclass(frozen=True)
class LiberoTask:
    """One task of a suite: identity, instruction and files."""

    suite: str
    task_id: int
    name: str
    language: str
    bddl_file: Path
    init_states_file: Path

    @property
    def max_steps(self) -> int:
        return SUITE_MAX_STEPS[self.suite]


def _check_suite(suite: str) -> str:
    if suite not in SUITE_MAX_STEPS:
        raise ValueError(f"Unknown LIBERO suite {suite!r}; expected one of {', '.join(SUITE_NAMES)}")
    return suite


@functools.cache
def _benchmark(suite: str):
    configure_libero()
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):  # LIBERO prints its task order on every construction
        return benchmark.get_benchmark_dict()[_check_suite(suite)]()


def num_tasks(suite: str) -> int:
    return _benchmark(suite).get_num_tasks()


def get_task(suite: str, task_id: int) -> LiberoTask:
    bench = _benchmark(suite)
    if not 0 <= task_id < bench.get_num_tasks():
        raise ValueError(f"{suite} has tasks 0..{bench.get_num_tasks() - 1}; got task {task_id}")
    paths = configure_libero()
    task = bench.get_task(task_id)
    return LiberoTask(
        suite=suite,
        task_id=task_id,
        name=task.name,
        language=task.language,
        bddl_file=paths.bddl_files / task.problem_folder / task.bddl_file,
        init_states_file=paths.init_states / task.problem_folder / task.init_states_file,
    )


def list_tasks(suite: str) -> list[LiberoTask]:
    return [get_task(suite, i) for i in range(num_tasks(suite))]


@functools.lru_cache(maxsize=16)
def load_init_states(suite: str, task_id: int) -> np.ndarray:
    """The shipped init states of a task: `[num_states, state_dim]` flattened MuJoCo states."""
    import torch

    path = get_task(suite, task_id).init_states_file
    # The files are pickled numpy arrays written with torch.save.
    states = torch.load(path, weights_only=False)
    return np.asarray(states)
