"""Success statistics of LIBERO rollouts: rates with 95% Wilson intervals, and policies compared with Fisher's
exact test (used by the evaluation reports and by the repository's `experiments/libero_transfer`)."""

from __future__ import annotations

import math
from typing import Any


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (`(0, 1)` for no trials)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def success_cell(wins: int, trials: int) -> dict[str, Any]:
    """A success count as the report stores it: rate, counts and 95% Wilson interval."""
    low, high = wilson_interval(wins, trials)
    return {
        "success_rate": wins / trials if trials else None,
        "successes": wins,
        "episodes": trials,
        "ci95": [round(low, 4), round(high, 4)],
    }


# The differences the transfer experiment is about: what CKT adds to the student, and CKT against LoRA.
COMPARISONS = (("student+ckt", "student"), ("student+ckt", "student+lora"), ("student+lora", "student"))


def compare_successes(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two success cells side by side: the difference of their rates and the two-sided p-value of Fisher's exact
    test (is a difference this large likely when both policies succeed equally often?)."""
    from scipy.stats import fisher_exact

    a, n, b, m = first["successes"], first["episodes"], second["successes"], second["episodes"]
    if not n or not m:
        return {"difference": None, "p_value": None}
    return {"difference": a / n - b / m, "p_value": float(fisher_exact([[a, n - a], [b, m - b]]).pvalue)}


def compare_policies(policies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`COMPARISONS` on the clean and the perturbed episodes, keyed `"A vs B"` (pairs with a missing policy skipped)."""
    return {
        f"{a} vs {b}": {
            split: compare_successes(policies[a][split], policies[b][split]) for split in ("clean", "perturbed")
        }
        for a, b in COMPARISONS
        if a in policies and b in policies
    }


def comparison_lines(policies: dict[str, dict[str, Any]], comparisons: dict[str, dict[str, Any]]) -> list[str]:
    """The comparisons as a markdown table (perturbed episodes: the LIBERO-Plus total)."""
    lines = [
        "| Perturbed episodes | successes | difference | Fisher's exact test, two-sided p |",
        "|---|---:|---:|---:|",
    ]
    for a, b in COMPARISONS:
        pair = f"{a} vs {b}"
        cell = comparisons.get(pair, {}).get("perturbed")
        if cell is None or cell["p_value"] is None:
            continue
        first, second = policies[a]["perturbed"], policies[b]["perturbed"]
        lines.append(
            f"| {pair} | {first['successes']}/{first['episodes']} vs {second['successes']}/{second['episodes']} | "
            f"{100 * cell['difference']:+.1f} points | {format_p_value(cell['p_value'])} |"
        )
    return lines


def format_p_value(p: float) -> str:
    """Three decimals, or an upper bound where three decimals would print 0.000."""
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


__all__ = [
    "COMPARISONS",
    "compare_policies",
    "compare_successes",
    "comparison_lines",
    "format_p_value",
    "success_cell",
    "wilson_interval",
]
