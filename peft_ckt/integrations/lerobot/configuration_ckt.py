"""Config of the `ckt` policy: a frozen student policy, a frozen teacher policy and the CKT adapter between them.

Student and teacher are LeRobot policy folders (`config.json` + `model.safetensors`, e.g. `lerobot-train` outputs'
`pretrained_model`); the saved `ckt` policy stores their paths, so `lerobot-eval --policy.path=...` rebuilds both.
The action and observation windows are the student's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import NormalizationMode
from lerobot.optim.optimizers import AdamWConfig


@lru_cache(maxsize=8)
def load_policy_config(path: str) -> PreTrainedConfig:
    """The config of a saved LeRobot policy folder (read once per path)."""
    return PreTrainedConfig.from_pretrained(path, local_files_only=True)


@PreTrainedConfig.register_subclass("ckt")
@dataclass
class CKTConfig(PreTrainedConfig):
    # The two frozen policies (LeRobot policy folders).
    student_path: str = ""
    teacher_path: str = ""
    # H_T: dotted path inside the teacher's `ckt_teacher_module()` (for `ckt_wam`: the world action model).
    teacher_layer: str = "backbone.blocks.1"
    # The teacher layer returns [N, B, d_t] (e.g. ACT's encoder layers).
    teacher_sequence_first: bool = False
    # Injection point in the student policy: the module whose output is the conditioning sequence E_t
    # (`ckt_wam`: `model.text_norm`), or a forward kwarg of the student carrying it.
    target_modules: list[str] = field(default_factory=lambda: ["model.text_norm"])
    context_kwarg: str | None = None
    injection: str = "append"
    # Bank sizes (peft_ckt.CKTConfig).
    num_context_tokens: int = 8
    num_experts: int = 4
    top_k: int = 2
    bottleneck_dim: int = 64
    router_hidden_dim: int = 64
    num_attention_heads: int = 2
    adapter_dropout: float = 0.1
    load_balance_weight: float = 0.01
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=dict)
    optimizer_lr: float = 3e-4
    optimizer_weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.student_path or not self.teacher_path:
            raise ValueError("The ckt policy needs --policy.student_path and --policy.teacher_path (policy folders)")

    def student_config(self) -> PreTrainedConfig:
        return load_policy_config(self.student_path)

    @property
    def n_action_steps(self) -> int:
        return getattr(self.student_config(), "n_action_steps", 1)

    @property
    def observation_delta_indices(self) -> list | None:
        return self.student_config().observation_delta_indices

    @property
    def action_delta_indices(self) -> list | None:
        return self.student_config().action_delta_indices

    @property
    def reward_delta_indices(self) -> list | None:
        return self.student_config().reward_delta_indices

    def get_optimizer_preset(self) -> AdamWConfig:
        # The paper's recipe for the adapter: AdamW, betas (0.9, 0.95), lr 3e-4.
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay, betas=(0.9, 0.95))

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        pass
