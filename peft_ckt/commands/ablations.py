"""`peft-ckt ablations`: the paper's CKT ablations and the trainable parameters of each at given widths."""

from __future__ import annotations

import argparse

DESCRIPTION = """Print the paper's CKT ablations (full bank, no specialized adapters, no generalized adapter, no
auxiliary loss) with the trainable parameters of each adapter bank, counted on the meta device (nothing is
allocated), and the paper's LIBERO-Plus total. Defaults: the paper's widths (teacher 5120, student 2048) and
hyper-parameters."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablations",
        help="Print the paper's CKT ablations and their trainable parameters.",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teacher-hidden-size", type=int, default=5120, help="d_t, width of H_T (default: 5120).")
    parser.add_argument("--student-hidden-size", type=int, default=2048, help="d_s, student width (default: 2048).")
    parser.add_argument("--num-context-tokens", type=int, default=32, help="K query tokens (default: 32).")
    parser.add_argument("--num-experts", type=int, default=8, help="M specialized adapters (default: 8).")
    parser.add_argument("--top-k", type=int, default=2, help="Experts per sample (default: 2).")
    parser.add_argument("--bottleneck-dim", type=int, default=512, help="d_b (default: 512).")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..ablations import format_ablation_table
    from ..config import CKTConfig

    config = CKTConfig(
        teacher_layer="blocks.20",  # any layer: the table only counts bank parameters
        num_context_tokens=args.num_context_tokens,
        num_experts=args.num_experts,
        top_k=args.top_k,
        bottleneck_dim=args.bottleneck_dim,
    )
    print(format_ablation_table(config, args.teacher_hidden_size, args.student_hidden_size))
    return 0
