"""A small reference torch policy: an MLP from proprioception to an action chunk (a template for your own)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import TorchLiberoPolicy, observation_to_batch
from .factory import register_policy


@register_policy("state_mlp")
class StateMLPPolicy(TorchLiberoPolicy):
    """`observation.state [8]` -> `[chunk_size, 7]` actions through an MLP; needs no rendering.

    It shows the whole contract (config.json + model.safetensors, `from_pretrained`, action chunks) in a few lines;
    an image policy sets `needs_images = True` and reads `observation.images.*` from `observation_to_batch`.
    """

    needs_images = False

    def __init__(self, state_dim: int = 8, hidden_dim: int = 64, chunk_size: int = 4, n_action_steps: int = 4):
        super().__init__(
            state_dim=state_dim, hidden_dim=hidden_dim, chunk_size=chunk_size, n_action_steps=n_action_steps
        )
        self.chunk_size = chunk_size
        self.n_action_steps = n_action_steps
        self.net = torch.nn.Sequential(
            torch.nn.Linear(state_dim, hidden_dim), torch.nn.GELU(), torch.nn.Linear(hidden_dim, chunk_size * 7)
        )

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """`[B, chunk_size, 7]` actions in [-1, 1] from `batch["observation.state"] [B, state_dim]`."""
        out = self.net(batch["observation.state"])
        return torch.tanh(out).view(-1, self.chunk_size, 7)

    @torch.no_grad()
    def predict_action_chunk(self, observation: dict[str, Any]) -> np.ndarray:
        return self.forward(observation_to_batch(observation))[0].numpy()
