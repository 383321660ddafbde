"""The world action model as a LeRobot-style LIBERO policy: a saved WAM, or a saved student WAM + adapter.

`peft-ckt eval-libero --policy PATH` loads, through `WAMPolicy.from_pretrained(PATH)`:

- a WAM folder (`config.json` with `"type": "wam"` + `model.safetensors`), or
- a peft adapter folder (`adapter_config.json` + `adapter_model.safetensors`): a CKT adapter or a LoRA adapter on the
  student WAM named by `base_model_name_or_path`. A CKT adapter's teacher is loaded from its stored reference.
- a control folder (`config.json` with `"type": "wam"` and `"adapter"`: the path of a CKT adapter folder, relative to
  the control folder): the same CKT adapter with an uninformative teacher context at inference, to measure how much
  of what it does is the teacher's content: `"teacher_instructions"` maps an instruction to the one the teacher is
  fed instead, `"zero_teacher_features": true` replaces the teacher's features by zeros before the bank.

With CKT, the teacher and the adapter bank run once per predicted chunk (`encode_teacher`); the context is then
reused for every denoising step of the student.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..libero.policies import LiberoPolicy, register_policy
from .modeling import WorldActionModel, sample


def observation_to_wam_batch(observation: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, Any]:
    """One env observation -> a batch of one: images `[1, H, W, 3]` uint8, state `[1, 8]`, `task` list."""
    return {
        "observation.images.image": torch.from_numpy(np.ascontiguousarray(observation["observation.images.image"]))[
            None
        ].to(device),
        "observation.images.wrist_image": torch.from_numpy(
            np.ascontiguousarray(observation["observation.images.wrist_image"])
        )[None].to(device),
        "observation.state": torch.as_tensor(observation["observation.state"], dtype=torch.float32)[None].to(device),
        "task": [observation["task"]],
    }


@register_policy("wam")
class WAMPolicy(LiberoPolicy):
    """Plays `n_action_steps` actions of each chunk the world action model samples.

    Args:
        model: the `WorldActionModel`, or a `PeftModel` around it (CKT or LoRA).
        n_action_steps: actions executed per chunk before sampling the next one.
        seed: seed of the sampling noise, reset at every episode (the same noise for every policy compared).
    """

    needs_images = True
    image_keys = ("image", "wrist_image")

    def __init__(
        self,
        model: nn.Module,
        n_action_steps: int = 8,
        seed: int = 0,
        teacher_instructions: Optional[dict[str, str]] = None,
        zero_teacher_features: bool = False,
    ) -> None:
        super().__init__()
        torch.set_flush_denormal(True)  # subnormal floats run ~100x slower on CPUs (see training.train_wam)
        self.model = model.eval()
        self.wam: WorldActionModel = _unwrap(model)
        self.image_size = self.wam.image_size
        self.n_action_steps = n_action_steps
        self.seed = seed
        self.is_ckt = _peft_type(model) == "CKT"
        self.teacher: Optional[WorldActionModel] = None
        if self.is_ckt:
            self.teacher = model.base_model.peft_config[model.active_adapter].teacher_module
        elif teacher_instructions or zero_teacher_features:
            raise ValueError("teacher_instructions / zero_teacher_features change a CKT adapter's teacher context")
        self.teacher_instructions = dict(teacher_instructions or {})
        self.zero_teacher_features = zero_teacher_features
        self._generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        super().reset()
        self._generator = torch.Generator().manual_seed(self.seed)

    @torch.no_grad()
    def predict_action_chunk(self, observation: dict[str, Any]) -> np.ndarray:
        batch = observation_to_wam_batch(observation, self.wam.device)
        ckt: dict[str, Any] = {}
        if self.is_ckt:
            ckt["ckt_context"] = self._context(batch)
        chunk = sample(self.model, self.wam, batch, generator=self._generator, **ckt)["actions"][0]
        return chunk.cpu().numpy()

    def _context(self, batch: dict[str, Any]):
        teacher = self._teacher()
        if self.teacher_instructions:
            batch = {**batch, "task": [self.teacher_instructions.get(task, task) for task in batch["task"]]}
        inputs = teacher.teacher_inputs(batch)
        if not self.zero_teacher_features:
            return self.model.encode_teacher(inputs)
        features = self.model.extract_teacher_features(inputs)
        return self.model.encode_features(torch.zeros_like(features))

    def _teacher(self) -> WorldActionModel:
        if self.teacher is None:
            # A stored reference is trust-checked, loaded and attached once, on first use.
            self.teacher = self.model.base_model.teacher_module(self.model.active_adapter)
        return self.teacher

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, n_action_steps: int = 8, seed: int = 0, trust_remote_code: bool = False
    ) -> WAMPolicy:
        """A WAM folder, or a peft adapter folder on a student WAM (see the module docstring). `trust_remote_code`
        lets a CKT adapter's teacher reference name a class outside diffusers/transformers/peft_ckt or pickle
        weights."""
        directory = Path(path)
        adapter_config = directory / "adapter_config.json"
        if not adapter_config.is_file():
            control = _control_config(directory)
            if control is not None:
                return cls._from_control(directory, control, n_action_steps, seed, trust_remote_code)
            return cls(WorldActionModel.from_pretrained(directory), n_action_steps=n_action_steps, seed=seed)
        from peft import PeftModel

        import peft_ckt  # noqa: F401  (registers CKT with peft)

        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter_config} names no base_model_name_or_path: cannot tell which student to load")
        student = WorldActionModel.from_pretrained(base)
        model = PeftModel.from_pretrained(student, str(directory), trust_remote_code=trust_remote_code)
        return cls(model, n_action_steps=n_action_steps, seed=seed)

    @classmethod
    def _from_control(
        cls, directory: Path, control: dict[str, Any], n_action_steps: int, seed: int, trust_remote_code: bool
    ) -> WAMPolicy:
        from ..libero.policies.factory import check_policy_spec

        unknown = sorted(set(control) - {"type", "adapter", "teacher_instructions", "zero_teacher_features"})
        if unknown:
            raise ValueError(f"{directory / 'config.json'}: unknown control field(s) {unknown}")
        adapter = (directory / str(control["adapter"])).resolve()
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{directory / 'config.json'}: 'adapter' {adapter} is not a peft adapter folder")
        check_policy_spec(adapter, trust_remote_code)  # the adapter's teacher, by the same rules as everywhere
        inner = cls.from_pretrained(adapter, n_action_steps, seed, trust_remote_code)
        return cls(
            inner.model,
            n_action_steps=n_action_steps,
            seed=seed,
            teacher_instructions=control.get("teacher_instructions"),
            zero_teacher_features=bool(control.get("zero_teacher_features", False)),
        )


def _control_config(directory: Path) -> Optional[dict[str, Any]]:
    config_file = directory / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    return config if config.get("type") == "wam" and "adapter" in config else None


def write_control_policy(
    folder: str | os.PathLike,
    adapter: str | os.PathLike,
    teacher_instructions: Optional[dict[str, str]] = None,
    zero_teacher_features: bool = False,
) -> Path:
    """Writes a control folder (see the module docstring) that plays the CKT `adapter` with an uninformative teacher
    context; `eval-libero --policy FOLDER` and the experiment's rollouts load it like any policy."""
    from ..atomic import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "type": "wam",
        "adapter": os.path.relpath(Path(adapter).resolve(), folder.resolve()),
        "teacher_instructions": dict(teacher_instructions or {}),
        "zero_teacher_features": bool(zero_teacher_features),
    }
    write_json(folder / "config.json", config)
    return folder


def _unwrap(model: nn.Module) -> WorldActionModel:
    if isinstance(model, WorldActionModel):
        return model
    base = getattr(getattr(model, "base_model", None), "model", None)
    if isinstance(base, WorldActionModel):
        return base
    raise TypeError(f"Expected a WorldActionModel or a PeftModel around one; got {type(model).__name__}")


def _peft_type(model: nn.Module) -> Optional[str]:
    config = getattr(model, "peft_config", None)
    if not config:
        return None
    peft_type = config[model.active_adapter].peft_type
    return getattr(peft_type, "value", str(peft_type))
