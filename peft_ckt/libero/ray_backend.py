"""Deprecated: moved to `peft_ckt.libero.workers.ray`; this path works for one more release."""

from __future__ import annotations

import warnings

from .workers.ray import (
    _LOCAL_OBJECT_STORE_BYTES,
    RAY_INSTALL_HINT,
    _check_reachable,
    _connect,
    _EpisodeWorker,
    _resolve,
    check_ray_settings,
    cluster_workers,
    ray_import_error,
    run_jobs_ray,
)

warnings.warn(
    "peft_ckt.libero.ray_backend is deprecated; import from peft_ckt.libero.workers.ray instead",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "RAY_INSTALL_HINT",
    "_LOCAL_OBJECT_STORE_BYTES",
    "_EpisodeWorker",
    "_check_reachable",
    "_connect",
    "_resolve",
    "check_ray_settings",
    "cluster_workers",
    "ray_import_error",
    "run_jobs_ray",
]
