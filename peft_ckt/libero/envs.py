"""Environment configs behind one factory, in LeRobot's style: a registered config per benchmark, `make_env(config)`.

- `"libero"` (`LiberoEnvConfig`): a LIBERO task by suite and task id, with the package's seeded perturbations
  (`peft_ckt.libero.env.LiberoEnv`; the perturbation is set per episode on the built env).
- `"libero_plus"` (`LiberoPlusEnvConfig`): one official LIBERO-Plus task by name (`peft_ckt.libero.liberoplus`),
  its perturbation built into the task's files.

A config is a frozen dataclass: hashable, so a worker keeps one built env per config (`cache_key`) between episodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .liberoplus import OFFICIAL_IMAGE_SIZE, OFFICIAL_SEED

__all__ = ["ENV_CONFIGS", "EnvConfig", "LiberoEnvConfig", "LiberoPlusEnvConfig", "make_env", "register_env_config"]

ENV_CONFIGS: dict[str, type[EnvConfig]] = {}


def register_env_config(name: str) -> Callable[[type[EnvConfig]], type[EnvConfig]]:
    """Class decorator: `make_env(name, **fields)` builds the environment of that config type."""

    def wrap(cls: type[EnvConfig]) -> type[EnvConfig]:
        ENV_CONFIGS[name] = cls
        cls.type = name
        return cls

    return wrap


@dataclass(frozen=True)
class EnvConfig:
    """What every LIBERO environment of the package is built with (the rest is the benchmark's own)."""

    type: ClassVar[str] = "env"
    image_size: int = 128
    cameras: tuple[str, ...] = ("image", "wrist_image")
    render_images: bool = True
    privileged: bool = False
    seed: int = 0
    max_steps: int | None = None

    def cache_key(self) -> tuple:
        """Configs that build the same environment share a key (a worker keeps the last env it built)."""
        return (self.type, *dataclasses.astuple(self))

    def build(self) -> Any:
        raise NotImplementedError

    def env_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every environment class of the package takes."""
        return {
            "image_size": self.image_size,
            "cameras": tuple(self.cameras),
            "render_images": self.render_images,
            "privileged": self.privileged,
            "seed": self.seed,
            "max_steps": self.max_steps,
        }


@register_env_config("libero")
@dataclass(frozen=True)
class LiberoEnvConfig(EnvConfig):
    suite: str = "libero_object"
    task_id: int = 0

    def build(self) -> Any:
        from .env import LiberoEnv

        return LiberoEnv(self.suite, self.task_id, **self.env_kwargs())


@register_env_config("libero_plus")
@dataclass(frozen=True)
class LiberoPlusEnvConfig(EnvConfig):
    image_size: int = OFFICIAL_IMAGE_SIZE
    seed: int = OFFICIAL_SEED
    suite: str = "libero_object"
    task: str = ""
    assets: str | None = None  # the benchmark's assets folder (None: the LIBERO assets, see configure_liberoplus)

    def build(self) -> Any:
        from .liberoplus import configure_liberoplus, get_official_task
        from .liberoplus import make_env as make_official_env

        if not self.task:
            raise ValueError("LiberoPlusEnvConfig.task must name an official task")
        configure_liberoplus(self.assets)
        return make_official_env(get_official_task(self.suite, self.task), **self.env_kwargs())


def make_env(config: EnvConfig | str, **fields: Any) -> Any:
    """The environment of `config`, or of the registered config type named `config` built from `fields`."""
    if isinstance(config, str):
        if config not in ENV_CONFIGS:
            raise ValueError(f"unknown environment type {config!r}; registered: {sorted(ENV_CONFIGS)}")
        config = ENV_CONFIGS[config](**fields)
    elif fields:
        raise TypeError("make_env takes fields only with a registered type name")
    return config.build()
