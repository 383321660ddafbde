"""Episodes in parallel worker processes, with one environment and one policy cached per worker."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from tqdm.auto import tqdm

# Worker-local caches: building a LIBERO env takes 5-10 s and loading a policy can take longer, so a worker keeps
# the last ones it used (jobs are ordered by task, so consecutive jobs of a worker usually share them).
_ENV_CACHE: dict[str, Any] = {}
_POLICY_CACHE: dict[str, Any] = {}


def cached_env(key: tuple, factory: Callable[[], Any]) -> Any:
    if _ENV_CACHE.get("key") != key:
        old = _ENV_CACHE.pop("env", None)
        if old is not None:
            old.close()
        _ENV_CACHE["env"] = factory()
        _ENV_CACHE["key"] = key
    return _ENV_CACHE["env"]


def cached_policy(spec: str, factory: Callable[[], Any]) -> Any:
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
    from .env import LiberoEnv
    from .perturbations import Perturbation

    key = (suite, task_id, image_size, tuple(cameras), render_images, privileged, seed, max_steps)
    env = cached_env(
        key,
        lambda: LiberoEnv(
            suite,
            task_id,
            image_size=image_size,
            cameras=tuple(cameras),
            render_images=render_images,
            privileged=privileged,
            seed=seed,
            max_steps=max_steps,
        ),
    )
    env.perturbation = Perturbation(perturbation, severity)
    return env


def close_cached() -> None:
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


def _init_worker(parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    # Each worker is one simulation; torch's own thread pool would fight the other workers for the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    from .runtime import configure_libero

    configure_libero()


def _terminate_pool(pool: ProcessPoolExecutor) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


def default_num_workers(num_jobs: int) -> int:
    return max(1, min(os.cpu_count() or 1, num_jobs))


BACKENDS = ("process", "ray")


def check_backend(backend: str, num_workers: int | None, ray_gpus_per_worker: float = 0.0) -> None:
    """One clear ValueError for a backend that cannot run (checked before any work)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if ray_gpus_per_worker < 0:
        raise ValueError(f"--ray-gpus-per-worker must be >= 0; got {ray_gpus_per_worker}")
    if backend != "ray":
        if ray_gpus_per_worker:
            raise ValueError("--ray-gpus-per-worker needs --backend ray")
        return
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"--backend ray needs --workers >= 1 (0 runs inline, in this process); got {num_workers}")
    from .ray_backend import ray_import_error

    reason = ray_import_error()
    if reason is not None:
        raise ValueError(reason)


def run_jobs(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    num_workers: int | None,
    desc: str,
    progress: bool = True,
    unit: str = "episode",
    backend: str = "process",
    ray_address: str | None = None,
    ray_gpus_per_worker: float = 0.0,
    info: dict | None = None,
) -> Iterator[Any]:
    """Yield `fn(job)` for every job as it completes, with a progress bar (ETA included).

    `num_workers=0` runs in this process (no start-up cost; used by tests and debugging); None: one worker per CPU
    (with Ray: as many actors as the cluster holds). Workers are spawned, not forked: forking a process that holds
    an OpenGL context or torch threads is unsafe. `backend="ray"` runs the jobs on Ray actors instead (see
    `ray_backend.run_jobs_ray`; `ray_address`, `ray_gpus_per_worker`). `info["workers"]` receives the worker count.
    """
    if backend == "ray":
        from .ray_backend import run_jobs_ray

        yield from run_jobs_ray(
            fn,
            jobs,
            num_workers,
            desc,
            progress=progress,
            unit=unit,
            address=ray_address,
            gpus_per_worker=ray_gpus_per_worker,
            info=info,
        )
        return
    check_backend(backend, num_workers)
    if num_workers is None:
        num_workers = default_num_workers(len(jobs))
    if info is not None:
        info["workers"] = num_workers
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
    try:
        if num_workers <= 0:
            try:
                for job in jobs:
                    result = fn(job)
                    bar.update(1)
                    yield result
            finally:
                close_cached()
            return
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            max_workers=num_workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
        )
        finished = False
        try:
            # Keep at most 2 jobs per worker in flight so that jobs stay in task order (and envs stay cached).
            pending, queue = set(), list(jobs)[::-1]
            while queue or pending:
                while queue and len(pending) < 2 * num_workers:
                    pending.add(pool.submit(fn, queue.pop()))
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    bar.update(1)
                    yield result
            finished = True
        finally:
            if finished:
                pool.shutdown(wait=True)
            else:
                # Interrupted (Ctrl-C, an error, or the consumer stopped): no worker may outlive this call.
                _terminate_pool(pool)
    finally:
        bar.close()
