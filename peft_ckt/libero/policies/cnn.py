"""A plain CNN reference policy: both cameras, the robot state and the task, to a 16-step action chunk.

Not a world action model: the non-WAM reference row of the LIBERO transfer experiment (what a small image policy
trained on the same clean demonstrations achieves). About 0.5M parameters at 32 px.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import TorchLiberoPolicy, observation_to_batch
from .factory import register_policy

__all__ = ["CNNPolicy", "train_cnn_policy"]

CAMERA_KEYS = ("observation.images.image", "observation.images.wrist_image")


def _words(text: str) -> set[str]:
    return set("".join(c if c.isalnum() else " " for c in text.lower()).split())


class _CameraEncoder(nn.Module):
    """`[B, 3, S, S]` in [0, 1] -> `[B, feature_dim]`: three stride-2 convolutions and a projection."""

    def __init__(self, image_size: int, feature_dim: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.GELU(),
        )
        side = -(-image_size // 8)
        self.image_size = image_size
        self.proj = nn.Linear(64 * side * side, feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            # Rendered at another size (an explicit --image-size): the projection is sized for the trained one.
            images = nn.functional.interpolate(images, size=(self.image_size, self.image_size), mode="area")
        return self.proj(self.convs(images).flatten(1))


@register_policy("cnn")
class CNNPolicy(TorchLiberoPolicy):
    """Agent view + wrist view `[B, 3, S, S]`, state `[B, 8]` and task `[B]` -> actions `[B, chunk_size, 7]` in [-1, 1].

    The task is given as an index into `instructions` (the training tasks' instructions, stored in config.json); at
    rollout the observation's instruction is mapped to the known instruction that shares the most words with it, so
    a rewritten instruction still names its task when enough of its words survive.
    """

    image_keys = ("image", "wrist_image")

    def __init__(
        self,
        instructions: Sequence[str],
        image_size: int = 32,
        chunk_size: int = 16,
        n_action_steps: int = 8,
        feature_dim: int = 128,
        hidden_dim: int = 256,
    ) -> None:
        super().__init__(
            instructions=list(instructions),
            image_size=image_size,
            chunk_size=chunk_size,
            n_action_steps=n_action_steps,
            feature_dim=feature_dim,
            hidden_dim=hidden_dim,
        )
        if not instructions:
            raise ValueError("CNNPolicy needs the training tasks' instructions")
        self.instructions = list(instructions)
        self.image_size, self.chunk_size, self.n_action_steps = image_size, chunk_size, n_action_steps
        self.agent_view = _CameraEncoder(image_size, feature_dim)
        self.wrist_view = _CameraEncoder(image_size, feature_dim)
        self.state_proj = nn.Linear(8, 64)
        self.task_embedding = nn.Embedding(len(self.instructions), 32)
        self.head = nn.Sequential(
            nn.Linear(2 * feature_dim + 64 + 32, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, chunk_size * 7)
        )

    def task_index(self, instruction: str) -> int:
        words = _words(instruction)
        overlaps = [len(words & _words(known)) / max(1, len(words | _words(known))) for known in self.instructions]
        return int(np.argmax(overlaps))

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """`[B, chunk_size, 7]` from `observation.images.image` / `.wrist_image` `[B, 3, S, S]` in [0, 1],
        `observation.state [B, 8]` and `task_index [B]` (long)."""
        features = torch.cat(
            [
                self.agent_view(batch["observation.images.image"]),
                self.wrist_view(batch["observation.images.wrist_image"]),
                self.state_proj(batch["observation.state"]),
                self.task_embedding(batch["task_index"]),
            ],
            dim=-1,
        )
        return torch.tanh(self.head(features)).view(-1, self.chunk_size, 7)

    @torch.no_grad()
    def predict_action_chunk(self, observation: dict[str, Any]) -> np.ndarray:
        batch = observation_to_batch(observation)
        batch["task_index"] = torch.tensor([self.task_index(observation["task"])])
        return self.forward(batch)[0].numpy()


def train_cnn_policy(
    episodes: Sequence[dict[str, Any]],
    steps: int = 1500,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    image_size: int | None = None,
    chunk_size: int = 16,
) -> tuple[CNNPolicy, list[float]]:
    """Trains a `CNNPolicy` on demonstrations (`peft_ckt.wam.data.read_episodes` output) by action-chunk MSE.

    Returns the policy (eval mode) and the loss per step. Batches depend only on `seed`.
    """
    from ...wam.data import ChunkDataset, random_batches

    dataset = ChunkDataset(episodes, chunk_size=chunk_size)
    instructions = sorted(set(dataset.tasks))
    size = image_size or int(dataset.image.shape[1])
    torch.manual_seed(seed)
    policy = CNNPolicy(instructions, image_size=size, chunk_size=chunk_size)
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=learning_rate, weight_decay=1e-4)
    losses = []
    for _, sample in random_batches(dataset, batch_size, steps, seed=seed):
        batch = {key: sample[key].permute(0, 3, 1, 2).float().div(255.0) for key in CAMERA_KEYS}
        batch["observation.state"] = sample["observation.state"]
        batch["task_index"] = torch.tensor([instructions.index(task) for task in sample["task"]])
        loss = torch.nn.functional.mse_loss(policy(batch), sample["action"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    policy.eval()
    return policy, losses
