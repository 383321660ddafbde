"""Stage 2: the teacher and the student WAMs pretrained (then frozen)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..cache import episodes_key, pretrain_fields, save_stage
from ..settings import TransferSettings

logger = logging.getLogger(__name__)


def build_wam(settings: TransferSettings, role: str, episodes: list[dict[str, Any]]):
    from peft_ckt.wam.data import ChunkDataset
    from peft_ckt.wam.modeling import WorldActionModel
    from peft_ckt.wam.tokenizer import build_vocabulary

    chunk = (settings.image_size // 8) ** 2
    stats = ChunkDataset(episodes, chunk_size=chunk).statistics()
    torch.manual_seed(settings.seed + (1 if role == "teacher" else 2))
    teacher = role == "teacher"
    return WorldActionModel(
        backbone="wan" if teacher else "cosmos",
        vocabulary=build_vocabulary(e["task"] for e in episodes),
        image_size=settings.image_size,
        pixel_block=8,
        chunk_size=chunk,
        num_layers=settings.teacher_layers if teacher else settings.student_layers,
        num_attention_heads=settings.teacher_heads if teacher else settings.student_heads,
        attention_head_dim=settings.head_dim,
        text_dim=settings.text_dim,
        future_pool=settings.future_pool,
        future_residual=settings.future_residual,
        **stats,
    )


def pretrain_stage(settings: TransferSettings, cache: Path, role: str, episodes: list[dict[str, Any]]):
    """Pretrain (or load the cached) teacher / student WAM; returns `(model, training result dict)`."""
    from peft_ckt.wam.data import ChunkDataset
    from peft_ckt.wam.modeling import WorldActionModel
    from peft_ckt.wam.training import train_wam

    final = cache / "models" / f"{role}-{settings.key(*pretrain_fields(role))}-{episodes_key(settings, episodes)}"
    if (final / "model.safetensors").is_file():
        logger.info(f"{role}: cached ({final})")
        return WorldActionModel.from_pretrained(final), json.loads((final / "training.json").read_text())
    model = build_wam(settings, role, episodes)
    dataset = ChunkDataset(episodes, chunk_size=model.chunk_size)
    params = sum(p.numel() for p in model.parameters())
    logger.info(
        f"{role}: pretraining a {model.backbone_type} WAM ({params / 1e6:.2f}M parameters) on {dataset.num_episodes} "
        f"demonstrations ({len(dataset)} samples)"
    )
    result = train_wam(
        model,
        model,
        dataset,
        steps=getattr(settings, f"{role}_steps"),
        batch_size=settings.batch_size,
        learning_rate=getattr(settings, f"{role}_lr"),
        seed=settings.seed,
        checkpoint=cache / "models" / f"{final.name}.ckpt",
        desc=f"pretrain {role}",
    )
    record = pretraining_record(result, params, dataset)
    save_stage(model, record, final)
    return WorldActionModel.from_pretrained(final), record


def pretraining_record(result, parameters: int, dataset) -> dict[str, Any]:
    """What `training.json` keeps of a pretraining: its losses, time, size and data."""
    return {
        "losses": result.losses,
        "action_losses": result.action_losses,
        "seconds": result.seconds,
        "parameters": parameters,
        "episodes": dataset.num_episodes,
        "samples": len(dataset),
    }


__all__ = ["build_wam", "pretrain_stage", "pretraining_record"]
