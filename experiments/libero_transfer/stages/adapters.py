"""Stage 3: student+CKT and student+LoRA (and the CKT ablations) trained on the frozen student's target set."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from ..cache import adapter_fields, episodes_key, save_stage
from ..settings import TransferSettings, ablation_policy

logger = logging.getLogger(__name__)


def teacher_layer_path(settings: TransferSettings, teacher) -> str:
    """Dotted path of the teacher block CKT reads (`settings.teacher_layer`, or the middle block)."""
    if settings.teacher_layer < 0:
        return teacher.middle_layer()
    if settings.teacher_layer >= teacher.num_layers:
        raise ValueError(f"teacher_layer={settings.teacher_layer}: the teacher has {teacher.num_layers} blocks")
    return f"{teacher.block_prefix}.{settings.teacher_layer}"


def ckt_config(settings: TransferSettings, teacher, student):
    from peft_ckt.config import CKTConfig

    # peft skips a `modules_to_save` name that matches nothing: a typo would train the frozen-student CKT unnoticed.
    names = [name for name, _ in student.named_modules()]
    for suffix in settings.ckt_modules_to_save:
        if not any(name == suffix or name.endswith(f".{suffix}") for name in names):
            raise ValueError(f"ckt_modules_to_save: no student module is named {suffix!r} or ends with '.{suffix}'")

    return CKTConfig(
        teacher=teacher,
        teacher_layer=teacher_layer_path(settings, teacher),
        context_kwarg="encoder_hidden_states",
        num_context_tokens=settings.num_context_tokens,
        num_experts=settings.num_experts,
        top_k=settings.top_k,
        bottleneck_dim=settings.bottleneck_dim,
        router_hidden_dim=settings.bottleneck_dim,
        num_attention_heads=2,
        adapter_dropout=settings.adapter_dropout,
        attention_dropout=settings.attention_dropout,
        teacher_hidden_size=teacher.width,
        student_hidden_size=student.text_dim,
        modules_to_save=list(settings.ckt_modules_to_save) or None,
    )


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def lora_config(settings: TransferSettings, student, budget: int):
    """LoRA on every attention and MLP projection of the student's blocks, at the smallest rank whose trainable
    count is at least `budget` (unless `lora_rank` is set)."""
    from peft import LoraConfig

    linears = [
        m
        for name, m in student.backbone.transformer_blocks.named_modules()
        if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in LORA_TARGETS)
    ]
    per_rank = sum(m.in_features + m.out_features for m in linears)
    rank = settings.lora_rank or max(1, math.ceil(budget / per_rank))
    return LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, lora_dropout=0.0)


def adapter_stage(settings, cache, kind, teacher, student_path, target_episodes, budget=None, ablation: str = "full"):
    """Train (or load) the CKT or LoRA adapter on the frozen student; returns `(folder, record)`.

    `ablation` (CKT only) names one of `peft_ckt.ablations.PAPER_ABLATIONS` ("full": the method as specified).
    """
    from peft import get_peft_model

    import peft_ckt  # noqa: F401
    from peft_ckt.wam.data import ChunkDataset
    from peft_ckt.wam.modeling import WorldActionModel
    from peft_ckt.wam.training import train_wam

    tag = kind if ablation == "full" else f"{kind}-{ablation}"
    label = f"student+{kind}" if ablation == "full" else ablation_policy(ablation)
    data = episodes_key(settings, target_episodes)
    final = (
        cache / "adapters" / f"{tag}-{settings.key(*adapter_fields(settings, kind))}-{data}-{Path(student_path).name}"
    )
    if (final / "adapter_config.json").is_file():
        logger.info(f"{label}: cached ({final})")
        return final, json.loads((final / "training.json").read_text())
    student = WorldActionModel.from_pretrained(student_path)
    # The adapter's initial weights come from the global generator: seeded here, so that they do not depend on what
    # this process built or loaded before (a cached teacher, another adapter trained first).
    adapter_seed = settings.seed + 1 + 1_000 * settings.adapter_seed
    torch.manual_seed(adapter_seed)
    if kind == "ckt":
        from peft_ckt.ablations import ablation_config

        config = ablation_config(ckt_config(settings, teacher, student), ablation)
    else:
        config = lora_config(settings, student, budget or 0)
    model = get_peft_model(student, config)
    trainable, total = model.get_nb_trainable_parameters()
    dataset = ChunkDataset(target_episodes, chunk_size=student.chunk_size)
    logger.info(
        f"{label}: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%), "
        f"{dataset.num_episodes} target demonstrations ({len(dataset)} samples)"
    )
    result = train_wam(
        model,
        student,
        dataset,
        steps=settings.adapter_steps,
        batch_size=settings.batch_size,
        learning_rate=getattr(settings, f"{kind}_lr"),
        seed=adapter_seed,
        teacher=teacher if kind == "ckt" else None,
        checkpoint=cache / "adapters" / f"{final.name}.ckpt",
        desc=f"train {label}",
    )
    record = {
        "losses": result.losses,
        "action_losses": result.action_losses,
        "seconds": result.seconds,
        "trainable_params": trainable,
        "total_params": total,
        "expert_counts": result.expert_counts,
        "rank": getattr(config, "r", None),
    }
    save_stage(model, record, final)
    return final, record


__all__ = ["LORA_TARGETS", "adapter_stage", "ckt_config", "lora_config", "teacher_layer_path"]
