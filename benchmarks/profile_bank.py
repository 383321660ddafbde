"""Profiles one forward+backward of the CKT adapter bank at the paper's widths with `torch.profiler`.

`python benchmarks/profile_bank.py [--batch-size 4] [--tokens 256] [--device cpu|cuda] [--dense] [--projected]` prints
the operators that take the most time. `--projected` forces the learnable-query attention's projected form (keys
and values formed, as before the absorbed form was added). Used to decide which optimisations of
`peft_ckt/layer.py` to keep (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_bank import forced_attention  # noqa: E402
from benchmarks.harness import synchronize  # noqa: E402
from benchmarks.sizes import paper_bank  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dense", action="store_true", help="profile the dense reference (all M experts)")
    parser.add_argument("--projected", action="store_true", help="force the projected attention (the 'before')")
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    bank = paper_bank(device)
    features = torch.randn(args.batch_size, args.tokens, bank.teacher_hidden_size, device=device)

    def step() -> None:
        with forced_attention(False) if args.projected else contextlib.nullcontext():
            context = bank(features, dense=args.dense)
        (context.tokens.float().square().mean() + context.load_balance_loss).backward()
        for param in bank.parameters():
            param.grad = None
        synchronize(device)

    step()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=args.rows))


if __name__ == "__main__":
    main()
