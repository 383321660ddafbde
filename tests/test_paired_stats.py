"""Paired statistics of matched episodes against known values."""

import random

import pytest

from peft_ckt.libero.metrics import (
    cluster_bootstrap_interval,
    match_episodes,
    mcnemar_exact,
    paired_comparison,
    paired_minimum_detectable_difference,
    paired_pairs_needed,
    transfer_efficiency,
    transfer_efficiency_interval,
)

KEY = ("training", "task_id", "init_index", "perturbation")


def test_exact_mcnemar_against_hand_computed_binomial_tails():
    # 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096)
    assert mcnemar_exact(2, 10) == pytest.approx(158 / 4096)
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_detectable_difference_and_pairs_needed_invert_each_other():
    # Connor (1987): 15 points at a discordance of 0.3 need ~103 pairs at alpha 0.05, power 0.8.
    assert paired_pairs_needed(0.15, 0.3) == 103
    assert paired_minimum_detectable_difference(103, 0.3) == pytest.approx(0.15, abs=0.002)
    assert paired_minimum_detectable_difference(672, 0.3) < paired_minimum_detectable_difference(112, 0.3)
    assert transfer_efficiency(0.4, 0.2, 0.6) == pytest.approx(0.5)
    assert transfer_efficiency(0.4, 0.6, 0.5) is None


def _rows(rate, seed):
    rng = random.Random(seed)
    return [
        {"training": t, "task_id": task, "init_index": init, "perturbation": kind, "success": rng.random() < rate}
        for t in range(3)
        for task in range(4)
        for init in (40, 41)
        for kind in range(7)
    ]


def test_matching_refuses_unmatched_or_duplicate_episodes():
    a, b = _rows(0.5, 0), _rows(0.3, 1)
    with pytest.raises(ValueError, match="not played on the same episodes"):
        match_episodes(a, b[:-1], KEY)
    with pytest.raises(ValueError, match="two episodes share"):
        match_episodes(a + a[:1], b, KEY)


def test_paired_comparison_counts_and_a_seeded_bootstrap_interval():
    pairs = match_episodes(_rows(0.5, 0), _rows(0.3, 1), KEY)
    result = paired_comparison(pairs, num_resamples=2000)
    first_only = sum(a and not b for _, a, b in pairs)
    second_only = sum(b and not a for _, a, b in pairs)
    assert (result["first_only"], result["second_only"], result["episodes"]) == (first_only, second_only, 168)
    assert result["difference"] == pytest.approx((result["first"] - result["second"]) / 168)
    assert result["mcnemar_p"] == pytest.approx(mcnemar_exact(first_only, second_only))
    low, high = result["bootstrap_ci95"]
    assert low < result["difference"] < high
    assert paired_comparison(pairs, num_resamples=2000) == result  # seeded: the same interval again


def test_bootstrap_over_identical_clusters_has_no_width_and_clusters_widen_it():
    # Every training and start state identical: resampling them changes nothing.
    same = [((t, s, 0, k), k == 0, False) for t in range(3) for s in range(4) for k in range(4)]
    assert cluster_bootstrap_interval(same, num_resamples=500) == (0.25, 0.25)
    # One training wins everything, the others nothing: drawing trainings must spread the interval widely.
    split = [((t, s, 0, k), t == 0, False) for t in range(3) for s in range(4) for k in range(4)]
    low, high = cluster_bootstrap_interval(split, num_resamples=2000)
    assert low == 0.0 and high == 1.0


def test_transfer_efficiency_interval_against_known_values():
    # Per start state: the teacher succeeds in all 4 kinds, the student in 1, the adapter in 2 or 3 (alternating by
    # training): efficiency (2.5 - 1) / (4 - 1) = 0.5 pooled; a training drawn alone gives 1/3 or 2/3.
    triples = [((t, s, 0, k), k < 2 + t % 2, k < 1, True) for t in range(2) for s in range(4) for k in range(4)]
    result = transfer_efficiency_interval(triples, num_resamples=2000)
    assert result["estimate"] == pytest.approx(0.5)
    assert result["undefined_draws"] == 0
    assert result["ci95"] == [pytest.approx(1 / 3, abs=1e-4), pytest.approx(2 / 3, abs=1e-4)]
    # A teacher that never leads: no efficiency, no interval, every draw undefined.
    flat = [(key, a, s, s) for key, a, s, _ in triples]
    result = transfer_efficiency_interval(flat, num_resamples=300)
    assert (result["estimate"], result["ci95"], result["undefined_draws"]) == (None, None, 300)
    with pytest.raises(ValueError, match="no matched episodes"):
        transfer_efficiency_interval([])
