"""Deprecated: moved to `peft_ckt.libero.policies` (`base` and `factory`); this path works for one more release."""

from __future__ import annotations

import warnings

from .policies.base import LiberoPolicy, _torch_policy_base, observation_to_batch
from .policies.factory import (
    BUILTIN_POLICY_MODULES,
    POLICY_OPT_IN,
    POLICY_REGISTRY,
    _import_object,
    _registered_class,
    check_policy_spec,
    load_policy,
    register_policy,
)

warnings.warn(
    "peft_ckt.libero.policy is deprecated; import from peft_ckt.libero.policies instead",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "BUILTIN_POLICY_MODULES",
    "POLICY_OPT_IN",
    "POLICY_REGISTRY",
    "LiberoPolicy",
    "_import_object",
    "_registered_class",
    "_torch_policy_base",
    "check_policy_spec",
    "load_policy",
    "observation_to_batch",
    "register_policy",
]


def __getattr__(name: str):
    # torch is imported only when a torch policy is asked for, as before the move.
    if name in ("TorchLiberoPolicy", "StateMLPPolicy"):
        from . import policies

        return getattr(policies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
