"""Teacher feature extraction at `l* = L/2` (early exit) against the full teacher forward.

Both run without autograd on the same inputs. The extraction stops right after block `L/2 - 1`: the embeddings
(patch, time, text) and half of the blocks run; the other half and the output head do not. Ideal ratio: a little
above 0.5 (the embeddings are shared work).
"""

from __future__ import annotations

import torch

from peft_ckt.teacher import TeacherFeatureExtractor

from .harness import time_pair
from .result import BenchmarkResult, Row
from .sizes import Sizes, teacher_inputs, wan_teacher

EARLY_EXIT_TARGET = 0.55


def run(sizes: Sizes, device: torch.device) -> BenchmarkResult:
    teacher = wan_teacher(sizes, device)
    inputs = teacher_inputs(sizes, device)
    layer = f"blocks.{sizes.teacher_layers // 2 - 1}"
    extractor = TeacherFeatureExtractor(teacher, layer)

    def full() -> None:
        with torch.no_grad():
            teacher(**inputs)

    def early() -> None:
        extractor(inputs)

    pair = time_pair(full, early, device, warmup=sizes.warmup, repeats=sizes.repeats)
    features = extractor(inputs)
    result = BenchmarkResult("early_exit")
    result.metrics = {"early_exit_time_ratio": pair.ratio}
    result.details = {
        "teacher": f"WanTransformer3DModel, {sizes.teacher_layers} blocks, width {sizes.teacher_width}",
        "teacher_layer": layer,
        "teacher_tokens": features.shape[1],
        "batch": sizes.batch,
        "full_seconds": pair.a_seconds,
        "early_exit_seconds": pair.b_seconds,
        "timings": pair.as_dict(),
    }
    result.rows = [
        Row(
            f"teacher to l*={layer} / full forward",
            pair.ratio,
            f"<= {EARLY_EXIT_TARGET:.2f}",
            pair.ratio <= EARLY_EXIT_TARGET,
        ),
        Row("teacher full forward", pair.a_seconds, unit="s"),
        Row("teacher to l*", pair.b_seconds, unit="s"),
    ]
    return result
