"""Tests run in the LeRobot environment only (`make test-lerobot`: .venv-lerobot, LeRobot 0.4.4); the core suite
does not collect this folder (pyproject's `norecursedirs`). Everything runs offline."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

pytest.importorskip("lerobot", reason="needs the LeRobot environment: make test-lerobot")
