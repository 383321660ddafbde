"""Deprecated: moved to `peft_ckt.libero.workers` (`process` and `state`); this path works for one more release."""

from __future__ import annotations

import warnings

from . import workers
from .workers import *  # noqa: F403  (the shim re-exports every public name of the new package)
from .workers.process import _terminate_pool
from .workers.state import (
    _ENV_CACHE,
    _POLICY_CACHE,
    _die_with_parent,
    init_worker,
)

warnings.warn(
    "peft_ckt.libero.parallel is deprecated; import from peft_ckt.libero.workers instead",
    DeprecationWarning,
    stacklevel=2,
)

# The process-pool initializer's old name.
_init_worker = init_worker

__all__ = ["_ENV_CACHE", "_POLICY_CACHE", "_die_with_parent", "_init_worker", "_terminate_pool", *workers.__all__]
