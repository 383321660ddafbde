"""Config of the `ckt_wam` policy: peft-ckt's flow-matching world action model on a diffusers Wan / Cosmos
transformer (see `peft_ckt.wam.WorldActionModel` for every field's meaning)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import NormalizationMode
from lerobot.optim.optimizers import AdamWConfig


@PreTrainedConfig.register_subclass("ckt_wam")
@dataclass
class CKTWamConfig(PreTrainedConfig):
    backbone: str = "cosmos"
    image_size: int = 32
    pixel_block: int = 8
    chunk_size: int = 16
    n_action_steps: int = 8
    num_layers: int = 4
    num_attention_heads: int = 2
    attention_head_dim: int = 32
    text_dim: int = 32
    max_text_length: int = 16
    num_inference_steps: int = 5
    # Instruction words; built from the dataset's tasks when empty (and then saved with the policy).
    vocabulary: list[str] = field(default_factory=list)
    # The wrist camera: the dataset's key, or LeRobot's LIBERO env key (`image2`), whichever the batch holds.
    wrist_image_keys: list[str] = field(
        default_factory=lambda: ["observation.images.wrist_image", "observation.images.image2"]
    )
    # The model normalises its inputs and outputs itself (from the dataset statistics, saved as its buffers).
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.IDENTITY,
            "ACTION": NormalizationMode.IDENTITY,
        }
    )
    optimizer_lr: float = 1e-3
    optimizer_weight_decay: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_action_steps > self.chunk_size:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) must be <= chunk_size ({self.chunk_size})")

    @property
    def observation_delta_indices(self) -> list[int]:
        # The current frame and the one a chunk ahead: the model also learns to generate that future view.
        return [0, self.chunk_size]

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay, betas=(0.9, 0.95))

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        if "observation.images.image" not in self.image_features:
            raise ValueError(
                f"ckt_wam needs the agent-view camera `observation.images.image`; inputs: {list(self.input_features)}"
            )
