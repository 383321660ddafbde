"""What every simulation worker holds, whichever backend runs it: its set-up and its env / policy caches.

A worker is a process-pool process or a Ray actor. Building a LIBERO env takes 5-10 s and loading a policy can take
longer, so a worker keeps the last ones it used (jobs are ordered by task, so consecutive jobs of a worker usually
share them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

_ENV_CACHE: dict[str, Any] = {}
_POLICY_CACHE: dict[str, Any] = {}


def cached_env(key: tuple, factory: Callable[[], Any]) -> Any:
    """This worker's environment for `key`, built by `factory()` when the key changes (the old one is closed)."""
    if _ENV_CACHE.get("key") != key:
        old = _ENV_CACHE.pop("env", None)
        if old is not None:
            old.close()
        _ENV_CACHE["env"] = factory()
        _ENV_CACHE["key"] = key
    return _ENV_CACHE["env"]


def cached_policy(spec: str, factory: Callable[[], Any]) -> Any:
    """This worker's policy for `spec`, loaded by `factory()` when the spec changes."""
    if _POLICY_CACHE.get("spec") != spec:
        _POLICY_CACHE["policy"] = factory()
        _POLICY_CACHE["spec"] = spec
    return _POLICY_CACHE["policy"]


def episode_env(
    suite: str,
    task_id: int,
    *,
    perturbation: str,
    severity: int,
    seed: int,
    max_steps: int | None,
    image_size: int,
    cameras: tuple[str, ...] = ("image", "wrist_image"),
    render_images: bool = True,
    privileged: bool = False,
) -> Any:
    """This worker's environment for an episode (built once per task and settings), with its perturbation set.

    The episode itself starts with `env.reset(init_index)`, which applies the perturbation.
    """
    from ..envs import LiberoEnvConfig, make_env
    from ..perturbations import Perturbation

    config = LiberoEnvConfig(
        suite=suite,
        task_id=task_id,
        image_size=image_size,
        cameras=tuple(cameras),
        render_images=render_images,
        privileged=privileged,
        seed=seed,
        max_steps=max_steps,
    )
    env = cached_env(config.cache_key(), lambda: make_env(config))
    env.perturbation = Perturbation(perturbation, severity)
    return env


def drop_cached_env() -> None:
    """Close this worker's environment (an episode raised in it): the next episode builds a fresh one."""
    env = _ENV_CACHE.pop("env", None)
    _ENV_CACHE.clear()
    if env is not None:
        env.close()


def close_cached() -> None:
    """Close this worker's environment and forget its policy (at the end of a run, or of an inline run)."""
    env = _ENV_CACHE.pop("env", None)
    _ENV_CACHE.clear()
    _POLICY_CACHE.clear()
    if env is not None:
        env.close()


def _die_with_parent(parent_pid: int) -> None:
    """Make the kernel send this worker SIGKILL when its parent dies, however it dies (SIGKILL included)."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before prctl took effect: then this worker was re-parented already.
    if os.getppid() != parent_pid:
        os._exit(1)
    # Ctrl-C reaches the whole process group: the parent stops the pool, workers must not print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def init_worker(parent_pid: int | None = None) -> None:
    """Set up a simulation worker: one torch thread, LIBERO configured (headless, offline).

    `parent_pid`: the process that started this worker; the worker dies with it. A process-pool worker passes it;
    a Ray actor does not (Ray owns its actors' lifetime, and on a cluster the driver is on another machine).
    """
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    # Each worker is one simulation; torch's own thread pool would fight the other workers for the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    from ..runtime import configure_libero

    configure_libero()
