"""Training samples of the world action model from LeRobot-format LIBERO datasets (`peft-ckt collect-libero`).

One sample per recorded frame t with a fresh render (every `image_stride`-th step, see `collect-libero`): both camera images and the state at t, the action chunk `a[t : t + chunk]`
(past the end of the episode the last action is repeated, LeRobot's padding), the agent-view image at
`t + chunk` (the last frame past the end) and the instruction. Everything is decoded once and held in memory as
uint8 / float32 tensors: the 32 px datasets of the demo take a few MB per hundred demonstrations.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_KEYS = ("observation.images.image", "observation.images.wrist_image")


def read_episodes(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every episode of a LeRobot dataset folder (v3.0, or the v2.1 folders written before), as arrays.

    Returns one dict per episode: `state [T, 8]`, `action [T, 7]`, `image` / `wrist_image [T, H, W, 3]` uint8,
    `task` (instruction) and the episode metadata (`task_id`, `init_index`, `perturbation`, ...). Read through
    `peft_ckt.libero.dataset.load_lerobot_dataset`, the package's one LeRobot reader.
    """
    from ..libero.dataset import load_lerobot_dataset

    episodes = load_lerobot_dataset(root).episode_arrays()
    missing = [k for k in IMAGE_KEYS if k[len("observation.images.") :] not in (episodes[0] if episodes else {})]
    if missing:
        raise ValueError(f"{root}: the world action model needs the cameras {list(IMAGE_KEYS)}; missing {missing}")
    return episodes


class ChunkDataset(Dataset):
    """Frames of several episodes as WAM training samples (see the module docstring).

    Args:
        episodes: from `read_episodes` (several datasets may be concatenated).
        chunk_size: actions per chunk (the WAM's `chunk_size`).
    """

    def __init__(self, episodes: Sequence[dict[str, Any]], chunk_size: int = 16) -> None:
        if not episodes:
            raise ValueError("ChunkDataset needs at least one episode")
        self.chunk_size = chunk_size
        self.tasks = [e["task"] for e in episodes]
        self.image = torch.from_numpy(np.concatenate([e["image"] for e in episodes]))
        self.wrist_image = torch.from_numpy(np.concatenate([e["wrist_image"] for e in episodes]))
        self.state = torch.from_numpy(np.concatenate([e["state"] for e in episodes]))
        self.action = torch.from_numpy(np.concatenate([e["action"] for e in episodes]))
        starts, lengths, fresh = [], [], []
        offset = 0
        for e in episodes:
            length = len(e["action"])
            stride = int(e.get("image_stride", 1) or 1)
            starts.append(offset)
            lengths.append(length)
            # Samples start on frames with a fresh render (every `image_stride`-th step of the episode).
            fresh.append(torch.arange(offset, offset + length, stride))
            offset += length
        self.sample_rows = torch.cat(fresh)
        # The future frame is the fresh frame nearest below t + chunk.
        stride = max(int(e.get("image_stride", 1) or 1) for e in episodes)
        self.future_offset = (chunk_size // stride) * stride if chunk_size >= stride else chunk_size
        # Per frame: its episode, its global row, the last row of its episode.
        self.episode_of = torch.repeat_interleave(torch.arange(len(episodes)), torch.tensor(lengths))
        self.last_row = torch.tensor([s + n - 1 for s, n in zip(starts, lengths)])[self.episode_of]
        self.num_episodes = len(episodes)

    def __len__(self) -> int:
        return len(self.sample_rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batch(self.sample_rows[index : index + 1], squeeze=True)

    def batch(self, rows: torch.Tensor, squeeze: bool = False) -> dict[str, Any]:
        """Samples of the given rows, batched: images `[B, H, W, 3]` uint8, `action [B, chunk, 7]`, ..."""
        last = self.last_row[rows]
        steps = rows[:, None] + torch.arange(self.chunk_size)
        chunk_rows = torch.minimum(steps, last[:, None])
        future_rows = torch.minimum(rows + self.future_offset, last)
        out = {
            "observation.images.image": self.image[rows],
            "observation.images.wrist_image": self.wrist_image[rows],
            "observation.state": self.state[rows],
            "action": self.action[chunk_rows],
            "future.images.image": self.image[future_rows],
            "task": [self.tasks[i] for i in self.episode_of[rows].tolist()],
        }
        if squeeze:
            out = {k: (v[0] if isinstance(v, torch.Tensor) else v[0]) for k, v in out.items()}
        return out

    def statistics(self) -> dict[str, list[float]]:
        """Normalisation of the state and of the continuous action dims (the gripper keeps mean 0, std 1)."""
        action_mean = self.action.mean(0)
        action_std = self.action.std(0).clamp_min(1e-3)
        action_mean[6], action_std[6] = 0.0, 1.0
        pixels = self.image[self.sample_rows].float().div(255.0).reshape(-1, 3)
        return {
            "image_mean": pixels.mean(0).tolist(),
            "image_std": pixels.std(0).clamp_min(1e-3).tolist(),
            "state_mean": self.state.mean(0).tolist(),
            "state_std": self.state.std(0).clamp_min(1e-3).tolist(),
            "action_mean": action_mean.tolist(),
            "action_std": action_std.tolist(),
        }


def random_batches(dataset: ChunkDataset, batch_size: int, num_steps: int, seed: int = 0, start_step: int = 0) -> Any:
    """`num_steps` batches of rows drawn with replacement; batch k depends only on (seed, k), so a resumed run
    sees the same batches as an uninterrupted one."""
    for step in range(start_step, num_steps):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rows = torch.randint(0, len(dataset), (batch_size,), generator=generator)
        yield step, dataset.batch(dataset.sample_rows[rows])


def held_out_batches(dataset: ChunkDataset, max_samples: Optional[int] = None, batch_size: int = 256, seed: int = 0):
    """A fixed subset of rows (every row when `max_samples` is None), in fixed batches, for offline metrics."""
    rows = dataset.sample_rows
    if max_samples is not None and max_samples < len(rows):
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values
        rows = rows[keep]
    for start in range(0, len(rows), batch_size):
        yield dataset.batch(rows[start : start + batch_size])
