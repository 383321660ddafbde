"""The reference world action model (WAM) of peft-ckt (see docs/wam.md).

`WorldActionModel` is a flow-matching video transformer (diffusers Wan or Cosmos backbone) that generates an action
chunk and a future camera frame; `WAMPolicy` runs it, or a student WAM with a CKT / LoRA adapter, in LIBERO.
Names are imported on first use. The LIBERO transfer experiment that uses them lives in the repository's
`experiments/libero_transfer` (`DemoSettings` and `run_demo` still resolve here, deprecated, for one release).
"""

from __future__ import annotations

import importlib
import warnings

_LAZY = {
    "WorldActionModel": "modeling",
    "flow_matching_loss": "modeling",
    "sample": "modeling",
    "InstructionTokenizer": "tokenizer",
    "build_vocabulary": "tokenizer",
    "ChunkDataset": "data",
    "read_episodes": "data",
    "train_wam": "training",
    "WAMPolicy": "policy",
}
# Moved to the repository's `experiments/libero_transfer` (not shipped in the wheel); resolved from there for one
# release.
_MOVED = {"DemoSettings": "TransferSettings", "run_demo": "run_transfer"}

__all__ = list(_LAZY)


def _moved(name: str):
    try:
        experiment = importlib.import_module("experiments.libero_transfer")
    except ModuleNotFoundError as error:
        if error.name not in ("experiments", "experiments.libero_transfer"):
            raise  # the experiment is there but something it imports is not
        raise ImportError(
            f"peft_ckt.wam.{name} moved out of the package: the LIBERO transfer experiment lives in the repository's "
            f"experiments/libero_transfer (run it from a checkout: python -m experiments.libero_transfer)"
        ) from error
    warnings.warn(
        f"peft_ckt.wam.{name} is deprecated: use experiments.libero_transfer.{_MOVED[name]} (from a repository "
        "checkout)",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(experiment, name)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        return _moved(name)  # not cached, so that every use warns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
