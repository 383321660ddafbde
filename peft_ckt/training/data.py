"""Training data: a small SYNTHETIC video-latent set, and the student's flow-matching loss.

`SyntheticMovingBlobs` is synthetic data, made up on the fly to exercise the whole training path on a laptop CPU.
It is not robot data and says nothing about task performance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# The four instructions of the synthetic set: the direction in which the blob moves (dy, dx per frame).
SYNTHETIC_INSTRUCTIONS = ("move right", "move left", "move down", "move up")
_DIRECTIONS = ((0.0, 1.0), (0.0, -1.0), (1.0, 0.0), (-1.0, 0.0))


class SyntheticMovingBlobs(Dataset):
    """SYNTHETIC latent videos of a Gaussian blob moving in one of four directions (a labelled stand-in for data).

    Sample `i` is a pure function of `(seed, i)`, so every process and every resumed run sees the same data.

    Each sample is a dict:
        - `latents [C, T, H, W]`: the clean latent video the student learns to denoise (the blob, coloured by a
          per-sample unit vector over the C channels, moving `speed` pixels per frame).
        - `student_conditioning [L, d_s]`: the student's "text embedding" of the instruction (fixed random table).
        - `teacher_inputs`: forward kwargs of a diffusers Wan teacher derived from the same sample: the first frame
          `hidden_states [C, 1, H, W]` (the observation), `timestep` 0 and its own instruction embedding
          `encoder_hidden_states [L, d_t_text]`.
        - `instruction`: index into `SYNTHETIC_INSTRUCTIONS`; `index`: `i`.
    """

    def __init__(
        self,
        num_samples: int = 256,
        channels: int = 4,
        num_frames: int = 2,
        height: int = 8,
        width: int = 8,
        text_length: int = 4,
        student_text_dim: int = 24,
        teacher_text_dim: int = 32,
        seed: int = 0,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.channels, self.num_frames, self.height, self.width = channels, num_frames, height, width
        self.seed = seed
        tables = torch.Generator().manual_seed(seed + 7919)
        # Instruction embeddings: one [L, d] table per instruction and per model (the models do not share a vocabulary).
        self.student_text = torch.randn(len(SYNTHETIC_INSTRUCTIONS), text_length, student_text_dim, generator=tables)
        self.teacher_text = torch.randn(len(SYNTHETIC_INSTRUCTIONS), text_length, teacher_text_dim, generator=tables)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        instruction = int(torch.randint(len(SYNTHETIC_INSTRUCTIONS), (1,), generator=g))
        dy, dx = _DIRECTIONS[instruction]
        speed = 0.5 + 1.5 * float(torch.rand((), generator=g))
        y0 = float(torch.rand((), generator=g)) * (self.height - 1)
        x0 = float(torch.rand((), generator=g)) * (self.width - 1)
        sigma = 0.8 + 0.8 * float(torch.rand((), generator=g))
        colour = F.normalize(torch.randn(self.channels, generator=g), dim=0)

        t = torch.arange(self.num_frames, dtype=torch.float32)[:, None, None]
        ys = torch.arange(self.height, dtype=torch.float32)[None, :, None]
        xs = torch.arange(self.width, dtype=torch.float32)[None, None, :]
        # Wrap around the frame so the blob never leaves it.
        cy = (y0 + dy * speed * t) % self.height
        cx = (x0 + dx * speed * t) % self.width
        dist_y = torch.minimum((ys - cy).abs(), self.height - (ys - cy).abs())
        dist_x = torch.minimum((xs - cx).abs(), self.width - (xs - cx).abs())
        blob = torch.exp(-(dist_y**2 + dist_x**2) / (2 * sigma**2))  # [T, H, W]
        latents = 2.0 * colour[:, None, None, None] * blob[None] - 0.1  # [C, T, H, W]
        return {
            "latents": latents,
            "student_conditioning": self.student_text[instruction].clone(),
            "teacher_inputs": {
                "hidden_states": latents[:, :1].clone(),
                "timestep": torch.tensor(0, dtype=torch.long),
                "encoder_hidden_states": self.teacher_text[instruction].clone(),
            },
            "instruction": instruction,
            "index": index,
        }


class FlowMatchingLoss:
    """Rectified-flow (flow-matching) velocity loss of a video diffusion student such as Cosmos.

    With clean latents `x0`, noise `e ~ N(0, I)` and `t ~ U(0, 1)` per sample: `x_t = (1 - t) x0 + t e`, and the
    student predicts the velocity `v = e - x0` from `(x_t, timestep=t * timestep_scale, conditioning)`.
    The loss is `mean((v_pred - v)^2)` in fp32.

    Args:
        latents_key: batch key of the clean latents `[B, C, T, H, W]`.
        conditioning_keys: student forward kwarg -> batch key (e.g. `encoder_hidden_states` -> the student's text).
        timestep_scale: the student's timestep convention (1000 for diffusers transformers).
        extra_inputs: constant student kwargs (e.g. `{"fps": 16}`).
    """

    def __init__(
        self,
        latents_key: str = "latents",
        conditioning_keys: Optional[Mapping[str, str]] = None,
        timestep_scale: float = 1000.0,
        extra_inputs: Optional[Mapping[str, Any]] = None,
    ):
        self.latents_key = latents_key
        self.conditioning_keys = dict(conditioning_keys or {"encoder_hidden_states": "student_conditioning"})
        self.timestep_scale = timestep_scale
        self.extra_inputs = dict(extra_inputs or {})

    def __call__(self, model: torch.nn.Module, batch: Mapping[str, Any], **ckt_kwargs: Any) -> torch.Tensor:
        """Runs `model(**student_inputs, **ckt_kwargs)` (e.g. `ckt_context=`) and returns the scalar loss."""
        # Engines that cast the whole model (DeepSpeed bf16/fp16) get inputs in its dtype; under autocast the
        # parameters stay fp32 and nothing changes.
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        clean = batch[self.latents_key].to(dtype)
        noise = torch.randn_like(clean)
        t = torch.rand(clean.shape[0], device=clean.device, dtype=clean.dtype)
        t_b = t.view(-1, *([1] * (clean.ndim - 1)))
        noisy = (1.0 - t_b) * clean + t_b * noise
        target = noise - clean
        inputs = {key: batch[source].to(dtype) for key, source in self.conditioning_keys.items()}
        out = model(hidden_states=noisy, timestep=t * self.timestep_scale, **inputs, **self.extra_inputs, **ckt_kwargs)
        prediction = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, (tuple, list)) else out)
        return F.mse_loss(prediction.float(), target.float())
