"""How the bank's time and memory grow with the teacher tokens N and the batch size B (forward+backward).

The learnable-query cross-attention has K fixed queries, so its cost is linear in N (no N^2 term). Each cost is a
fixed part plus a part per token, so the growth order is read from the marginal cost per added token (constant for
linear growth, see `growth_order`): FLOPs and activation memory are exact, timings carry the machine's noise.
Memory is the activation memory of one forward+backward (see `harness.forward_backward_memory`).
"""

from __future__ import annotations

import math

import torch

from peft_ckt.layer import LearnableQueryCrossAttention

from .bench_bank import count_flops, use_balanced_routing
from .harness import forward_backward_memory, time_one
from .result import BenchmarkResult, Row
from .sizes import PAPER_STUDENT_WIDTH, Sizes, paper_bank


def fitted_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): y ~ x^slope."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-12)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    var = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / var if var else float("nan")


def growth_order(xs: list[float], ys: list[float]) -> float:
    """Order p of the growth of y with x, read from the marginal cost (y_{i+1} - y_i) / (x_{i+1} - x_i): constant
    for linear growth (p = 1, whatever fixed cost y also has), proportional to x for quadratic growth (p = 2).
    NaN when a marginal cost is not positive (timings too noisy to tell)."""
    marginals = [(y1 - y0) / (x1 - x0) for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:])]
    if len(marginals) < 2 or any(m <= 0 for m in marginals):
        return float("nan")
    midpoints = [(x0 + x1) / 2 for x0, x1 in zip(xs, xs[1:])]
    return 1.0 + fitted_exponent(midpoints, marginals)


def linear_fit_r2(xs: list[float], ys: list[float]) -> float:
    """R^2 of the least-squares line y = a + b x (1: a straight line, fixed cost plus a constant cost per unit)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if not sxx or not syy:
        return float("nan")
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return sxy * sxy / (sxx * syy)


def run(sizes: Sizes, device: torch.device) -> BenchmarkResult:
    bank = paper_bank(device, width_divisor=sizes.scaling_width_divisor).eval()  # no dropout/noise: repeatable
    use_balanced_routing(bank)  # the experts in use grow with B as a balanced router's would
    d_t, d_s = bank.teacher_hidden_size, bank.student_hidden_size
    # The LQCA alone at the paper's student width (d_s=2048, K=32, 8 heads): cheap enough at every size.
    lqca = LearnableQueryCrossAttention(PAPER_STUDENT_WIDTH // sizes.lqca_width_divisor, 32, 8).to(device)
    lqca_width = lqca.queries.shape[1]

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
        seconds = time_one(step, device, warmup=max(sizes.warmup, 1), repeats=max(sizes.repeats, 5))
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
        projected = torch.randn(batch, tokens, lqca_width, device=device, requires_grad=True)
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

    def series(rows: list[dict], key: str, x: str) -> tuple[list[float], list[float]]:
        return [row[x] for row in rows], [row[key] for row in rows]

    exponents = {}
    for prefix, rows, x in (
        ("lqca", lqca_by_tokens, "tokens"),
        ("bank", by_tokens, "tokens"),
        ("bank", by_batch, "batch"),
    ):
        for key, name in (("flops", "flop"), ("activation_bytes", "memory"), ("seconds", "time")):
            exponents[f"scaling_{prefix}_{name}_growth_order_{x}"] = growth_order(*series(rows, key, x))
        exponents[f"scaling_{prefix}_time_linear_r2_{x}"] = linear_fit_r2(*series(rows, "seconds", x))
    result = BenchmarkResult("scaling")
    result.metrics = {
        "scaling": {
            "widths": {"d_t": d_t, "d_s": d_s, "lqca_d_s": lqca_width},
            "bank_by_tokens": by_tokens,
            "bank_by_batch": by_batch,
            "lqca_by_tokens": lqca_by_tokens,
            **exponents,
        },
        **exponents,
    }
    mib = 2**20
    result.rows = []
    for prefix, label, x in (("lqca", "LQCA", "tokens"), ("bank", "bank", "tokens"), ("bank", "bank", "batch")):
        axis = "N" if x == "tokens" else "B"
        for name, what in (("flop", "FLOPs"), ("memory", "activation memory"), ("time", "time")):
            order = exponents[f"scaling_{prefix}_{name}_growth_order_{x}"]
            linear = prefix == "lqca" or name != "time"
            result.rows.append(
                Row(
                    f"{label} {what}: growth order in {axis}",
                    order,
                    "1 (linear)" if linear else None,
                    (abs(order - 1) < 0.15) if linear and name != "time" and math.isfinite(order) else None,
                )
            )
        result.rows.append(
            Row(f"{label} time: R^2 of a straight line in {axis}", exponents[f"scaling_{prefix}_time_linear_r2_{x}"])
        )
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
