"""Timing and memory measurement shared by the benchmarks.

Timings are taken as *pairs* in one process: the two variants alternate (A B B A ...) after a warm-up, so that a
slow drift of the machine's load (the CPU may be shared) hits both sides alike, and the reported ratio is the median
of the per-repeat ratios.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    """Waits for queued device work (a no-op on CPU), so that wall-clock time covers the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_name(device: torch.device) -> str:
    return "wall clock (perf_counter, synchronized)" if device.type == "cuda" else "process CPU time (process_time)"


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of `fn` takes, device work included.

    On CUDA: wall clock around synchronized work. On CPU: the process's CPU time, which (with one torch thread)
    counts the work itself and not the time the process waits while other processes use the cores; on a shared
    machine wall-clock repeats of the same work vary by 3x, CPU time by a few percent.
    """
    if device.type != "cuda":
        start = time.process_time()
        fn()
        return time.process_time() - start
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def timed_result(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """`(seconds, fn())`, timed like [`timed`]."""
    box = []
    seconds = timed(lambda: box.append(fn()), device)
    return seconds, box[0]


@dataclass
class PairTiming:
    """Median seconds of variants A and B, and the median of the per-repeat ratios B / A."""

    a_seconds: float
    b_seconds: float
    ratio: float
    a_all: list[float] = field(default_factory=list)
    b_all: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "a_seconds": self.a_seconds,
            "b_seconds": self.b_seconds,
            "ratio": self.ratio,
            "a_all": self.a_all,
            "b_all": self.b_all,
        }


def time_pair(
    fn_a: Callable[[], Any], fn_b: Callable[[], Any], device: torch.device, warmup: int = 1, repeats: int = 5
) -> PairTiming:
    """Times `fn_a` and `fn_b` alternately (`warmup` untimed calls of each first); ratio = median(B_i / A_i)."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    a_all, b_all = [], []
    for repeat in range(repeats):
        # Alternate which variant goes first so neither always runs right after the other's allocations.
        if repeat % 2 == 0:
            a_all.append(timed(fn_a, device))
            b_all.append(timed(fn_b, device))
        else:
            b_all.append(timed(fn_b, device))
            a_all.append(timed(fn_a, device))
    ratios = [b / a for a, b in zip(a_all, b_all)]
    return PairTiming(statistics.median(a_all), statistics.median(b_all), statistics.median(ratios), a_all, b_all)


def time_one(fn: Callable[[], Any], device: torch.device, warmup: int = 1, repeats: int = 5) -> float:
    """Median seconds of `repeats` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


# ---------------------------------------------------------------------------------------------------------- memory
def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage().data_ptr()


class SavedTensorMeter:
    """Bytes of the tensors autograd saves for backward (activation memory), each storage counted once.

    Storages of `exclude` (the models' parameters, counted separately as weights) are not counted. This is what a
    training step keeps alive between forward and backward; it is deterministic, unlike RSS on a shared machine.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._excluded = {_storage_key(t) for t in exclude}
        self._seen: dict[tuple[str, int], int] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self._excluded and key[1] != 0:
            self._seen[key] = max(self._seen.get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    @contextmanager
    def measure(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())


@dataclass
class TrainingMemory:
    """Memory of one training step. On CUDA `peak_bytes` is `torch.cuda.max_memory_allocated`; on CPU it is the
    sum of the resident weights, the gradients and AdamW state of the trainable parameters, and the activations
    autograd saves for backward (see [`SavedTensorMeter`])."""

    method: str
    peak_bytes: int
    weights_bytes: int
    trainable_bytes: int
    activation_bytes: Optional[int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "peak_bytes": self.peak_bytes,
            "weights_bytes": self.weights_bytes,
            "trainable_bytes": self.trainable_bytes,
            "activation_bytes": self.activation_bytes,
        }


def training_step_memory(
    step: Callable[[], Any], modules: list[nn.Module], device: torch.device, meter_parameters: bool = True
) -> TrainingMemory:
    """Measures one call of `step` (forward, backward, optimizer step), run once before to create optimizer state.

    `modules` are all the models resident for the step (student, adapter, teacher): their parameters are the
    weights; those with `requires_grad` also carry a gradient and two AdamW moments.
    """
    params = {id(p): p for module in modules for p in module.parameters()}.values()
    weights = tensor_bytes(params)
    trainable = tensor_bytes(p for p in params if p.requires_grad)
    step()  # creates the optimizer state
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        meter = SavedTensorMeter(params)
        with meter.measure():
            step()
        torch.cuda.synchronize(device)
        return TrainingMemory(
            "torch.cuda.max_memory_allocated", torch.cuda.max_memory_allocated(device), weights, trainable, meter.bytes
        )
    meter = SavedTensorMeter(params)
    with meter.measure():
        step()
    # gradients + AdamW exp_avg + exp_avg_sq (same dtype as the parameters)
    peak = weights + 3 * trainable + meter.bytes
    return TrainingMemory(
        "weights + 3 x trainable (grad, AdamW moments) + saved activations", peak, weights, trainable, meter.bytes
    )


def forward_backward_memory(fn: Callable[[], Any], parameters: Iterable[torch.Tensor], device: torch.device) -> int:
    """Activation memory of one forward+backward: CUDA peak above the memory in use before it, or on CPU the bytes
    autograd saved for backward."""
    parameters = list(parameters)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    meter = SavedTensorMeter(parameters)
    with meter.measure():
        fn()
    return meter.bytes
