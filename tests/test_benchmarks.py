"""Smoke run of the benchmark suite on toy sizes (`run_all.py --quick --tiny`): every benchmark runs on the real
models and the JSON carries every key the benchmark report promises."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import run_all  # noqa: E402
from benchmarks.bench_scaling import fitted_exponent, growth_order  # noqa: E402
from benchmarks.harness import SavedTensorMeter, time_pair  # noqa: E402

NUMERIC_KEYS = (
    "sparse_vs_dense_time_ratio",
    "early_exit_time_ratio",
    "context_reuse_overhead",
    "ckt_vs_lora_step_time_ratio",
    "ckt_vs_lora_peak_memory_ratio",
    "paper_trainable_params",
    "paper_trainable_percent",
)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "out.json"
    assert run_all.main(["--quick", "--tiny", "--device", "cpu", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_json_has_every_key(tiny_results):
    for key in run_all.REQUIRED_KEYS:
        assert key in tiny_results, key
    for key in NUMERIC_KEYS:
        value = tiny_results[key]
        assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
    for key in ("context_reuse_teacher_share", "context_reuse_bank_share", "context_reuse_time_ratio"):
        assert key in tiny_results
    scaling = tiny_results["scaling"]
    assert scaling["bank_by_tokens"] and scaling["bank_by_batch"] and scaling["lqca_by_tokens"]
    assert all(row["seconds"] > 0 and row["activation_bytes"] > 0 for row in scaling["bank_by_tokens"])
    assert tiny_results["machine"]["device"] == "cpu"
    assert tiny_results["sizes"]["name"] == "tiny"
    assert "sparse / dense" in tiny_results["table"]


def test_paper_parameter_count(tiny_results):
    # the paper reports ~187.4M trainable parameters at d_t=5120, d_s=2048 with the default hyper-parameters
    assert tiny_results["paper_trainable_params"] == pytest.approx(187.4e6, rel=0.005)
    assert tiny_results["paper_trainable_percent"] == pytest.approx(100 * tiny_results["paper_trainable_params"] / 2e9)


def test_sparse_bank_does_a_third_of_the_dense_work(tiny_results):
    # FLOPs are deterministic: (1 + top_k) / (1 + M) of the branch work, plus the shared router
    assert tiny_results["sparse_vs_dense_flop_ratio"] == pytest.approx(3 / 9, abs=0.06)


def test_time_pair_alternates_and_takes_median_ratio():
    calls = []
    pair = time_pair(lambda: calls.append("a"), lambda: calls.append("b"), torch.device("cpu"), warmup=1, repeats=4)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(pair.a_all) == len(pair.b_all) == 4 and pair.ratio > 0


def test_saved_tensor_meter_counts_activations_once_and_not_parameters():
    linear = torch.nn.Linear(100, 100)
    inputs = torch.randn(10, 100)
    meter = SavedTensorMeter(linear.parameters())
    with meter.measure():
        hidden = linear(inputs)  # saves the input (the weight is excluded)
        (hidden * hidden).sum().backward()  # saves `hidden` (twice, counted once)
    assert meter.bytes == 2 * 10 * 100 * 4


def test_fitted_exponent_and_growth_order():
    assert fitted_exponent([1, 2, 4, 8], [3, 6, 12, 24]) == pytest.approx(1.0)
    assert fitted_exponent([1, 2, 4], [1, 4, 16]) == pytest.approx(2.0)
    tokens = [128, 256, 512, 1024]
    # a fixed cost plus a cost per token is linear growth, though its log-log slope is below 1
    affine = [5000 + 3 * n for n in tokens]
    assert fitted_exponent(tokens, affine) < 0.5
    assert growth_order(tokens, affine) == pytest.approx(1.0)
    assert growth_order(tokens, [100 + n * n for n in tokens]) == pytest.approx(2.0, abs=0.05)
    assert math.isnan(growth_order(tokens, [1.0, 0.9, 2.0, 3.0]))  # noise: a negative marginal cost
