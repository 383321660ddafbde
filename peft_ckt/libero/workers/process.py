"""Episodes in parallel worker processes, with one environment and one policy cached per worker.

`run_jobs` is the entry point of both backends: a pool of spawned processes (`backend="process"`) or Ray actors
(`backend="ray"`, see `workers.ray`). Workers of either kind are set up by `state.init_worker`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from tqdm.auto import tqdm

from .ray import check_ray_settings, ray_import_error, run_jobs_ray
from .state import close_cached, init_worker


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
    """One clear ValueError for a backend that cannot run (checked before any work).

    The messages name the parameters (`backend`, `num_workers`, `ray_gpus_per_worker`); a command line maps them to
    its flags.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; expected one of {', '.join(BACKENDS)}")
    if ray_gpus_per_worker < 0:
        raise ValueError(f"ray_gpus_per_worker must be >= 0; got {ray_gpus_per_worker}")
    if backend != "ray":
        if ray_gpus_per_worker:
            raise ValueError("ray_gpus_per_worker needs backend='ray'")
        return
    check_ray_settings(num_workers, ray_gpus_per_worker)
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
    `workers.ray.run_jobs_ray`; `ray_address`, `ray_gpus_per_worker`). `info["workers"]` receives the worker count.
    """
    if backend == "ray":
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
            max_workers=num_workers, mp_context=context, initializer=init_worker, initargs=(os.getpid(),)
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
