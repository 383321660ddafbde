"""The policy interface of the LIBERO tools, in LeRobot's style.

A policy has `reset()` (called at the start of every episode) and `select_action(observation) -> action [7]`.
Policies that predict several actions at once implement `predict_action_chunk(observation) -> [T, 7]`; the base
class queues the chunk and `select_action` plays `n_action_steps` of it before asking again (LeRobot's
action-chunking convention). The observation is the un-batched dict returned by `LiberoEnv` (numpy arrays and the
instruction under `task`); `observation_to_batch` turns it into LeRobot's batched tensors.

Saved policies follow LeRobot's folder convention: `config.json` (with `policy_class`, the dotted path of the class,
or `type`, a name registered with `register_policy`) and `model.safetensors`. `load_policy(PATH)` imports the class
and calls its `from_pretrained(PATH)`; `load_policy("scripted")` gives the scripted expert. A folder is a file that
may come from anywhere: a `policy_class` outside diffusers, transformers and peft_ckt (and not registered) is imported
only with `trust_remote_code=True`.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..atomic import save_safetensors, write_json

POLICY_REGISTRY: dict[str, type] = {}
# Policy types of this package, imported on first use: `"type"` in a policy folder's config.json -> module.
BUILTIN_POLICY_MODULES = {"wam": "peft_ckt.wam.policy", "state_mlp": "peft_ckt.libero.mlp_policy"}


def register_policy(name: str):
    """Class decorator: make a policy loadable from a folder whose config.json says `"type": name`."""

    def wrap(cls: type) -> type:
        POLICY_REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


class LiberoPolicy:
    """Base class: action-chunk queue, episode reset, what the policy needs rendered.

    Class attributes a subclass sets:
        needs_images: the environment must render camera images every step (False: physics only, much faster).
        needs_privileged: the observation must carry simulator state under `privileged` (scripted experts only).
        image_keys: cameras to render, among `image` (agent view) and `wrist_image`.
        image_size: preferred render size (None: the caller's).
        n_action_steps: actions played from each predicted chunk before predicting again.
    """

    name: ClassVar[str] = "policy"
    needs_images: ClassVar[bool] = True
    needs_privileged: ClassVar[bool] = False
    image_keys: ClassVar[tuple[str, ...]] = ("image", "wrist_image")
    image_size: int | None = None
    n_action_steps: int = 1

    def __init__(self) -> None:
        self._action_queue: collections.deque[np.ndarray] = collections.deque()

    def reset(self) -> None:
        """Clear per-episode state; called before the first observation of every episode."""
        self._action_queue.clear()

    def needs_observation(self) -> bool:
        """Whether the next `select_action` looks at the observation (the queue is empty): the evaluation renders
        the cameras only then."""
        return not self._action_queue

    def predict_action_chunk(self, observation: dict[str, Any]) -> np.ndarray:
        """Actions for the next steps, `[T, 7]` in [-1, 1]. Subclasses implement this or `select_action`."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict_action_chunk or select_action")

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        """The next action `[7]`: from the queued chunk, predicting a new chunk when the queue is empty."""
        if not self._action_queue:
            chunk = np.asarray(self.predict_action_chunk(observation), dtype=np.float32)
            if chunk.ndim == 1:
                chunk = chunk[None]
            if chunk.ndim != 2 or chunk.shape[1] != 7:
                raise ValueError(
                    f"{type(self).__name__}.predict_action_chunk returned shape {chunk.shape}; want [T, 7]"
                )
            self._action_queue.extend(chunk[: max(1, self.n_action_steps)])
        return self._action_queue.popleft()


def observation_to_batch(observation: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """LeRobot batch from one env observation: state `[1, 8]` float32, images `[1, 3, H, W]` float32 in [0, 1],
    `task` as a one-element list."""
    import torch

    batch: dict[str, Any] = {}
    for key, value in observation.items():
        if key.startswith("observation.images."):
            image = torch.from_numpy(np.ascontiguousarray(value)).permute(2, 0, 1).float().div(255.0)
            batch[key] = image.unsqueeze(0).to(device)
        elif key == "observation.state":
            batch[key] = torch.as_tensor(value, dtype=torch.float32).unsqueeze(0).to(device)
        elif key == "task":
            batch[key] = [value]
    return batch


# How a user allows a policy folder (or an adapter's teacher reference) to name code outside the trusted packages.
POLICY_OPT_IN = "`trust_remote_code=True` (`--trust-remote-code` on the command line)"


def _import_object(dotted: str):
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"policy_class must be a dotted path 'package.module.Class'; got {dotted!r}")
    return getattr(importlib.import_module(module_name), attr)


def _registered_class(dotted: str) -> type | None:
    # A class registered in this process (its module is imported already): loading it imports nothing new.
    for cls in POLICY_REGISTRY.values():
        if f"{cls.__module__}.{cls.__qualname__}" == dotted:
            return cls
    return None


