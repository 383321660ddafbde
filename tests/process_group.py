"""Runs a multi-process launcher (accelerate launch, torchrun) in its own session, so that on a timeout, or if a rank
outlives its launcher, the whole process group is killed and no rank stays behind."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Optional

import pytest


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of launched ranks: one thread each, no GPU, and this checkout's `peft_ckt` first on the path."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=path, **extra)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_process_group(
    cmd: Sequence[str], timeout: float, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None
) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd)` in a new session; fails the test (after killing every process of the session) when it
    has not finished within `timeout` seconds."""
    proc = subprocess.Popen(
        list(cmd),
        env=dict(env or worker_env()),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"{' '.join(cmd[:3])} ... did not finish in {timeout:.0f} s (process group killed):\n{stderr[-4000:]}"
        )
    if group_alive(proc.pid):  # a rank outlived its launcher (it would re-parent to init and stay)
        kill_group(proc.pid)
        pytest.fail(f"A process of {' '.join(cmd[:3])} ... outlived the launcher (killed):\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
