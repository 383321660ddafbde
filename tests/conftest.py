"""Fixtures shared by the core tests: the tiny Wan teacher (the paper's pairing, see `peft_ckt.testing`), one
intra-op thread for millisecond-sized ops, and a clean Accelerate state.

Imports stay inside the fixtures: this file is also loaded for tests/lerobot, which runs in LeRobot's own venv.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def teacher():
    """A 4-block diffusers `WanTransformer3DModel` (width 32; blocks at `blocks.N`), one per test module. Modules
    whose teacher is another model (e.g. GPT-2) define their own `teacher` fixture, which wins over this one."""
    from peft_ckt.testing import tiny_wan_teacher

    return tiny_wan_teacher()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Milliseconds-sized ops: one intra-op thread avoids waiting on busy cores (restored afterwards). Use it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_accelerate_state() -> Iterator[None]:
    """Accelerate keeps process-wide singletons; each in-process run starts from (and leaves) a clean slate."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
