"""Statistics of LIBERO evaluations, for the benchmarks' reports and the experiments: success rates with 95% Wilson
intervals, policies compared with Fisher's exact test, and paired comparisons of policies played on the same episodes
(exact McNemar, hierarchical bootstrap)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "COMPARISONS",
    "cluster_bootstrap_draws",
    "cluster_bootstrap_interval",
    "compare_policies",
    "compare_successes",
    "comparison_lines",
    "format_p_value",
    "match_episodes",
    "mcnemar_exact",
    "paired_comparison",
    "paired_minimum_detectable_difference",
    "paired_pairs_needed",
    "percent",
    "success_cell",
    "success_rate",
    "transfer_efficiency",
    "transfer_efficiency_interval",
    "wilson_interval",
]


def success_rate(rows: Sequence[dict[str, Any]]) -> float | None:
    """Share of `rows` with a true `success` (None for no rows)."""
    return float(np.mean([bool(r["success"]) for r in rows])) if rows else None


def percent(value: float | None) -> str:
    """A rate as a percentage with one decimal ("-" for None)."""
    return "-" if value is None else f"{100 * value:.1f}"


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


# ----------------------------------------------------------------------------- paired comparisons (matched episodes)
# Two policies played on the same episodes (same task, init state, perturbation and seed) give matched outcomes: the
# test looks at the discordant pairs only (exact McNemar), and the interval resamples what was really drawn at random
# (independent trainings, then start states), not the replayed episodes.


def match_episodes(
    first: list[dict[str, Any]], second: list[dict[str, Any]], key_fields: Sequence[str]
) -> list[tuple[tuple, bool, bool]]:
    """Pairs the episodes of two policies that share `key_fields` (e.g. `("training", "task_id", "init_index",
    "perturbation")`): `[(key, first_success, second_success)]`, sorted by key. An episode of one policy without its
    match in the other is an error, not dropped: unmatched rows would bias a paired test."""

    def index(rows: list[dict[str, Any]], name: str) -> dict[tuple, bool]:
        out: dict[tuple, bool] = {}
        for row in rows:
            key = tuple(row[field] for field in key_fields)
            if key in out:
                raise ValueError(f"{name}: two episodes share {dict(zip(key_fields, key))}")
            out[key] = bool(row["success"])
        return out

    a, b = index(first, "first"), index(second, "second")
    if a.keys() != b.keys():
        missing = sorted(a.keys() ^ b.keys(), key=str)[:3]
        raise ValueError(f"the two policies were not played on the same episodes (e.g. {missing})")
    return [(key, a[key], b[key]) for key in sorted(a, key=str)]


def mcnemar_exact(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: episodes only the first policy won
    (`first_only`) and only the second won (`second_only`); a binomial test of `first_only` out of their sum at 1/2.
    No discordant pair gives 1.0."""
    from scipy.stats import binomtest

    n = first_only + second_only
    if first_only < 0 or second_only < 0:
        raise ValueError(f"discordant counts must be >= 0; got {first_only}, {second_only}")
    return 1.0 if n == 0 else float(binomtest(first_only, n, 0.5, alternative="two-sided").pvalue)


