"""Episodes on Ray: actors that keep their environment and policy between episodes, locally or on a cluster.

`run_jobs_ray` is the Ray counterpart of `process.run_jobs`: same jobs, same `fn`, results yielded as they
complete with the same progress bar, so the episode log, `--resume` and the reports do not change. Each actor is
one worker process, set up like a process-pool worker (`state.init_worker`) and holding the same per-worker caches
(`state.cached_env`, `state.cached_policy`); it runs its episodes one at a time.

This module never imports `process` (which calls into it): what both backends need lives in `state`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from ..runtime import LiberoConfigError
from .state import close_cached, init_worker

RAY_INSTALL_HINT = "install the `ray` extra: pip install 'peft-ckt[ray]'"

# A local instance started for one evaluation only moves small job and result records through the object store.
_LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2


def ray_import_error() -> str | None:
    """Why Ray cannot be used here (None when it can)."""
    try:
        import ray  # noqa: F401
    except ImportError as err:
        return f"backend='ray' needs Ray ({err}); {RAY_INSTALL_HINT}"
    return None


def check_ray_settings(num_workers: int | None, gpus_per_worker: float) -> None:
    """One clear ValueError for Ray settings that cannot run (the parameter names are those of `run_jobs`)."""
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"backend='ray' needs num_workers >= 1 (0 runs inline, in this process); got {num_workers}")
    if gpus_per_worker < 0:
        raise ValueError(f"ray_gpus_per_worker must be >= 0; got {gpus_per_worker}")


class _EpisodeWorker:
    """One Ray actor: a simulation worker, configured like a process-pool worker, with its own caches."""

    def __init__(self) -> None:
        # No parent pid: Ray owns its actors' lifetime (and on a cluster the driver runs on another machine).
        init_worker()

    def run(self, fn: Callable[[Any], Any], job: Any) -> Any:
        return fn(job)

    def close(self) -> None:
        close_cached()


def _resolve(address: str) -> str:
    """`auto`: the HOST:PORT of the cluster `ray start` recorded on this machine (it may be gone since)."""
    if address != "auto":
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die
    except ImportError:  # another Ray layout: let ray.init resolve it
        return address
    try:
        return canonicalize_bootstrap_address_or_die(address)
    except ConnectionError as err:
        raise LiberoConfigError(f"ray_address='auto': no Ray cluster started on this machine ({err})") from err


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in one line on a HOST:PORT nobody listens at (Ray itself would keep retrying for minutes)."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" and the like: Ray resolves them (and fails fast)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise LiberoConfigError(
            f"cannot reach the Ray cluster at {address}: {err} (is it running? `ray status` on its head node)"
        ) from err


def _connect(address: str | None, num_workers: int | None) -> bool:
    """Join the cluster at `address`, or start a local instance; True when this call started (and must stop) it."""
    import ray

    if ray.is_initialized():
        return False
    # Workers import peft_ckt as this process does: a local instance inherits this environment; on a cluster the
    # package (and LIBERO with its assets) must be installed on every node.
    env_vars = {"OMP_NUM_THREADS": "1"}
    if os.environ.get("PYTHONPATH"):
        env_vars["PYTHONPATH"] = os.environ["PYTHONPATH"]
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": env_vars},
        "include_dashboard": False,
        "logging_level": "warning",
        "log_to_driver": True,
    }
    if address is None:
        kwargs["address"] = "local"  # a new instance, even where `ray start` left one running
        kwargs["num_cpus"] = num_workers or os.cpu_count() or 1
        kwargs["object_store_memory"] = _LOCAL_OBJECT_STORE_BYTES
    else:
        _check_reachable(_resolve(address))
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as err:
        raise LiberoConfigError(f"cannot reach the Ray cluster at {address}: {err}") from err
    return True


def cluster_workers(num_jobs: int, gpus_per_worker: float) -> int:
    """How many 1-CPU actors (with `gpus_per_worker` GPUs each) the connected Ray cluster can hold, at most num_jobs."""
    import ray

    resources = ray.cluster_resources()
    fit = int(resources.get("CPU", 1))
    if gpus_per_worker > 0:
        fit = min(fit, int(resources.get("GPU", 0) / gpus_per_worker))
        if fit < 1:
            raise LiberoConfigError(
                f"ray_gpus_per_worker={gpus_per_worker}: the Ray cluster has {resources.get('GPU', 0):g} GPU(s)"
            )
    return max(1, min(fit, num_jobs))


def run_jobs_ray(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    num_workers: int | None,
    desc: str,
    progress: bool = True,
    unit: str = "episode",
    address: str | None = None,
    gpus_per_worker: float = 0.0,
    info: dict | None = None,
) -> Iterator[Any]:
    """Yield `fn(job)` for every job as it completes, run by `num_workers` Ray actors (None: as many as fit).

    `address=None` starts a local Ray instance for this call (stopped at the end); otherwise the cluster at
    `address` ("auto": the one `ray start` began on this machine) is joined. Each actor takes 1 CPU and
    `gpus_per_worker` GPUs. `info["workers"]` receives the number of actors. An actor lost with its node is
    restarted and its episodes rerun (episodes are deterministic); an error inside an episode stops the run.
    """
    reason = ray_import_error()
    if reason is not None:
        raise ImportError(reason)
    check_ray_settings(num_workers, gpus_per_worker)
    import ray

    started = _connect(address, None if num_workers is None else min(num_workers, len(jobs)))
    actors: list[Any] = []
    bar = None
    try:
        workers = (
            min(num_workers, len(jobs)) if num_workers is not None else cluster_workers(len(jobs), gpus_per_worker)
        )
        if info is not None:
            info["workers"] = workers
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=2, max_task_retries=2)(_EpisodeWorker)
        actors = [remote.remote() for _ in range(workers)]
        bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
        # At most 2 jobs per actor in flight, handed out in order: consecutive episodes of an actor usually share a
        # task, so its cached environment is reused (as in the process pool).
        queue = list(jobs)[::-1]
        pending: dict[Any, Any] = {}
        for actor in actors:
            for _ in range(2):
                if queue:
                    pending[actor.run.remote(fn, queue.pop())] = actor
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ready)
            result = ray.get(ready)
            if queue:
                pending[actor.run.remote(fn, queue.pop())] = actor
            bar.update(1)
            yield result
        ray.get([actor.close.remote() for actor in actors])
    finally:
        if bar is not None:
            bar.close()
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