def check_policy_spec(spec: str | os.PathLike, trust_remote_code: bool = False) -> None:
    """Refuses, without importing anything, a policy folder whose config.json names a `policy_class` outside the
    trusted packages (diffusers, transformers, peft_ckt) and not registered, or an adapter folder whose teacher
    reference names such a class or has only pickle weights; allowed with `trust_remote_code=True`."""
    from ..teacher import check_safetensors_folder, check_trusted_class_path

    if trust_remote_code or str(spec) == "scripted":
        return
    path = Path(spec)
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        config = json.loads(adapter_config.read_text())
        teacher, teacher_class = config.get("teacher"), config.get("teacher_class")
        if isinstance(teacher, str) and teacher:
            what = f"The teacher reference ({teacher!r}) of {adapter_config}"
            if teacher_class:
                check_trusted_class_path(str(teacher_class), what, POLICY_OPT_IN)
            check_safetensors_folder(teacher, "The CKT teacher folder", POLICY_OPT_IN)
        return
    config_file = path / "config.json"
    if not config_file.is_file():
        return
    dotted = json.loads(config_file.read_text()).get("policy_class")
    if dotted and _registered_class(str(dotted)) is None:
        check_trusted_class_path(str(dotted), f"{config_file} (`policy_class`)", POLICY_OPT_IN)


def load_policy(spec: str | os.PathLike, trust_remote_code: bool = False) -> LiberoPolicy:
    """`"scripted"` -> `ScriptedExpertPolicy()`; a folder -> the class named by its config.json, `from_pretrained`.

    A `policy_class` is imported only from the trusted packages (diffusers, transformers, peft_ckt), or when that
    class is registered already (`@register_policy`); any other dotted path, or an adapter whose teacher reference
    names one or has only pickle weights, needs `trust_remote_code=True`.
    """
    if str(spec) == "scripted":
        from .expert import ScriptedExpertPolicy

        return ScriptedExpertPolicy()
    path = Path(spec)
    config_file = path / "config.json"
    check_policy_spec(path, trust_remote_code)
    if (path / "adapter_config.json").is_file():  # a peft adapter (CKT or LoRA) on a world action model
        importlib.import_module(BUILTIN_POLICY_MODULES["wam"])
        return POLICY_REGISTRY["wam"].from_pretrained(path, trust_remote_code=trust_remote_code)
    if not config_file.is_file():
        raise FileNotFoundError(
            f"--policy must be 'scripted', a policy folder with a config.json or a peft adapter folder with an "
            f"adapter_config.json; {config_file} does not exist"
        )
    config = json.loads(config_file.read_text())
    if config.get("type") in BUILTIN_POLICY_MODULES and config["type"] not in POLICY_REGISTRY:
        importlib.import_module(BUILTIN_POLICY_MODULES[config["type"]])
    if "policy_class" in config:
        cls = _registered_class(str(config["policy_class"])) or _import_object(config["policy_class"])
    elif config.get("type") in POLICY_REGISTRY:
        cls = POLICY_REGISTRY[config["type"]]
    else:
        raise ValueError(
            f"{config_file} names no loadable policy: give 'policy_class' (dotted path) or a registered 'type' "
            f"(registered: {sorted(POLICY_REGISTRY)})"
        )
    if not hasattr(cls, "from_pretrained"):
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no from_pretrained(path)")
    policy = cls.from_pretrained(path)
    for attr in ("reset", "select_action"):
        if not callable(getattr(policy, attr, None)):
            raise TypeError(f"{type(policy).__name__} lacks {attr}(); see peft_ckt.libero.policy.LiberoPolicy")
    return policy


def _torch_policy_base():
    import torch

    class TorchLiberoPolicy(torch.nn.Module, LiberoPolicy):
        """A torch policy saved LeRobot-style: config.json (constructor kwargs + class path) + model.safetensors."""

        def __init__(self, **config: Any) -> None:
            torch.nn.Module.__init__(self)
            LiberoPolicy.__init__(self)
            self.config = dict(config)

        def save_pretrained(self, save_directory: str | os.PathLike) -> None:
            directory = Path(save_directory)
            directory.mkdir(parents=True, exist_ok=True)
            config = {
                "type": getattr(type(self), "name", type(self).__name__),
                "policy_class": f"{type(self).__module__}.{type(self).__qualname__}",
                **self.config,
            }
            write_json(directory / "config.json", config)
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_safetensors(state, directory / "model.safetensors")

        @classmethod
        def from_pretrained(cls, path: str | os.PathLike):
            from safetensors.torch import load_file

            directory = Path(path)
            config = json.loads((directory / "config.json").read_text())
            kwargs = {k: v for k, v in config.items() if k not in ("type", "policy_class")}
            policy = cls(**kwargs)
            policy.load_state_dict(load_file(str(directory / "model.safetensors")))
            policy.eval()
            return policy

    return TorchLiberoPolicy


def __getattr__(name: str):
    # torch is imported only when a torch policy is asked for.
    if name == "TorchLiberoPolicy":
        cls = _torch_policy_base()
        globals()[name] = cls
        return cls
    if name == "StateMLPPolicy":
        from .mlp_policy import StateMLPPolicy

        return StateMLPPolicy
    raise AttributeError(name)
