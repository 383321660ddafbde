"""Deprecated: moved to `peft_ckt.libero.policies.expert`; this path works for one more release."""

from __future__ import annotations

import warnings

from .policies.expert import ScriptedExpertPolicy

warnings.warn(
    "peft_ckt.libero.expert is deprecated; import from peft_ckt.libero.policies.expert instead",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["ScriptedExpertPolicy"]
