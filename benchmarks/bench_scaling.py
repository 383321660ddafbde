"""How the bank's time and memory grow with the teacher tokens N and the batch size B (forward+backward).

The learnable-query cross-attention has K fixed queries, so its cost is linear in N (no N^2 term): the fitted
exponent of time against N should be close to 1 (below 1 where fixed per-call costs still matter).
Memory is the activation memory of one forward+backward (see `harness.forward_backward_memory`).
"""

from __future__ import annotations

import math

import torch

from .bench_bank import count_flops
from .harness import forward_backward_memory, time_one
from .result import BenchmarkResult, Row
from .sizes import Sizes, paper_bank


def fitted_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): y ~ x^slope."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-12)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    var = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / var if var else float("nan")


def run(sizes: Sizes, device: torch.device) -> BenchmarkResult:
    bank = paper_bank(device, width_divisor=sizes.scaling_width_divisor).eval()  # no dropout/noise: repeatable
    d_t, d_s = bank.teacher_hidden_size, bank.student_hidden_size
    lqca = bank.generalized.cross_attention

    def bank_step(features: torch.Tensor):
        def step() -> None:
            bank(features).tokens.float().square().mean().backward()
            for param in bank.parameters():
                param.grad = None

        return step

    def lqca_step(tokens: torch.Tensor):
        def step() -> None:
            lqca(tokens).square().mean().backward()
            for param in lqca.parameters():
                param.grad = None

        return step

    def measure(step, params) -> dict[str, float]:
        seconds = time_one(step, device, warmup=max(sizes.warmup, 1), repeats=sizes.repeats)
        return {
            "seconds": seconds,
            "flops": count_flops(step),
            "activation_bytes": forward_backward_memory(step, params, device),
        }

    by_tokens, by_batch, lqca_by_tokens = [], [], []
    batch = sizes.scaling_fixed_batch
    for tokens in sizes.scaling_tokens:
        features = torch.randn(batch, tokens, d_t, device=device)
        by_tokens.append({"tokens": tokens, "batch": batch, **measure(bank_step(features), bank.parameters())})
        projected = torch.randn(batch, tokens, d_s, device=device, requires_grad=True)
        lqca_by_tokens.append(
            {
                "tokens": tokens,
                "batch": batch,
                "absorbed": lqca.uses_absorbed_attention(tokens),
                **measure(lqca_step(projected), lqca.parameters()),
            }
        )
    tokens = sizes.scaling_fixed_tokens
    for batch in sizes.scaling_batches:
        features = torch.randn(batch, tokens, d_t, device=device)
        by_batch.append({"tokens": tokens, "batch": batch, **measure(bank_step(features), bank.parameters())})

    def exponent(rows: list[dict], key: str, x: str) -> float:
        return fitted_exponent([row[x] for row in rows], [row[key] for row in rows])

    exponents = {
        "scaling_lqca_time_exponent_tokens": exponent(lqca_by_tokens, "seconds", "tokens"),
        "scaling_lqca_flop_exponent_tokens": exponent(lqca_by_tokens, "flops", "tokens"),
        "scaling_lqca_memory_exponent_tokens": exponent(lqca_by_tokens, "activation_bytes", "tokens"),
        "scaling_bank_time_exponent_tokens": exponent(by_tokens, "seconds", "tokens"),
        "scaling_bank_memory_exponent_tokens": exponent(by_tokens, "activation_bytes", "tokens"),
        "scaling_bank_time_exponent_batch": exponent(by_batch, "seconds", "batch"),
        "scaling_bank_memory_exponent_batch": exponent(by_batch, "activation_bytes", "batch"),
    }
    result = BenchmarkResult("scaling")
    result.metrics = {
        "scaling": {
            "widths": {"d_t": d_t, "d_s": d_s},
            "bank_by_tokens": by_tokens,
            "bank_by_batch": by_batch,
            "lqca_by_tokens": lqca_by_tokens,
            **exponents,
        },
        **exponents,
    }
    mib = 2**20
    result.rows = [
        Row(
            "LQCA time ~ N^x (fitted x)",
            exponents["scaling_lqca_time_exponent_tokens"],
            "<= ~1 (linear)",
            exponents["scaling_lqca_time_exponent_tokens"] < 1.2,
        ),
        Row(
            "LQCA FLOPs ~ N^x",
            exponents["scaling_lqca_flop_exponent_tokens"],
            "<= ~1 (linear)",
            exponents["scaling_lqca_flop_exponent_tokens"] < 1.2,
        ),
        Row(
            "LQCA activation memory ~ N^x",
            exponents["scaling_lqca_memory_exponent_tokens"],
            "<= ~1 (linear)",
            exponents["scaling_lqca_memory_exponent_tokens"] < 1.2,
        ),
        Row("bank time ~ N^x", exponents["scaling_bank_time_exponent_tokens"]),
        Row("bank activation memory ~ N^x", exponents["scaling_bank_memory_exponent_tokens"]),
        Row("bank time ~ B^x", exponents["scaling_bank_time_exponent_batch"]),
        Row("bank activation memory ~ B^x", exponents["scaling_bank_memory_exponent_batch"]),
    ]
    for row in by_tokens:
        result.rows.append(
            Row(
                f"  bank B={row['batch']} N={row['tokens']}: s | MiB",
                row["seconds"],
                f"{row['activation_bytes'] / mib:.1f} MiB",
                unit="s",
            )
        )
    for row in by_batch:
        result.rows.append(
            Row(
                f"  bank B={row['batch']} N={row['tokens']}: s | MiB",
                row["seconds"],
                f"{row['activation_bytes'] / mib:.1f} MiB",
                unit="s",
            )
        )
    return result
