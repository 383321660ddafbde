"""Tests run in the LeRobot environment only (`make test-lerobot`: .venv-lerobot, LeRobot 0.4.4); the core suite
does not collect this folder (pyproject's `norecursedirs`). Everything runs offline.

Session fixtures: a small collected LIBERO dataset and a `ckt_wam` teacher trained on it with `lerobot-train` (the
WAM and the X-VLA students learn from the same teacher); LeRobot's commands are run by `lerobot_commands`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

pytest.importorskip("lerobot", reason="needs the LeRobot environment: make test-lerobot")

from lerobot_commands import BIN, run_command, train_wam  # noqa: E402  (after the skip)


@pytest.fixture(scope="session")
def lerobot_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lerobot")


@pytest.fixture(scope="session")
def demos(lerobot_root) -> Path:
    """Two LIBERO-Object tasks, one short episode each, collected as a LeRobot v3.0 dataset at 32x32."""
    pytest.importorskip("libero")
    folder = lerobot_root / "demos"
    run_command([str(BIN / "peft-ckt"), "collect-libero", "--suite", "libero_object", "--tasks", "0,1", "--episodes",
                 "1", "--max-steps", "24", "--keep-failures", "--image-size", "32", "--workers", "0", "--output",
                 str(folder), "--no-progress"], lerobot_root)  # fmt: skip
    return folder


@pytest.fixture(scope="session")
def wam_teacher(demos, lerobot_root) -> Path:
    """A `ckt_wam` (Wan backbone) trained by lerobot-train: the teacher of every `ckt` policy here."""
    return train_wam(demos, "wan", lerobot_root / "teacher")
