"""Deprecated: moved to `peft_ckt.libero.workers` (`process` and `state`); this path works for one more release."""

from __future__ import annotations

import warnings

from .workers.process import BACKENDS, _terminate_pool, check_backend, default_num_workers, run_jobs
from .workers.state import (
    _ENV_CACHE,
    _POLICY_CACHE,
    _die_with_parent,
    cached_env,
    cached_policy,
    close_cached,
    episode_env,
    init_worker,
)

warnings.warn(
    "peft_ckt.libero.parallel is deprecated; import from peft_ckt.libero.workers instead",
    DeprecationWarning,
    stacklevel=2,
)

# The process-pool initializer's old name.
_init_worker = init_worker

__all__ = [
    "BACKENDS",
    "_ENV_CACHE",
    "_POLICY_CACHE",
    "_die_with_parent",
    "_init_worker",
    "_terminate_pool",
    "cached_env",
    "cached_policy",
    "check_backend",
    "close_cached",
    "default_num_workers",
    "episode_env",
    "init_worker",
    "run_jobs",
]
