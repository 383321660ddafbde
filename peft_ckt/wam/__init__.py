"""The reference world action model (WAM) of peft-ckt and the LIBERO transfer experiment (see docs/wam.md).

`WorldActionModel` is a flow-matching video transformer (diffusers Wan or Cosmos backbone) that generates an action
chunk and a future camera frame; `WAMPolicy` runs it, or a student WAM with a CKT / LoRA adapter, in LIBERO.
Names are imported on first use.
"""

from __future__ import annotations

import importlib

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
    "DemoSettings": "experiment",
    "run_demo": "experiment",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
