"""Deprecated: moved to `peft_ckt.libero.policies.mlp`; this path works for one more release."""

from __future__ import annotations

import warnings

from .policies.mlp import StateMLPPolicy

warnings.warn(
    "peft_ckt.libero.mlp_policy is deprecated; import from peft_ckt.libero.policies.mlp instead",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["StateMLPPolicy"]
