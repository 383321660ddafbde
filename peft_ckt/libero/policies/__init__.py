"""Policies for the LIBERO tools, in the layout of LeRobot's `policies/`.

- `base`: the policy interface (`LiberoPolicy`, `TorchLiberoPolicy`) and `observation_to_batch`;
- `factory`: the registry of policy types (`register_policy`) and `load_policy` / `check_policy_spec`;
- `expert`: the scripted expert (`ScriptedExpertPolicy`), which reads the simulator state;
- `mlp`: `StateMLPPolicy`, a small reference torch policy.

Importing this package does not import torch: `TorchLiberoPolicy` and `StateMLPPolicy` are built on first access.
"""

from __future__ import annotations

from ...lazy import lazy_getattr
from .base import LiberoPolicy, observation_to_batch
from .expert import ScriptedExpertPolicy
from .factory import (
    BUILTIN_POLICY_MODULES,
    POLICY_OPT_IN,
    POLICY_REGISTRY,
    check_policy_spec,
    load_policy,
    register_policy,
    saved_image_size,
)

# Names whose module imports torch -> that module, imported on first access.
_LAZY = {"TorchLiberoPolicy": "base", "StateMLPPolicy": "mlp"}

__all__ = [
    "BUILTIN_POLICY_MODULES",
    "POLICY_OPT_IN",
    "POLICY_REGISTRY",
    "LiberoPolicy",
    "ScriptedExpertPolicy",
    "check_policy_spec",
    "load_policy",
    "observation_to_batch",
    "register_policy",
    "saved_image_size",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
