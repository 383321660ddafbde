"""LIBERO and LIBERO-Plus for peft-ckt: environments, perturbations, scripted expert, demonstrations, evaluation.

Needs the `libero` extra (`pip install 'peft-ckt[libero]'`). Importing this package is cheap; the simulator is
imported and configured (headless, offline) on first use. See docs/libero.md.
"""

from __future__ import annotations

from ..lazy import lazy_getattr
from .runtime import LiberoUnavailableError, configure_libero, is_libero_available, libero_import_error

# Public names -> defining submodule, imported on first access (they pull in MuJoCo / robosuite / torch).
_LAZY = {
    "LiberoEnv": "env",
    "CAMERAS": "env",
    "Perturbation": "perturbations",
    "PERTURBATIONS": "perturbations",
    "LIBERO_PLUS_COLUMNS": "perturbations",
    "SUITE_MAX_STEPS": "suites",
    "SUITE_NAMES": "suites",
    "LiberoTask": "suites",
    "get_task": "suites",
    "list_tasks": "suites",
    "num_tasks": "suites",
    "load_init_states": "suites",
    "ScriptedExpertPolicy": "policies",
    "LiberoPolicy": "policies",
    "TorchLiberoPolicy": "policies",
    "load_policy": "policies",
    "register_policy": "policies",
    "observation_to_batch": "policies",
    "StateMLPPolicy": "policies",
    "evaluate_libero": "evaluation",
    "collect_demonstrations": "collect",
    "LeRobotDatasetWriter": "dataset",
    "load_lerobot_dataset": "dataset",
}

__all__ = ["LiberoUnavailableError", "configure_libero", "is_libero_available", "libero_import_error", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
