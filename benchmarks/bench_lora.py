"""One training step of CKT against LoRA on the same student.

Step = forward, flow-matching-style MSE loss (+ the weighted load-balancing loss for CKT), backward, AdamW step.
CKT runs the teacher to `l*` inside the step (live teacher); a second CKT variant reads precomputed teacher
features (`encode_features`, the teacher-feature cache: no teacher in memory). LoRA: peft `LoraConfig(r=16)` on the
attention projections (`to_q`, `to_k`, `to_v`, `to_out.0` of self- and cross-attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

import peft_ckt  # noqa: F401  (registers "ckt" with peft)

from .harness import time_pair, training_step_memory
from .result import BenchmarkResult, Row
from .sizes import Sizes, ckt_config, cosmos_student, student_inputs, teacher_inputs, wan_teacher

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def run(sizes: Sizes, device: torch.device) -> BenchmarkResult:
    teacher = wan_teacher(sizes, device)
    ckt_model = get_peft_model(cosmos_student(sizes, device), ckt_config(sizes, teacher)).train()
    lora_model = get_peft_model(
        cosmos_student(sizes, device), LoraConfig(r=16, lora_alpha=16, target_modules=LORA_TARGETS)
    ).train()
    t_inputs, s_inputs = teacher_inputs(sizes, device), student_inputs(sizes, device)
    target = torch.randn_like(s_inputs["hidden_states"])
    ckt_optimizer = torch.optim.AdamW(_trainable(ckt_model), lr=1e-4)
    lora_optimizer = torch.optim.AdamW(_trainable(lora_model), lr=1e-4)
    cached_features = ckt_model.extract_teacher_features(t_inputs)

    def ckt_step() -> None:
        out = ckt_model(**s_inputs, teacher_inputs=t_inputs)
        loss = F.mse_loss(out.sample, target) + ckt_model.auxiliary_loss()
        loss.backward()
        ckt_optimizer.step()
        ckt_optimizer.zero_grad(set_to_none=True)

    def ckt_cached_step() -> None:
        context = ckt_model.encode_features(cached_features)
        out = ckt_model(**s_inputs, ckt_context=context)
        loss = F.mse_loss(out.sample, target) + ckt_model.auxiliary_loss()
        loss.backward()
        ckt_optimizer.step()
        ckt_optimizer.zero_grad(set_to_none=True)

    def lora_step() -> None:
        out = lora_model(**s_inputs)
        F.mse_loss(out.sample, target).backward()
        lora_optimizer.step()
        lora_optimizer.zero_grad(set_to_none=True)

    live = time_pair(lora_step, ckt_step, device, warmup=sizes.warmup, repeats=sizes.repeats)
    cached = time_pair(lora_step, ckt_cached_step, device, warmup=sizes.warmup, repeats=sizes.repeats)

    lora_memory = training_step_memory(lora_step, [lora_model], device)
    ckt_memory = training_step_memory(ckt_step, [ckt_model, teacher], device)
    cached_memory = training_step_memory(ckt_cached_step, [ckt_model], device)
    if device.type != "cuda":  # the cached features stay resident during the step
        cached_memory.peak_bytes += cached_features.numel() * cached_features.element_size()

    memory_ratio = ckt_memory.peak_bytes / lora_memory.peak_bytes
    cached_memory_ratio = cached_memory.peak_bytes / lora_memory.peak_bytes
    ckt_trainable = sum(p.numel() for p in _trainable(ckt_model))
    lora_trainable = sum(p.numel() for p in _trainable(lora_model))
    student_params = sum(p.numel() for p in lora_model.get_base_model().parameters()) - lora_trainable
    teacher_params = sum(p.numel() for p in teacher.parameters())

    result = BenchmarkResult("ckt_vs_lora")
    result.metrics = {
        "ckt_vs_lora_step_time_ratio": live.ratio,
        "ckt_vs_lora_peak_memory_ratio": memory_ratio,
        "ckt_cached_vs_lora_step_time_ratio": cached.ratio,
        "ckt_cached_vs_lora_peak_memory_ratio": cached_memory_ratio,
        "peak_memory_method": lora_memory.method,
    }
    result.details = {
        "lora": {"r": 16, "target_modules": LORA_TARGETS, "trainable_parameters": lora_trainable},
        "ckt_trainable_parameters": ckt_trainable,
        "student_parameters": student_params,
        "teacher_parameters": teacher_params,
        "lora_step_seconds": live.a_seconds,
        "ckt_step_seconds": live.b_seconds,
        "ckt_cached_step_seconds": cached.b_seconds,
        "timings_live": live.as_dict(),
        "timings_cached": cached.as_dict(),
        "memory_lora": lora_memory.as_dict(),
        "memory_ckt": ckt_memory.as_dict(),
        "memory_ckt_cached": cached_memory.as_dict(),
    }
    mib = 2**20
    result.rows = [
        Row("train step: CKT (live teacher) / LoRA r=16", live.ratio),
        Row("train step: CKT (cached features) / LoRA r=16", cached.ratio),
        Row("peak memory: CKT (teacher resident) / LoRA", memory_ratio),
        Row("peak memory: CKT (cached features) / LoRA", cached_memory_ratio),
        Row("  activations saved: CKT / LoRA", ckt_memory.activation_bytes / max(lora_memory.activation_bytes, 1)),
        Row("  peak memory LoRA", lora_memory.peak_bytes / mib, unit="MiB"),
        Row("trainable params: CKT / LoRA", ckt_trainable / lora_trainable),
    ]
    return result
