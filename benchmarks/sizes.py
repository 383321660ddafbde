"""Benchmark sizes per device, and builders of the real models they run on.

The teacher is a diffusers `WanTransformer3DModel` and the student a `CosmosTransformer3DModel` (the paper's
pairing), built from config like `peft_ckt.testing`'s tiny models but wider and deeper (8 teacher blocks, so that
`l* = L/2` is meaningful) and with enough tokens that the blocks, not Python overhead, dominate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from peft_ckt import CKTConfig
from peft_ckt.layer import CKTAdapterBank

# The paper's widths: DreamZero-14B (Wan2.1, width 5120) -> Cosmos-Policy-2B (width 2048).
PAPER_TEACHER_WIDTH, PAPER_STUDENT_WIDTH = 5120, 2048
PAPER_STUDENT_PARAMETERS = 2_000_000_000  # "2B" student: the denominator asked for
PAPER_TEACHER_PARAMETERS = 14_000_000_000  # "14B" teacher


@dataclass
class Sizes:
    """Everything a benchmark run needs to know about its sizes (recorded in the JSON)."""

    name: str
    # sparse vs dense bank, at the paper's widths
    bank_batch: int
    bank_tokens: int
    # teacher (Wan) and student (Cosmos)
    teacher_heads: int
    teacher_head_dim: int
    teacher_ffn: int
    teacher_layers: int
    student_heads: int
    student_head_dim: int
    student_layers: int
    student_text_dim: int
    latent: tuple[int, int, int, int]  # channels, frames, height, width (before the (1, 2, 2) patching)
    batch: int
    text_length: int = 16
    # the CKT adapter on the benchmark pair (paper defaults for K, M, top-k; widths scaled to the models)
    bottleneck_dim: int = 64
    router_hidden_dim: int = 64
    ckt_heads: int = 4
    sampling_steps: int = 10
    # scaling sweep of the bank (paper widths unless scaled_width_divisor > 1)
    scaling_tokens: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    scaling_batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    scaling_fixed_tokens: int = 128
    scaling_fixed_batch: int = 2
    scaling_width_divisor: int = 1
    lqca_width_divisor: int = 1  # the LQCA sweep runs at the paper's d_s=2048 divided by this
    compare_attention_time: bool = True  # also time the sparse bank with the projected (pre-absorption) attention
    warmup: int = 1
    repeats: int = 5
    bank_repeats: Optional[int] = None  # repeats of the sparse/dense pair (default: `repeats`)

    @property
    def teacher_width(self) -> int:
        return self.teacher_heads * self.teacher_head_dim

    @property
    def teacher_tokens(self) -> int:
        _, frames, height, width = self.latent
        return frames * (height // 2) * (width // 2)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "teacher_width": self.teacher_width, "teacher_tokens": self.teacher_tokens}


PROFILES: dict[str, Sizes] = {
    # seconds: only for the smoke test of the benchmark code itself (numbers are not meaningful)
    "tiny": Sizes(
        name="tiny",
        bank_batch=2,
        bank_tokens=8,
        teacher_heads=2,
        teacher_head_dim=16,
        teacher_ffn=64,
        teacher_layers=8,
        student_heads=2,
        student_head_dim=16,
        student_layers=2,
        student_text_dim=24,
        latent=(4, 2, 8, 8),
        batch=2,
        text_length=6,
        bottleneck_dim=16,
        router_hidden_dim=16,
        ckt_heads=2,
        sampling_steps=3,
        scaling_tokens=[4, 8],
        scaling_batches=[1, 2],
        scaling_fixed_tokens=8,
        scaling_fixed_batch=1,
        scaling_width_divisor=64,
        lqca_width_divisor=64,
        warmup=0,
        repeats=1,
    ),
    # 2 CPU cores, a few minutes
    "quick": Sizes(
        name="quick",
        bank_batch=8,
        bank_tokens=512,
        bank_repeats=2,
        teacher_heads=4,
        teacher_head_dim=64,
        teacher_ffn=1024,
        teacher_layers=8,
        student_heads=4,
        student_head_dim=64,
        student_layers=4,
        student_text_dim=64,
        latent=(16, 2, 32, 32),
        batch=2,
        scaling_tokens=[128, 256, 512, 1024],
        scaling_batches=[1, 2, 4],
        scaling_fixed_tokens=256,
        scaling_fixed_batch=2,
        scaling_width_divisor=4,
        compare_attention_time=False,
        repeats=3,
    ),
    # a full CPU run (~15 minutes on 2 cores)
    "cpu": Sizes(
        name="cpu",
        bank_batch=8,
        bank_tokens=512,
        teacher_heads=4,
        teacher_head_dim=64,
        teacher_ffn=1024,
        teacher_layers=8,
        student_heads=4,
        student_head_dim=64,
        student_layers=8,
        student_text_dim=128,
        latent=(16, 4, 32, 32),
        batch=2,
        scaling_tokens=[256, 512, 1024, 2048],
        scaling_batches=[1, 2, 4, 8],
        scaling_fixed_tokens=512,
        scaling_fixed_batch=2,
        scaling_width_divisor=2,
        repeats=5,
    ),
    # one GPU (H100 class)
    "cuda": Sizes(
        name="cuda",
        bank_batch=8,
        bank_tokens=2048,
        teacher_heads=8,
        teacher_head_dim=128,
        teacher_ffn=4096,
        teacher_layers=8,
        student_heads=8,
        student_head_dim=64,
        student_layers=8,
        student_text_dim=256,
        latent=(16, 4, 64, 64),
        batch=4,
        bottleneck_dim=128,
        router_hidden_dim=128,
        ckt_heads=8,
        scaling_tokens=[256, 512, 1024, 2048, 4096],
        scaling_batches=[1, 2, 4, 8, 16],
        scaling_fixed_tokens=1024,
        scaling_fixed_batch=4,
        warmup=2,
        repeats=10,
    ),
}


def profile_for(device: torch.device, quick: bool, tiny: bool) -> Sizes:
    if tiny:
        return PROFILES["tiny"]
    if quick:
        return PROFILES["quick"]
    return PROFILES["cuda" if device.type == "cuda" else "cpu"]


# ------------------------------------------------------------------------------------------------------- builders
def paper_config(**overrides: Any) -> CKTConfig:
    """The paper's CKT hyper-parameters (the CKTConfig defaults)."""
    return CKTConfig(teacher_layer="blocks.20", **overrides)


