"""Sparse experts against the dense reference, at the paper's widths; and the absorbed LQCA against the projected one.

The bank runs forward+backward in training mode (dropout), as in a training step, with a balanced routing (see
`use_balanced_routing`). Sparse: each sample runs the generalized adapter and its top-k specialized adapters
(`1 + k` branches); dense: all `1 + M`. The ideal time ratio is therefore `(1 + k) / (1 + M)` = 3/9 at the paper's
M=8, top-2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from peft_ckt.layer import CKTAdapterBank, LearnableQueryCrossAttention

from .harness import time_pair
from .result import BenchmarkResult, Row
from .sizes import Sizes, paper_bank

SPARSE_VS_DENSE_TARGET = 0.40


def bank_step(bank: CKTAdapterBank, features: torch.Tensor, dense: bool) -> None:
    """One forward+backward of the bank (a stand-in loss on the context), gradients dropped afterwards."""
    context = bank(features, dense=dense)
    (context.tokens.float().square().mean() + 0.01 * context.load_balance_loss).backward()
    for param in bank.parameters():
        param.grad = None


def use_balanced_routing(bank: CKTAdapterBank) -> None:
    """Makes the bank's router (which still runs, at its full cost) hand out a fixed balanced assignment: sample
    `b` goes to experts `b*k, ..., b*k + k-1` (mod M), weighted by their renormalised router probabilities.

    Every expert is in use as soon as `B*k >= M`: what a load-balanced router aims at, and the least favourable
    case for sparse dispatch (every expert's weights are read and get a gradient). An untrained router on random
    features sends most samples to the same few experts, which would flatter the sparse side. The same routing
    every call also makes sparse, dense and every repeat do the same work.
    """
    router = bank.router
    compute = router.forward

    def balanced(teacher_features: torch.Tensor):
        probs, _, _ = compute(teacher_features)
        batch, top_k, num_experts = teacher_features.shape[0], router.top_k, probs.shape[-1]
        slots = torch.arange(batch, device=probs.device)[:, None] * top_k + torch.arange(top_k, device=probs.device)
        indices = slots % num_experts
        weights = probs.gather(1, indices)
        return probs, indices, weights / weights.sum(-1, keepdim=True)

    router.forward = balanced


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@contextlib.contextmanager
def forced_attention(absorbed: bool) -> Iterator[None]:
    """Forces the absorbed (or the projected) form of the learnable-query cross-attention, for comparison."""
    original = LearnableQueryCrossAttention.uses_absorbed_attention
    LearnableQueryCrossAttention.uses_absorbed_attention = lambda self, num_tokens: absorbed
    try:
        yield
    finally:
        LearnableQueryCrossAttention.uses_absorbed_attention = original


def run(sizes: Sizes, device: torch.device) -> BenchmarkResult:
    bank = paper_bank(device, width_divisor=sizes.scaling_width_divisor if sizes.name == "tiny" else 1)
    use_balanced_routing(bank)
    features = torch.randn(sizes.bank_batch, sizes.bank_tokens, bank.teacher_hidden_size, device=device)
    num_experts, top_k = bank.num_experts, bank.router.top_k
    with torch.no_grad():
        distinct_experts = int(bank.router(features)[1].unique().numel())

    # The FLOP-counting calls double as the first warm-up call of each variant (a dense call takes ~20 s on CPU).
    flops_dense = count_flops(lambda: bank_step(bank, features, dense=True))
    flops_sparse = count_flops(lambda: bank_step(bank, features, dense=False))
    pair = time_pair(
        lambda: bank_step(bank, features, dense=True),
        lambda: bank_step(bank, features, dense=False),
        device,
        warmup=max(sizes.warmup - 1, 0),
        repeats=sizes.bank_repeats or sizes.repeats,
    )

    def sparse_with(absorbed: bool):
        def step() -> None:
            with forced_attention(absorbed):
                bank_step(bank, features, dense=False)

        return step

    lqca, flops_projected = None, None
    if sizes.compare_attention_time:
        lqca = time_pair(sparse_with(False), sparse_with(True), device, warmup=sizes.warmup, repeats=sizes.repeats)
        with forced_attention(False):
            flops_projected = count_flops(lambda: bank_step(bank, features, dense=False))

    ideal = (1 + top_k) / (1 + num_experts)
    ratio = pair.ratio
    result = BenchmarkResult("sparse_vs_dense")
    result.metrics = {
        "sparse_vs_dense_time_ratio": ratio,
        "sparse_vs_dense_flop_ratio": flops_sparse / flops_dense,
    }
    if lqca is not None:
        result.metrics["lqca_absorbed_vs_projected_time_ratio"] = lqca.ratio
        result.metrics["lqca_absorbed_vs_projected_flop_ratio"] = flops_sparse / flops_projected
    result.details = {
        "widths": {"d_t": bank.teacher_hidden_size, "d_s": bank.student_hidden_size},
        "batch": sizes.bank_batch,
        "teacher_tokens": sizes.bank_tokens,
        "num_experts": num_experts,
        "top_k": top_k,
        "ideal_ratio": ideal,
        "distinct_experts_used": distinct_experts,
        # each expert that runs reads its weights (forward and backward) and writes their gradients, however few
        # tokens it sees: where that traffic dominates (few tokens), time follows this ratio instead of the FLOPs
        "weights_touched_ratio": (1 + distinct_experts) / (1 + num_experts),
        "dense_seconds": pair.a_seconds,
        "sparse_seconds": pair.b_seconds,
        "timings": pair.as_dict(),
        "flops_sparse": flops_sparse,
        "flops_dense": flops_dense,
        "absorbed_attention_used": bank.generalized.cross_attention.uses_absorbed_attention(sizes.bank_tokens),
        "sparse_projected_seconds": lqca.a_seconds if lqca else None,
        "sparse_absorbed_seconds": lqca.b_seconds if lqca else None,
        "flops_sparse_projected": flops_projected,
    }
    result.rows = [
        Row(
            "bank fwd+bwd: sparse / dense time",
            ratio,
            f"<= {SPARSE_VS_DENSE_TARGET:.2f} (ideal {ideal:.3f})",
            ratio <= SPARSE_VS_DENSE_TARGET,
        ),
        Row("bank fwd+bwd: sparse / dense FLOPs", flops_sparse / flops_dense, f"ideal {ideal:.3f}"),
        Row(
            f"bank: sparse / dense weights touched ({distinct_experts} of {num_experts} experts)",
            (1 + distinct_experts) / (1 + num_experts),
        ),
        Row("bank fwd+bwd: dense", pair.a_seconds, unit="s"),
        Row("bank fwd+bwd: sparse", pair.b_seconds, unit="s"),
    ]
    if lqca is not None:
        result.rows.append(Row("LQCA absorbed / projected (sparse bank FLOPs)", flops_sparse / flops_projected))
        result.rows.append(Row("LQCA absorbed / projected (sparse bank time)", lqca.ratio))
    return result
