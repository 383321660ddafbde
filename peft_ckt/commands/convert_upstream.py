"""`peft-ckt convert-upstream`: turn a checkpoint of the authors' CKT-WAM code into a peft-ckt adapter folder."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """Convert a CKT-WAM training checkpoint (checkpoint_XXXXXXXX.pt from the authors' train_ckt.py) into a
peft-ckt adapter folder: adapter_model.safetensors + adapter_config.json, loadable with
PeftModel.from_pretrained(student, OUT_DIR, teacher=teacher) and ready for `peft-ckt push`.

Sizes are read from the tensors (their fused attention in_proj is split into our query/key/value projections,
dropping the key bias, which cancels in the softmax); top-k, dropout and the load-balancing weight from the
checkpoint's config. The file is read with torch.load(weights_only=True): anything but tensors and plain values is
refused. A local --student folder is checked before anything is written: it must hold a model whose conditioning
has the checkpoint's width. OUT_DIR is written all or nothing: a failure leaves an older OUT_DIR as it was. Their
training script does not freeze the student: when the checkpoint's 'student_trainable' is not empty the adapter
alone does not reproduce it; a warning says so, and --write-student-trainable writes those tensors to
student_trainable.safetensors."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-upstream",
        help="Convert an authors' CKT-WAM checkpoint (.pt) into a peft-ckt adapter folder.",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="The CKT-WAM checkpoint_XXXXXXXX.pt.")
    parser.add_argument(
        "output_dir",
        help="Folder to write the adapter into (created if needed; replaced whole, all or nothing, other files kept).",
    )
    parser.add_argument(
        "--teacher", required=True, help="Hub id or local folder of the teacher (stored in adapter_config.json)."
    )
    parser.add_argument(
        "--student",
        required=True,
        help="Hub id or local folder of the student (the adapter's base model); a local folder must exist and its "
        "conditioning must have the checkpoint's width d_s.",
    )
    parser.add_argument(
        "--teacher-class",
        default=None,
        help="Import path of the teacher's class ('package.module.Class'), used to load it by reference; default: "
        "read from the teacher's config.json when it is loaded.",
    )
    parser.add_argument(
        "--teacher-layer",
        default=None,
        help="Dotted path of the teacher block (default: blocks.<teacher_block_index> from the checkpoint's config).",
    )
    parser.add_argument(
        "--context-kwarg",
        default="encoder_hidden_states",
        help="Student forward kwarg carrying the conditioning (default: %(default)s).",
    )
    parser.add_argument(
        "--target-modules",
        default=None,
        help="Or: the student module whose output is the conditioning (their hook sits on the student's text "
        "embedding); wins over --context-kwarg.",
    )
    parser.add_argument(
        "--num-attention-heads",
        type=int,
        default=8,
        help="Heads of the cross-attention (their code fixes 8; default: %(default)s).",
    )
    parser.add_argument(
        "--write-student-trainable",
        action="store_true",
        help="Also write the checkpoint's student_trainable tensors to student_trainable.safetensors.",
    )
    parser.set_defaults(func=run)


def _usage_error(message: str) -> SystemExit:
    """One line on stderr and exit status 2, as argparse's own errors; the message names the argument at fault."""
    print(f"peft-ckt convert-upstream: error: {' '.join(message.split())}", file=sys.stderr)
    return SystemExit(2)


def run(args: argparse.Namespace) -> int:
    import warnings

    from ..upstream import (
        UpstreamConversionError,
        convert_upstream_checkpoint,
        load_upstream_checkpoint,
        save_converted,
    )

    extra = {"context_kwarg": args.context_kwarg, "target_modules": args.target_modules}
    if args.teacher_class:
        extra["teacher_class"] = args.teacher_class
    try:
        checkpoint = load_upstream_checkpoint(args.checkpoint)
        conversion = convert_upstream_checkpoint(
            checkpoint,
            teacher=args.teacher,
            teacher_layer=args.teacher_layer,
            num_attention_heads=args.num_attention_heads,
            **extra,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            written = save_converted(conversion, args.output_dir, args.student, args.write_student_trainable)
    except UpstreamConversionError as error:
        raise _usage_error(str(error)) from None
    except OSError as error:  # the output could not be written (the older output folder is left as it was)
        raise _usage_error(f"output_dir {args.output_dir!r} could not be written: {error}") from None
    for warning in caught:  # loud: on stderr, framed, whatever the warning filters
        print(f"\n{'!' * 80}\nWARNING: {warning.message}\n{'!' * 80}\n", file=sys.stderr)
    config = conversion.config
    print(
        f"Converted iteration {conversion.iteration} of {args.checkpoint}: d_t={config.teacher_hidden_size}, "
        f"d_s={config.student_hidden_size}, K={config.num_context_tokens}, M={config.num_experts}, "
        f"top-k={config.top_k}, teacher layer {config.teacher_layer}."
    )
    for path in written:
        print(f"  wrote {path}")
    return 0
