"""`ckt_wam`: peft-ckt's world action model as a LeRobot policy (`PreTrainedPolicy`).

Training batches come from a LeRobot dataset with `observation_delta_indices = [0, chunk_size]` (the current frame
and the future view the model also generates) and `action_delta_indices = range(chunk_size)`; at evaluation the
batch holds one frame. Images arrive as `[B, 3, H, W]` in [0, 1]; the model normalises them itself.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from torch import Tensor, nn

from peft_ckt.wam import WorldActionModel
from peft_ckt.wam.modeling import flow_matching_loss, sample
from peft_ckt.wam.tokenizer import build_vocabulary

from .configuration_ckt_wam import CKTWamConfig

IMAGE = "observation.images.image"
STATE = "observation.state"
GRIPPER = 6  # the gripper action stays in {-1, 1}: not normalised


def _as_list(value: Any) -> list[float]:
    return torch.as_tensor(value, dtype=torch.float32).flatten().tolist()


def wam_statistics(stats: dict[str, dict[str, Any]] | None) -> dict[str, list[float]]:
    """The model's normalisation from LeRobot's dataset statistics (as `ChunkDataset.statistics` computes it)."""
    if not stats:
        return {}
    out: dict[str, list[float]] = {}
    if STATE in stats:
        out["state_mean"] = _as_list(stats[STATE]["mean"])
        out["state_std"] = [max(s, 1e-3) for s in _as_list(stats[STATE]["std"])]
    if "action" in stats:
        mean, std = _as_list(stats["action"]["mean"]), [max(s, 1e-3) for s in _as_list(stats["action"]["std"])]
        mean[GRIPPER], std[GRIPPER] = 0.0, 1.0
        out["action_mean"], out["action_std"] = mean, std
    if IMAGE in stats:
        out["image_mean"] = _as_list(stats[IMAGE]["mean"])
        out["image_std"] = [max(s, 1e-3) for s in _as_list(stats[IMAGE]["std"])]
    return out


class CKTWamPolicy(PreTrainedPolicy):
    config_class = CKTWamConfig
    name = "ckt_wam"

    def __init__(self, config: CKTWamConfig, dataset_stats: dict | None = None, dataset_meta: Any = None, **kwargs):
        super().__init__(config)
        config.validate_features()
        if not config.vocabulary:
            if dataset_meta is None:
                raise ValueError("ckt_wam builds its vocabulary from the dataset's tasks: train it on a dataset first")
            config.vocabulary = build_vocabulary(list(dataset_meta.tasks.index))
        self.model = WorldActionModel(
            backbone=config.backbone,
            vocabulary=list(config.vocabulary),
            image_size=config.image_size,
            pixel_block=config.pixel_block,
            chunk_size=config.chunk_size,
            num_layers=config.num_layers,
            num_attention_heads=config.num_attention_heads,
            attention_head_dim=config.attention_head_dim,
            text_dim=config.text_dim,
            max_text_length=config.max_text_length,
            num_inference_steps=config.num_inference_steps,
            **wam_statistics(dataset_stats),
        )
        self.reset()

    # ---------------------------------------------------------------- LeRobot batch -> the model's batch
    def wam_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        def current(value: Tensor) -> Tensor:
            return value[:, 0] if value.ndim == 5 or (value.ndim == 3 and value.shape[-1] != 3) else value

        wrist = next((k for k in self.config.wrist_image_keys if k in batch), None)
        if wrist is None:
            raise KeyError(f"ckt_wam needs a wrist camera among {self.config.wrist_image_keys}; got {list(batch)}")
        task = batch.get("task")
        size = batch[IMAGE].shape[0]
        out = {
            IMAGE: current(batch[IMAGE]),
            "observation.images.wrist_image": current(batch[wrist]),
            STATE: batch[STATE][:, 0] if batch[STATE].ndim == 3 else batch[STATE],
            "task": [task] * size if isinstance(task, str) else list(task if task is not None else [""] * size),
        }
        if "action" in batch:
            out["action"] = batch["action"]
        if batch[IMAGE].ndim == 5:  # training: the frame a chunk ahead is the generated future view
            out["future.images.image"] = batch[IMAGE][:, -1]
        return out

    # ---------------------------------------------------------------- CKT teacher protocol (see modeling_ckt)
    def ckt_teacher_module(self) -> nn.Module:
        """The module CKT runs as the teacher (its `teacher_layer` is a path inside it)."""
        return self.model

    def ckt_teacher_inputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Keyword arguments of `ckt_teacher_module()` for one batch: deterministic, one call per observation."""
        return self.model.teacher_inputs(self.wam_batch(batch))

    # ---------------------------------------------------------------- PreTrainedPolicy
    def get_optim_params(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def reset(self) -> None:
        self._queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        out = flow_matching_loss(self.model, self.model, self.wam_batch(batch))
        return out["loss"], {"action_loss": out["action_loss"].item(), "future_loss": out["future_loss"].item()}

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        return sample(self.model, self.model, self.wam_batch(batch))["actions"]

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        if not self._queue:
            chunk = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]
            self._queue.extend(chunk.transpose(0, 1))
        return self._queue.popleft()
