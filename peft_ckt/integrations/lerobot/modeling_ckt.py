"""`ckt`: CKT between two LeRobot policies.

The student policy is wrapped by peft (`get_peft_model(student, peft_ckt.CKTConfig(...))`); only the CKT bank trains.
The teacher policy stays outside the module tree (never saved, never trained) and must offer the teacher protocol:
`ckt_teacher_module()` (the module whose `teacher_layer` is read) and `ckt_teacher_inputs(batch)` (its keyword
arguments for a batch) — `ckt_wam` does.

- `forward(batch)`: teacher features of the batch -> context -> the student's `(loss, info)`, the load-balancing
  term added to the loss.
- `predict_action_chunk` / `select_action`: the teacher and the bank run once per predicted chunk
  (`injection_scope`); every denoising step of the student reuses that context.
- saving writes `config.json` (this config: student and teacher paths, layer, bank sizes) and the adapter
  (`adapter_model.safetensors` + `adapter_config.json`); `from_pretrained` rebuilds student and teacher from their
  folders and loads the adapter.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.factory import get_policy_class
from lerobot.policies.pretrained import PreTrainedPolicy
from peft import get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import Tensor, nn

import peft_ckt

from .configuration_ckt import CKTConfig, load_policy_config

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def load_policy(path: str, device: str | None) -> PreTrainedPolicy:
    """A saved LeRobot policy folder, frozen, in eval mode."""
    config = load_policy_config(path)
    config.device = device or config.device
    policy = get_policy_class(config.type).from_pretrained(path, config=config, local_files_only=True)
    return policy.eval().requires_grad_(False)


class CKTPolicy(PreTrainedPolicy):
    config_class = CKTConfig
    name = "ckt"

    def __init__(self, config: CKTConfig, dataset_stats: dict | None = None, dataset_meta: Any = None, **kwargs):
        super().__init__(config)
        student = load_policy(config.student_path, config.device)
        teacher = load_policy(config.teacher_path, config.device)
        if not hasattr(teacher, "ckt_teacher_inputs") or not hasattr(teacher, "ckt_teacher_module"):
            raise TypeError(
                f"The teacher policy ({type(teacher).__name__}) has no `ckt_teacher_module()` / "
                "`ckt_teacher_inputs(batch)`: CKT does not know which module to read and what to feed it."
            )
        # Kept out of the module tree: the teacher is not part of the saved or trained state.
        self.__dict__["teacher"] = teacher
        peft_config = peft_ckt.CKTConfig(
            teacher=teacher.ckt_teacher_module(),
            teacher_layer=config.teacher_layer,
            teacher_sequence_first=config.teacher_sequence_first,
            target_modules=list(config.target_modules) or None,
            context_kwarg=config.context_kwarg,
            injection=config.injection,
            num_context_tokens=config.num_context_tokens,
            num_experts=config.num_experts,
            top_k=config.top_k,
            bottleneck_dim=config.bottleneck_dim,
            router_hidden_dim=config.router_hidden_dim,
            num_attention_heads=config.num_attention_heads,
            adapter_dropout=config.adapter_dropout,
            load_balance_weight=config.load_balance_weight,
        )
        self.model = get_peft_model(student, peft_config)
        self.reset()

    def teacher_inputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.teacher.ckt_teacher_inputs(batch)

    # ---------------------------------------------------------------- PreTrainedPolicy
    def get_optim_params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def reset(self) -> None:
        self._queue: deque[Tensor] = deque(maxlen=max(1, self.config.n_action_steps))
        self.model.get_base_model().reset()

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict | None]:
        loss, info = self.model(batch, teacher_inputs=self.teacher_inputs(batch))
        info = dict(info or {})
        info["ckt_load_balance_loss"] = self.model.auxiliary_loss().item()
        return loss, info

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        with self.model.injection_scope(teacher_inputs=self.teacher_inputs(batch)):
            return self.model.predict_action_chunk(batch, **kwargs)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        if not self._queue:
            chunk = self.predict_action_chunk(batch, **kwargs)[:, : self._queue.maxlen]
            self._queue.extend(chunk.transpose(0, 1))
        return self._queue.popleft()

    # ---------------------------------------------------------------- saving and loading
    def _save_pretrained(self, save_directory: Path) -> None:
        self.config._save_pretrained(save_directory)
        self.model.save_pretrained(str(save_directory))

    @classmethod
    def from_pretrained(
        cls, pretrained_name_or_path: str | Path, *, config: CKTConfig | None = None, **kwargs: Any
    ) -> CKTPolicy:
        path = Path(pretrained_name_or_path)
        if config is None:
            config = PreTrainedConfig.from_pretrained(str(path), local_files_only=True)  # reads `type`
        weights = path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: not a saved ckt policy folder")
        policy = cls(config, **{k: v for k, v in kwargs.items() if k in ("dataset_stats", "dataset_meta")})
        result = set_peft_model_state_dict(policy.model, load_file(os.fspath(weights)))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{weights} holds keys this CKT bank does not have: {result.unexpected_keys[:5]}")
        policy.to(config.device)
        return policy.eval()
