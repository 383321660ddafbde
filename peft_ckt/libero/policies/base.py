"""The policy interface of the LIBERO tools, in LeRobot's style.

A policy has `reset()` (called at the start of every episode) and `select_action(observation) -> action [7]`.
Policies that predict several actions at once implement `predict_action_chunk(observation) -> [T, 7]`; the base
class queues the chunk and `select_action` plays `n_action_steps` of it before asking again (LeRobot's
action-chunking convention). The observation is the un-batched dict returned by `LiberoEnv` (numpy arrays and the
instruction under `task`); `observation_to_batch` turns it into LeRobot's batched tensors.

`TorchLiberoPolicy` (a `torch.nn.Module` saved LeRobot-style) is built on first access, so that importing this
module does not import torch.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...atomic import save_safetensors, write_json


class LiberoPolicy:
    """Base class: action-chunk queue, episode reset, what the policy needs rendered.

    Class attributes a subclass sets:
        needs_images: the environment must render camera images every step (False: physics only, much faster).
        needs_privileged: the observation must carry simulator state under `privileged` (scripted experts only).
        image_keys: cameras to render, among `image` (agent view) and `wrist_image`.
        image_size: the size the policy was trained at (None: any). The evaluators read it from the folder's saved
            config.json (`saved_image_size`) to choose their default render size, so a saved policy stores it there.
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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
