"""The LIBERO transfer experiment: can a frozen student WAM gain a frozen teacher WAM's robustness through CKT?

Run it with `make demo` or `python -m experiments.libero_transfer` (see `__main__.py` for the stages and flags). It
lives in the repository, not in the `peft_ckt` wheel: `settings` (what decides the result), `cache` (the keys of each
stage's folder), `stages/` (data, pretrain, adapters, rollouts, offline), `report`, `run` and `seeds` (the adapters
retrained per seed, pooled).
"""

from .run import run_demo, run_transfer
from .seeds import run_adapter_seeds
from .settings import ABLATIONS, PERTURBATION_KINDS, POLICIES, DemoSettings, TransferSettings

__all__ = [
    "ABLATIONS",
    "PERTURBATION_KINDS",
    "POLICIES",
    "DemoSettings",
    "TransferSettings",
    "run_adapter_seeds",
    "run_demo",
    "run_transfer",
]
