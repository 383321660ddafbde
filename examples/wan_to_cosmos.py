"""The paper's pairing at full size, built on the meta device: CKT from a Wan2.1-14B teacher into a Cosmos-Predict2-2B
student, with the paper's settings, and the resulting trainable parameters.

    python examples/wan_to_cosmos.py [--teacher i2v|t2v]

What this script runs: both transformers are built from their published configs on the meta device (shapes only, no
weights allocated, nothing downloaded), CKT is attached with `get_peft_model(..., low_cpu_mem_usage=True)` (the
adapter bank is created on the meta device too) and the parameters are counted, in a few seconds on a CPU. What it
does not run: no real checkpoint is loaded, nothing runs forward, no GPU is used. The recipe below for real
checkpoints follows the library's documented training path (docs/training.md) but has not been run at this size.

Widths. The teacher's block output is `d_t = 5120` (40 heads x 128). CKT appends its context to the student's
`encoder_hidden_states`, and diffusers' Cosmos transformer has no text projection before its cross-attention, so the
context width is the T5 embedding width `text_embed_dim = 1024`, not the model width 2048. With the paper's defaults
(K=32, M=8, top-k=2, d_b=512, 8 heads) that gives ~69.1M trainable parameters. The paper's ~187.4M corresponds to
`d_s = 2048` (also printed, for comparison; see BENCHMARKS.md), i.e. a context at the student's model width.

Recipe for the real checkpoints (GPUs):

1. Load both frozen models in bf16 with `torch_dtype=torch.bfloat16` (diffusers then keeps its precision-sensitive
   modules in fp32, which casting with `.to()` would not):
       WanTransformer3DModel.from_pretrained("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", subfolder="transformer", ...)
       CosmosTransformer3DModel.from_pretrained("nvidia/Cosmos-Predict2-2B-Video2World", subfolder="transformer", ...)
   The paper's DreamZero-14B and Cosmos-Policy-2B are built on these two architectures but do not load through
   diffusers: map their weights onto these classes first.
2. Attach CKT exactly as below. The bank is created in fp32 and stays fp32; train under bf16 autocast (Accelerate's
   `mixed_precision: bf16`, as in examples/accelerate/*.yaml). Without autocast the fp32 context meets bf16 student
   weights and the forward fails with a dtype error (checked on the tiny pair on CPU).
3. Compute the teacher features once: the teacher is frozen, so its `blocks.20` output for a sample never changes.
   `peft-ckt cache-teacher --preset NAME --output-dir cache/NAME --dtype bf16 --teacher-dtype bf16` does it for a
   registered preset (`peft_ckt.training.register_preset`: your teacher, student, dataset and loss); from Python,
   `peft_ckt.teacher_cache.cache_teacher_features(teacher, "blocks.20", dataset, "cache/NAME", dtype="bf16")`.
   Under `accelerate launch` every GPU caches its share. Then train from the cache (`--teacher-cache cache/NAME`, or
   `CachedTeacherFeatures` around your dataset): the 14B teacher is not in memory while training. Budget the disk:
   a teacher token is 5120 x 2 bytes = 10 KiB in bf16; a 480p, 81-frame Wan latent (21 x 60 x 104, patches 1x2x2)
   is 32,760 tokens, i.e. 320 MiB per sample, so short, low-resolution clips pay off.
4. Launch with a config from examples/accelerate/ and a copy of examples/train_ckt.py that imports your preset:
       accelerate launch --config_file examples/accelerate/multi_gpu.yaml --num_processes 8 train_ckt.py \\
           --preset NAME --teacher-cache cache/NAME --mixed-precision bf16 --learning-rate 3e-4 \\
           --adam-beta2 0.95 --lr-scheduler cosine --warmup-ratio 0.03 --output-dir outputs/wan-to-cosmos
   (the upstream recipe: AdamW betas (0.9, 0.95), adapter lr 3e-4, warm-up and cosine, bf16; `--recipe paper` sets
   it with a 1% warm-up). DDP replicates the
   2B bf16 student (~3.6 GiB) on every GPU; use fsdp.yaml (it wraps `CosmosTransformerBlock`) when the student and
   its activations do not fit, and deepspeed_zero2.yaml to shard the bank's optimizer state.
5. Batch size: the student is frozen but still runs backward (the gradient reaches the context through every
   cross-attention), so the student's activations, not the 69M-parameter bank (~1 GiB of training state), set the
   memory. Start at a per-device batch of 1 clip, raise it until memory is nearly full, and reach the global batch
   with `--gradient-accumulation-steps`. No batch size has been measured on GPU by this project.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import CosmosTransformer3DModel, WanTransformer3DModel
from peft import get_peft_model

import peft_ckt  # noqa: F401  (registers the "ckt" peft method)
from peft_ckt import CKTAdapterBank, CKTConfig

# Wan2.1 14B transformer configs, as in diffusers' scripts/convert_wan_to_diffusers.py ("Wan-I2V-14B-480p" and
# "Wan-T2V-14B"), i.e. the configs of Wan-AI/Wan2.1-{I2V-14B-480P,T2V-14B}-Diffusers. DreamZero is I2V-based.
WAN_14B_COMMON: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,  # width 40 x 128 = 5120 = d_t
    "out_channels": 16,
    "text_dim": 4096,  # umT5-XXL embeddings
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
}
WAN_14B_CONFIGS: dict[str, dict[str, Any]] = {
    # 16 noisy latent channels + 4 mask channels + 16 channels of the encoded first frame
    "i2v": {**WAN_14B_COMMON, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120},
    "t2v": {**WAN_14B_COMMON, "in_channels": 16, "image_dim": None, "added_kv_proj_dim": None},
}
# Cosmos-Predict2 2B Video2World, as in diffusers' scripts/convert_cosmos_to_diffusers.py
# ("Cosmos-2.0-Diffusion-2B-Video2World", the config of nvidia/Cosmos-Predict2-2B-Video2World).
COSMOS_PREDICT2_2B_CONFIG: dict[str, Any] = {
    "in_channels": 16 + 1,  # latents + the conditioning-frame mask
    "out_channels": 16,
    "num_attention_heads": 16,
    "attention_head_dim": 128,  # width 16 x 128 = 2048
    "num_layers": 28,
    "mlp_ratio": 4.0,
    "text_embed_dim": 1024,  # T5 embeddings, fed to cross-attention without a projection: this is d_s
    "adaln_lora_dim": 256,
    "max_size": (128, 240, 240),
    "patch_size": (1, 2, 2),
    "rope_scale": (1.0, 3.0, 3.0),
    "concat_padding_mask": True,
    "extra_pos_embed_type": None,
}
PAPER_STUDENT_WIDTH = 2048  # the d_s behind the paper's ~187.4M trainable parameters
PAPER_REPORTED_PARAMETERS = 187.4e6


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_bank(bank: CKTAdapterBank) -> str:
    branch = count(bank.generalized)
    lqca = count(bank.generalized.cross_attention)
    separator = bank.separator.numel() if bank.separator is not None else 0
    return (
        f"{1 + len(bank.specialized)} branches x {branch:,} (of which LQCA {lqca:,}), "
        f"router {count(bank.router):,}, separator {separator:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--teacher",
        choices=sorted(WAN_14B_CONFIGS),
        default="i2v",
        help="Wan2.1-14B variant of the teacher (default: %(default)s, the base of DreamZero)",
    )
    args = parser.parse_args()

    # Meta device: every parameter has a shape and no storage, so a 16B-parameter pair costs no memory.
    with init_empty_weights():
        teacher = WanTransformer3DModel(**WAN_14B_CONFIGS[args.teacher])
        student = CosmosTransformer3DModel(**COSMOS_PREDICT2_2B_CONFIG)
    teacher_params, student_params = count(teacher), count(student)

    config = CKTConfig(
        teacher=teacher,
        teacher_layer="blocks.20",  # l* = 20 of 40, the paper's choice
        context_kwarg="encoder_hidden_states",
        teacher_hidden_size=5120,
        student_hidden_size=student.config.text_embed_dim,
    )
    # low_cpu_mem_usage=True creates the bank on the meta device as well (its weights would come from a saved
    # adapter); without it the bank is materialised and initialised for real (~0.3 GB and seconds of CPU time).
    model = get_peft_model(student, config, low_cpu_mem_usage=True)
    bank = model.get_bank()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # The same configuration at the paper's d_s = 2048, for comparison (the bank alone, also on meta).
    with torch.device("meta"):
        paper_bank = CKTAdapterBank(config, config.teacher_hidden_size, PAPER_STUDENT_WIDTH)
    paper_trainable = count(paper_bank)
    pair = teacher_params + student_params

    print(f"teacher  Wan2.1-{args.teacher.upper()}-14B-shaped WanTransformer3DModel: {teacher_params:,} parameters")
    print(f"student  Cosmos-Predict2-2B-shaped CosmosTransformer3DModel: {student_params:,} parameters")
    print(
        f"CKT      teacher_layer={config.teacher_layer}, d_t={config.teacher_hidden_size}, "
        f"d_s={config.student_hidden_size}, K={config.num_context_tokens}, M={config.num_experts}, "
        f"top-k={config.top_k}, d_b={config.bottleneck_dim}, heads={config.num_attention_heads}; "
        f"bank on device {next(bank.parameters()).device}"
    )
    print("\nprint_trainable_parameters() (peft's denominator: student + adapter):")
    model.print_trainable_parameters()
    print(f"\ntrainable parameters at d_s={config.student_hidden_size}: {trainable:,}")
    print(f"  {describe_bank(bank)}")
    print(f"  {100 * trainable / student_params:.2f}% of the student alone")
    print(f"  {100 * trainable / pair:.3f}% of teacher + student ({pair:,})")
    print(f"\nfor comparison, the same bank at the paper's d_s={PAPER_STUDENT_WIDTH}: {paper_trainable:,}")
    print(f"  (paper: ~{PAPER_REPORTED_PARAMETERS / 1e6:.1f}M, '1.17%' = 187.4M / (14B + 2B), nominal sizes)")
    print(f"  {describe_bank(paper_bank)}")
    print(f"  {100 * paper_trainable / student_params:.2f}% of the student alone")
    print(f"  {100 * paper_trainable / pair:.3f}% of teacher + student as counted here")

    gib = 1024**3
    print("\nmemory arithmetic (from the counts above, not measured):")
    print(f"  teacher weights in bf16: {2 * teacher_params / gib:.1f} GiB (not needed while training from a cache)")
    print(f"  student weights in bf16: {2 * student_params / gib:.1f} GiB")
    print(
        f"  bank training state in fp32 (weights, gradients, AdamW moments; 16 bytes/param): "
        f"{16 * trainable / gib:.2f} GiB"
    )
    print(f"  one cached teacher token in bf16: {2 * config.teacher_hidden_size / 1024:.0f} KiB")
    print(
        "\nThis run: meta-device build and parameter count on CPU only. Not run: real checkpoints, forward passes, "
        "GPUs. The recipe for real checkpoints is in `python examples/wan_to_cosmos.py --help`."
    )


if __name__ == "__main__":
    main()
