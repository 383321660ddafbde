"""One episode of a LIBERO policy, shared by both benchmarks: the policy loaded once per worker, the episode played,
its video written."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from .workers import cached_policy

__all__ = [
    "ImageSize",
    "RenderPlan",
    "check_n_action_steps",
    "choose_image_size",
    "episode_policy",
    "play_episode",
    "policy_spec",
    "write_video",
]


def check_n_action_steps(n_action_steps: int | None) -> None:
    if n_action_steps is not None and (isinstance(n_action_steps, bool) or n_action_steps < 1):
        raise ValueError(f"n_action_steps must be >= 1 (or None: the policy's own); got {n_action_steps}")


def _load_policy(spec: str, trust_remote_code: bool = False, n_action_steps: int | None = None):
    from .policies import load_policy

    policy = load_policy(spec, trust_remote_code=trust_remote_code)
    if n_action_steps is not None:
        policy.n_action_steps = n_action_steps
    return policy


def episode_policy(spec: str, trust_remote_code: bool = False, n_action_steps: int | None = None):
    """An episode's policy, loaded once per process (cached by its folder and its `n_action_steps` override)."""
    return cached_policy(f"{spec}|{n_action_steps}", lambda: _load_policy(spec, trust_remote_code, n_action_steps))


@dataclass(frozen=True)
class ImageSize:
    """The size an evaluation renders at, and why: `source` is `"requested"` (given explicitly), `"policy"` (the
    size in the policy's saved config) or `"default"` (the benchmark's, when the policy names none)."""

    pixels: int
    source: str
    policy_pixels: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"pixels": self.pixels, "source": self.source, "policy_pixels": self.policy_pixels}

    def describe(self) -> str:
        """`32 px (the policy's own)`, `256 px (requested; the policy's own is 32 px)`..."""
        if self.source == "policy":
            why = "the policy's own"
        elif self.source == "requested":
            differs = self.policy_pixels is not None and self.policy_pixels != self.pixels
            why = f"requested; the policy's own is {self.policy_pixels} px" if differs else "requested"
        else:
            why = "the benchmark's default; the policy names no size"
        return f"{self.pixels} px ({why})"


def choose_image_size(requested: int | None, spec: str, default: int) -> ImageSize:
    """`requested` when given, else the size the policy folder `spec` was saved with, else `default`."""
    from .policies import saved_image_size

    policy_pixels = saved_image_size(spec)
    if requested is not None:
        if isinstance(requested, bool) or requested < 1:
            raise ValueError(
                f"image_size must be a positive number of pixels (or None: the policy's own); got {requested}"
            )
        return ImageSize(int(requested), "requested", policy_pixels)
    if policy_pixels is not None:
        return ImageSize(policy_pixels, "policy", policy_pixels)
    return ImageSize(default, "default", None)


@dataclass(frozen=True)
class RenderPlan:
    """What an episode renders for its policy (read from the policy's class attributes, see `LiberoPolicy`)."""

    cameras: tuple[str, ...]
    privileged: bool
    # A chunking policy looks at the cameras only when its action queue is empty: render just then.
    lazy_render: bool
    render_every_step: bool

    @classmethod
    def of(cls, policy: Any) -> RenderPlan:
        needs_images = bool(getattr(policy, "needs_images", True))
        lazy = needs_images and callable(getattr(policy, "needs_observation", None))
        return cls(
            cameras=tuple(getattr(policy, "image_keys", ("image", "wrist_image"))),
            privileged=bool(getattr(policy, "needs_privileged", False)),
            lazy_render=lazy,
            render_every_step=needs_images and not lazy,
        )


def play_episode(env, policy, init_index: int, plan: RenderPlan, record: bool) -> tuple[bool, list[np.ndarray]]:
    """Reset `env` to `init_index` and run `policy` until success or the step limit; returns the success and, with
    `record`, the agent-view frames (the last one after the final step)."""
    policy.reset()
    observation = env.reset(init_index)
    frames: list[np.ndarray] = []
    success = env.check_success()
    while not success and env.num_steps < env.max_steps:
        if plan.lazy_render and policy.needs_observation():
            observation = env.render_observation()
        if record:
            kept = observation.get("observation.images.image") if plan.render_every_step else env.render("image", True)
            frames.append(kept)
        observation, _, terminated, truncated, info = env.step(np.asarray(policy.select_action(observation)))
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    if record:
        frames.append(env.render("image", for_record=True))  # noise of its own: the policy's stream is untouched
    return success, frames


def write_video(path: str | os.PathLike, frames: list[np.ndarray], fps: int = 20) -> None:
    """MP4 (H.264 through imageio-ffmpeg); sides padded to even sizes as yuv420p requires."""
    import imageio.v2 as imageio

    if not frames:
        return
    height, width = frames[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    with (
        atomic_path(path, suffix=".mp4") as tmp,
        imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=1) as writer,
    ):
        for frame in frames:
            writer.append_data(np.pad(frame, pad, mode="edge"))


def policy_spec(policy: str | os.PathLike) -> str:
    """'scripted' or the absolute path of a policy / adapter folder (FileNotFoundError otherwise)."""
    policy_spec = str(policy) if str(policy) == "scripted" else str(Path(policy).resolve())
    if policy_spec != "scripted" and not any(
        (Path(policy_spec) / name).is_file() for name in ("config.json", "adapter_config.json")
    ):
        raise FileNotFoundError(
            f"policy must be 'scripted', a policy folder with config.json or an adapter folder with "
            f"adapter_config.json; got {policy}"
        )
    return policy_spec
