"""Simulation workers: episodes run in parallel, on a process pool or on Ray actors.

- `state`: what every worker holds, whichever backend runs it: `init_worker` and the env / policy caches;
- `process`: `run_jobs`, the entry point of both backends, and the process pool;
- `ray`: the Ray backend (`run_jobs_ray`), reached through `run_jobs(..., backend="ray")`.
"""

from __future__ import annotations

from .process import BACKENDS, check_backend, default_num_workers, run_jobs
from .ray import RAY_INSTALL_HINT, ray_import_error, run_jobs_ray
from .state import cached_env, cached_policy, close_cached, drop_cached_env, episode_env, init_worker

__all__ = [
    "BACKENDS",
    "RAY_INSTALL_HINT",
    "cached_env",
    "cached_policy",
    "check_backend",
    "close_cached",
    "default_num_workers",
    "drop_cached_env",
    "episode_env",
    "init_worker",
    "ray_import_error",
    "run_jobs",
    "run_jobs_ray",
]
