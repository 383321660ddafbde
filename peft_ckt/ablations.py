"""The paper's ablations of CKT as configurations, and the trainable parameters of each.

Each ablation is a set of [`CKTConfig`] fields: `use_specialized_adapters=False` (generalized adapter only: no router,
no specialized adapters, no `L_bal`), `use_generalized_adapter=False` (routed specialized adapters only) and
`load_balance_weight=0` (no auxiliary loss). `peft-ckt ablations` prints their trainable parameters at the
paper's widths (teacher 5120, student 2048).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .config import CKTConfig


@dataclass(frozen=True)
class Ablation:
    """One row of the paper's ablation table: the config fields it changes and its LIBERO-Plus total success."""

    name: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    paper_total_success: Optional[float] = None  # percent, LIBERO-Plus total (paper's table)


PAPER_ABLATIONS: dict[str, Ablation] = {
    ablation.name: ablation
    for ablation in (
        Ablation("full", "generalized + routed specialized adapters, L_bal", {}, 86.1),
        Ablation(
            "no_specialized",
            "generalized adapter only (no router, no specialized adapters)",
            {"use_specialized_adapters": False},
            82.7,
        ),
        Ablation(
            "no_generalized",
            "routed specialized adapters only (no generalized adapter)",
            {"use_generalized_adapter": False},
            83.0,
        ),
        Ablation("no_auxiliary_loss", "full bank, no load-balancing loss", {"load_balance_weight": 0.0}, 84.1),
    )
}


def ablation_config(config: CKTConfig, name: str) -> CKTConfig:
    """A copy of `config` with the fields of the ablation `name` (see [`PAPER_ABLATIONS`]) changed; the teacher
    module, if attached, is shared."""
    if name not in PAPER_ABLATIONS:
        raise ValueError(f"Unknown ablation {name!r}; available: {sorted(PAPER_ABLATIONS)}.")
    teacher = config.teacher_module
    ablated = dataclasses.replace(config, **PAPER_ABLATIONS[name].overrides)
    if teacher is not None:
        ablated.attach_teacher(teacher)
    return ablated


def ablation_trainable_parameters(
    config: CKTConfig, teacher_hidden_size: int, student_hidden_size: int
) -> dict[str, int]:
    """Trainable parameters of the adapter bank of each ablation of `config` at the given widths, counted on the meta
    device (no memory, no time)."""
    from .layer import CKTAdapterBank

    counts = {}
    for name in PAPER_ABLATIONS:
        with torch.device("meta"):
            bank = CKTAdapterBank(ablation_config(config, name), teacher_hidden_size, student_hidden_size)
        counts[name] = sum(p.numel() for p in bank.parameters())
    return counts


def format_ablation_table(config: CKTConfig, teacher_hidden_size: int, student_hidden_size: int) -> str:
    """A plain-text table: ablation, what it keeps, trainable parameters, the paper's LIBERO-Plus total."""
    counts = ablation_trainable_parameters(config, teacher_hidden_size, student_hidden_size)
    lines = [
        f"CKT ablations at d_t={teacher_hidden_size}, d_s={student_hidden_size} "
        f"(K={config.num_context_tokens}, M={config.num_experts}, top-k={config.top_k}, d_b={config.bottleneck_dim})",
        f"{'ablation':<18} {'trainable':>14} {'paper total':>12}  description",
    ]
    for name, ablation in PAPER_ABLATIONS.items():
        paper = f"{ablation.paper_total_success:.1f}%" if ablation.paper_total_success is not None else "-"
        lines.append(f"{name:<18} {counts[name]:>14,} {paper:>12}  {ablation.description}")
    return "\n".join(lines)
