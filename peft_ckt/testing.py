"""Tiny but real models and inputs (seconds on a CPU) for tests, examples and benchmarks.

The pairing is the paper's: a diffusers Wan2.1 video transformer as teacher, a Cosmos-Predict2 transformer as
student; both are built from config (no download) at toy sizes.
"""

from __future__ import annotations

from typing import Any

import torch

TINY_FRAMES, TINY_HEIGHT, TINY_WIDTH, TINY_CHANNELS = 2, 8, 8, 4
TINY_TEXT_LENGTH = 6


# CKT bank settings small enough for the tiny models above (one teacher block, 2 context tokens, 3 experts, top-1).
TINY_CKT_KWARGS: dict[str, Any] = dict(
    teacher_layer="blocks.1",
    num_context_tokens=2,
    num_experts=3,
    top_k=1,
    bottleneck_dim=8,
    router_hidden_dim=8,
    num_attention_heads=2,
)


def tiny_wan_teacher(num_layers: int = 4, seed: int = 0):
    """A 4-block `WanTransformer3DModel` (width 32, text width 32); blocks at `blocks.N`."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=TINY_CHANNELS,
        out_channels=TINY_CHANNELS,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=32,
    ).eval()


def tiny_cosmos_student(num_layers: int = 4, seed: int = 1):
    """A 4-block `CosmosTransformer3DModel`; its conditioning `encoder_hidden_states` has width 24."""
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(seed)
    return CosmosTransformer3DModel(
        in_channels=TINY_CHANNELS,
        out_channels=TINY_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=num_layers,
        mlp_ratio=2.0,
        text_embed_dim=24,
        adaln_lora_dim=8,
        max_size=(8, 16, 16),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 3.0, 3.0),
        concat_padding_mask=False,
        extra_pos_embed_type=None,
    ).eval()


def tiny_wan_inputs(batch_size: int = 2, seed: int = 2) -> dict[str, Any]:
    """Teacher forward kwargs: video latents `[B, 4, 2, 8, 8]`, timesteps `[B]`, text `[B, 6, 32]`."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(
            batch_size, TINY_CHANNELS, TINY_FRAMES, TINY_HEIGHT, TINY_WIDTH, generator=generator
        ),
        "timestep": torch.randint(0, 1000, (batch_size,), generator=generator),
        "encoder_hidden_states": torch.randn(batch_size, TINY_TEXT_LENGTH, 32, generator=generator),
    }


def tiny_cosmos_inputs(batch_size: int = 2, seed: int = 3) -> dict[str, Any]:
    """Student forward kwargs: latents `[B, 4, 2, 8, 8]`, timesteps `[B]`, text embeddings `[B, 6, 24]`."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(
            batch_size, TINY_CHANNELS, TINY_FRAMES, TINY_HEIGHT, TINY_WIDTH, generator=generator
        ),
        "timestep": torch.rand(batch_size, generator=generator),
        "encoder_hidden_states": torch.randn(batch_size, TINY_TEXT_LENGTH, 24, generator=generator),
    }


class TinyWorldActionModel(torch.nn.Module):
    """A plain-PyTorch world action model: from observation tokens and a text conditioning sequence it predicts the
    next frame's tokens and an action chunk. No config object, no `from_pretrained`: CKT must work on it as is.

    `forward(observation [B, N, obs_dim], text_embeds [B, L, text_dim]) -> (next_frame [B, N, obs_dim],
    actions [B, action_horizon, action_dim])`. Blocks at `blocks.N`; the text goes through `text_proj` first.
    """

    def __init__(
        self,
        obs_dim: int = 12,
        text_dim: int = 10,
        width: int = 16,
        num_blocks: int = 3,
        action_dim: int = 7,
        action_horizon: int = 4,
    ):
        super().__init__()
        nn = torch.nn
        self.obs_in = nn.Linear(obs_dim, width)
        self.text_proj = nn.Linear(text_dim, width)
        self.blocks = nn.ModuleList(
            nn.TransformerDecoderLayer(width, nhead=2, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
            for _ in range(num_blocks)
        )
        self.frame_out = nn.Linear(width, obs_dim)
        self.action_queries = nn.Parameter(torch.randn(action_horizon, width) * 0.1)
        self.action_out = nn.Linear(width, action_dim)

    def forward(self, observation: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.obs_in(observation)
        queries = self.action_queries.expand(hidden.shape[0], -1, -1)
        hidden = torch.cat([hidden, queries], dim=1)
        memory = self.text_proj(text_embeds)
        for block in self.blocks:
            hidden = block(hidden, memory)
        num_obs = observation.shape[1]
        return self.frame_out(hidden[:, :num_obs]), self.action_out(hidden[:, num_obs:])