def paper_bank(device: torch.device, width_divisor: int = 1, seed: int = 0) -> CKTAdapterBank:
    """The adapter bank at the paper's configuration (d_t=5120 -> d_s=2048, K=32, M=8, top-2, d_b=512), in training
    mode. `width_divisor` shrinks every width alike (for quick runs)."""
    torch.manual_seed(seed)
    divisor = width_divisor
    config = paper_config(bottleneck_dim=max(512 // divisor, 4), router_hidden_dim=max(512 // divisor, 4))
    config.num_attention_heads = min(config.num_attention_heads, PAPER_STUDENT_WIDTH // divisor)
    bank = CKTAdapterBank(config, PAPER_TEACHER_WIDTH // divisor, PAPER_STUDENT_WIDTH // divisor)
    return bank.to(device).train()


def wan_teacher(sizes: Sizes, device: torch.device, seed: int = 0):
    """A `WanTransformer3DModel` with `sizes.teacher_layers` blocks at `blocks.N`, frozen, in eval mode."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    channels, frames, height, width = sizes.latent
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=sizes.teacher_heads,
        attention_head_dim=sizes.teacher_head_dim,
        in_channels=channels,
        out_channels=channels,
        text_dim=sizes.teacher_width,
        freq_dim=64,
        ffn_dim=sizes.teacher_ffn,
        num_layers=sizes.teacher_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=max(64, frames, height, width),
    )
    return model.to(device).eval().requires_grad_(False)


def cosmos_student(sizes: Sizes, device: torch.device, seed: int = 1):
    """A `CosmosTransformer3DModel` whose conditioning `encoder_hidden_states` has width `sizes.student_text_dim`."""
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(seed)
    channels, frames, height, width = sizes.latent
    model = CosmosTransformer3DModel(
        in_channels=channels,
        out_channels=channels,
        num_attention_heads=sizes.student_heads,
        attention_head_dim=sizes.student_head_dim,
        num_layers=sizes.student_layers,
        mlp_ratio=4.0,
        text_embed_dim=sizes.student_text_dim,
        adaln_lora_dim=32,
        max_size=(frames, height, width),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 3.0, 3.0),
        concat_padding_mask=False,
        extra_pos_embed_type=None,
    )
    return model.to(device).eval().requires_grad_(False)


def teacher_inputs(sizes: Sizes, device: torch.device, seed: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    channels, frames, height, width = sizes.latent
    inputs = {
        "hidden_states": torch.randn(sizes.batch, channels, frames, height, width, generator=generator),
        "timestep": torch.randint(0, 1000, (sizes.batch,), generator=generator),
        "encoder_hidden_states": torch.randn(sizes.batch, sizes.text_length, sizes.teacher_width, generator=generator),
    }
    return {key: value.to(device) for key, value in inputs.items()}


def student_inputs(sizes: Sizes, device: torch.device, seed: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    channels, frames, height, width = sizes.latent
    inputs = {
        "hidden_states": torch.randn(sizes.batch, channels, frames, height, width, generator=generator),
        "timestep": torch.rand(sizes.batch, generator=generator),
        "encoder_hidden_states": torch.randn(
            sizes.batch, sizes.text_length, sizes.student_text_dim, generator=generator
        ),
    }
    return {key: value.to(device) for key, value in inputs.items()}


def ckt_config(sizes: Sizes, teacher) -> CKTConfig:
    """CKT on the benchmark pair: the paper's K=32, M=8, top-2, teacher layer l* = L/2 (the output of block
    L/2 - 1, i.e. half of the blocks run); bottleneck and router widths scaled to the models."""
    return CKTConfig(
        teacher=teacher,
        teacher_layer=f"blocks.{sizes.teacher_layers // 2 - 1}",
        context_kwarg="encoder_hidden_states",
        bottleneck_dim=sizes.bottleneck_dim,
        router_hidden_dim=sizes.router_hidden_dim,
        num_attention_heads=sizes.ckt_heads,
    )