def paired_comparison(
    pairs: list[tuple[tuple, bool, bool]],
    cluster_levels: Sequence[int | tuple[int, ...]] = (0, (1, 2)),
    num_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The pre-registered paired analysis of matched episodes (`match_episodes`' output).

    Returns the counts (`first`, `second` successes, `first_only`, `second_only`, `episodes`), the difference in
    success rate `first - second`, the exact McNemar p-value, and a 95% percentile interval of the difference from a
    hierarchical bootstrap: `cluster_levels` names the key positions resampled with replacement, outermost first
    (default: the training `key[0]`, then the start state `key[1:3]`, i.e. task and init state, keeping all
    perturbations of a drawn start state together).
    """
    if not pairs:
        raise ValueError("no matched episodes")
    first = np.array([p[1] for p in pairs], dtype=float)
    second = np.array([p[2] for p in pairs], dtype=float)
    first_only = int(np.sum((first == 1) & (second == 0)))
    second_only = int(np.sum((first == 0) & (second == 1)))
    low, high = cluster_bootstrap_interval(pairs, cluster_levels, num_resamples, seed)
    return {
        "episodes": len(pairs),
        "first": int(first.sum()),
        "second": int(second.sum()),
        "first_only": first_only,
        "second_only": second_only,
        "difference": float(first.mean() - second.mean()),
        "mcnemar_p": mcnemar_exact(first_only, second_only),
        "bootstrap_ci95": [round(low, 4), round(high, 4)],
        "bootstrap_resamples": num_resamples,
    }


def _cluster_id(key: tuple, level: int | tuple[int, ...]) -> tuple:
    return tuple(key[i] for i in level) if isinstance(level, tuple) else (key[level],)


def cluster_bootstrap_draws(
    keys: Sequence[tuple],
    cluster_levels: Sequence[int | tuple[int, ...]] = (0, (1, 2)),
    num_resamples: int = 10_000,
    seed: int = 0,
) -> Iterator[list[int]]:
    """Indices into `keys` for each of `num_resamples` nested (hierarchical) bootstrap draws: at each level the
    clusters inside the drawn parent are drawn again with replacement; the leaves are the items of a drawn innermost
    cluster, kept whole. `cluster_levels` names the key positions of each level, outermost first."""
    rng = np.random.default_rng(seed)

    # Tree: level-0 cluster -> level-1 cluster -> ... -> list of indices.
    def build(indices: list[int], depth: int):
        if depth == len(cluster_levels):
            return indices
        groups: dict[tuple, list[int]] = {}
        for i in indices:
            groups.setdefault(_cluster_id(keys[i], cluster_levels[depth]), []).append(i)
        return [build(members, depth + 1) for _, members in sorted(groups.items(), key=lambda kv: str(kv[0]))]

    tree = build(list(range(len(keys))), 0)

    def draw(node, depth: int) -> list[int]:
        if depth == len(cluster_levels):
            return node
        picks = rng.integers(0, len(node), size=len(node))
        return [i for p in picks for i in draw(node[p], depth + 1)]

    for _ in range(num_resamples):
        yield draw(tree, 0)


def cluster_bootstrap_interval(
    pairs: list[tuple[tuple, bool, bool]],
    cluster_levels: Sequence[int | tuple[int, ...]] = (0, (1, 2)),
    num_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of the mean paired difference under a nested bootstrap of the pairs' keys
    (`cluster_bootstrap_draws`)."""
    diffs = np.array([float(a) - float(b) for _, a, b in pairs])
    draws = cluster_bootstrap_draws([p[0] for p in pairs], cluster_levels, num_resamples, seed)
    means = np.array([diffs[indices].mean() for indices in draws])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_minimum_detectable_difference(
    num_pairs: int, discordance: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest difference in success rate a two-sided McNemar test on `num_pairs` matched episodes detects with
    `power` at level `alpha`, when a share `discordance` of the pairs is discordant (normal approximation, Connor
    1987: n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2, solved for d)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    if num_pairs < 1 or not 0 < discordance <= 1:
        raise ValueError(f"need num_pairs >= 1 and 0 < discordance <= 1; got {num_pairs}, {discordance}")
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)

    def needed(d: float) -> float:
        return (z_a * np.sqrt(discordance) + z_b * np.sqrt(max(discordance - d * d, 0.0))) ** 2 / (d * d) - num_pairs

    top = np.sqrt(discordance)
    return float(brentq(needed, 1e-6, top)) if needed(top) < 0 else float("nan")


def paired_pairs_needed(difference: float, discordance: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Matched episodes a two-sided McNemar test needs to detect `difference` (the inverse of
    `paired_minimum_detectable_difference`)."""
    from scipy.stats import norm

    if not 0 < difference * difference < discordance <= 1:
        raise ValueError(f"need 0 < difference^2 < discordance <= 1; got {difference}, {discordance}")
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)
    n = (z_a * np.sqrt(discordance) + z_b * np.sqrt(discordance - difference**2)) ** 2 / difference**2
    return int(np.ceil(n))


def transfer_efficiency(adapted: float, student: float, teacher: float) -> float | None:
    """`(adapted - student) / (teacher - student)`: the share of the teacher's lead over the student an adapter
    recovers (None when the teacher does not lead)."""
    return None if teacher <= student else (adapted - student) / (teacher - student)


def transfer_efficiency_interval(
    triples: list[tuple[tuple, bool, bool, bool]],
    cluster_levels: Sequence[int | tuple[int, ...]] = (0, (1, 2)),
    num_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """`transfer_efficiency` over matched episodes `(key, adapted, student, teacher)`, with a 95% percentile interval
    from the nested bootstrap of `paired_comparison`. A draw in which the teacher does not lead the student has no
    efficiency: it is left out of the percentiles and counted (`undefined_draws`); the interval is None when more
    than 2.5% of the draws are undefined, since percentiles of the rest would then hide the teacher's lack of lead."""
    if not triples:
        raise ValueError("no matched episodes")
    outcomes = np.array([[float(a), float(s), float(t)] for _, a, s, t in triples])
    adapted, student, teacher = outcomes.mean(axis=0)
    values = []
    for indices in cluster_bootstrap_draws([t[0] for t in triples], cluster_levels, num_resamples, seed):
        a, s, t = outcomes[indices].mean(axis=0)
        if t > s:
            values.append((a - s) / (t - s))
    undefined = num_resamples - len(values)
    interval = None
    if values and undefined <= 0.025 * num_resamples:
        low, high = np.percentile(values, [2.5, 97.5])
        interval = [round(float(low), 4), round(float(high), 4)]
    estimate = transfer_efficiency(adapted, student, teacher)
    return {
        "episodes": len(triples),
        "estimate": None if estimate is None else round(float(estimate), 4),
        "ci95": interval,
        "undefined_draws": undefined,
        "bootstrap_resamples": num_resamples,
    }
