"""Trainable parameters at the paper's configuration, counted on the meta device (no memory, no time)."""

from __future__ import annotations

import torch

from peft_ckt.layer import CKTAdapterBank

from .result import BenchmarkResult, Row
from .sizes import (
    PAPER_STUDENT_PARAMETERS,
    PAPER_STUDENT_WIDTH,
    PAPER_TEACHER_PARAMETERS,
    PAPER_TEACHER_WIDTH,
    Sizes,
    paper_config,
)

PAPER_REPORTED_PARAMETERS = 187.4e6


def paper_bank_parameters() -> dict[str, int]:
    """Parameter counts of the adapter bank at d_t=5120, d_s=2048 and the CKTConfig defaults, by part."""
    with torch.device("meta"):
        bank = CKTAdapterBank(paper_config(), PAPER_TEACHER_WIDTH, PAPER_STUDENT_WIDTH)
    branch = bank.generalized

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    return {
        "total": count(bank),
        "per_branch": count(branch),
        "per_branch_cross_attention": count(branch.cross_attention),
        "per_branch_bottleneck_mlp": count(branch) - count(branch.cross_attention),
        "router": count(bank.router),
        "separator": bank.separator.numel() if bank.separator is not None else 0,
        "branches": 1 + len(bank.specialized),
    }


def run(sizes: Sizes, device: torch.device) -> BenchmarkResult:
    counts = paper_bank_parameters()
    total = counts["total"]
    percent_student = 100 * total / PAPER_STUDENT_PARAMETERS
    percent_pair = 100 * total / (PAPER_STUDENT_PARAMETERS + PAPER_TEACHER_PARAMETERS)
    result = BenchmarkResult("paper_parameters")
    result.metrics = {
        "paper_trainable_params": total,
        "paper_trainable_percent": percent_student,
        "paper_trainable_percent_denominator": "2B student (2.0e9 parameters)",
        "paper_trainable_percent_of_teacher_plus_student": percent_pair,
    }
    result.details = {**counts, "paper_reported": PAPER_REPORTED_PARAMETERS}
    result.rows = [
        Row(
            "trainable params at d_t=5120, d_s=2048 (M)",
            total / 1e6,
            "~187.4 (paper)",
            abs(total - PAPER_REPORTED_PARAMETERS) / PAPER_REPORTED_PARAMETERS < 0.005,
        ),
        Row("  percent of a 2B student", percent_student, unit="%"),
        Row("  percent of teacher 14B + student 2B", percent_pair, "1.17 (paper)", unit="%"),
    ]
    return result
