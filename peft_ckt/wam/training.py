"""Training loop of the world action model and of adapters on it (CKT, LoRA): small, resumable, with a progress bar.

The same loop pretrains a WAM (every weight trainable) and trains an adapter on a frozen WAM (only the weights peft
left trainable). Batches and noise depend only on `(seed, step)`, and a checkpoint (trainable weights, optimizer,
schedule, loss curve) is written atomically every `checkpoint_every` steps: a killed run resumes where it stopped
and ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_path
from .data import ChunkDataset, random_batches
from .modeling import WorldActionModel, flow_matching_loss


@dataclass
class TrainingResult:
    losses: list[float] = field(default_factory=list)  # total loss per step
    action_losses: list[float] = field(default_factory=list)
    expert_counts: Optional[list[int]] = None  # CKT: top-1 expert choices summed over training
    seconds: float = 0.0
    resumed_from: int = 0


def _cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_wam(
    model: nn.Module,
    wam: WorldActionModel,
    dataset: ChunkDataset,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
    warmup_steps: int = 50,
    seed: int = 0,
    teacher: Optional[WorldActionModel] = None,
    checkpoint: Optional[str | os.PathLike] = None,
    checkpoint_every: int = 100,
    desc: str = "training",
    progress: bool = True,
) -> TrainingResult:
    """Trains the trainable weights of `model` (the WAM, or a peft model around `wam`) for `steps` steps.

    With `teacher` (a CKT model), each batch's teacher inputs are built by the teacher and passed as
    `teacher_inputs=`; the load-balancing term `model.auxiliary_loss()` is added to the loss.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    # Subnormal floats (weights and activations decaying towards 0 late in training) run ~100x slower on x86 CPUs:
    # measured here, a teacher at 6 steps/s fell to 0.9 steps/s after ~300 steps without this.
    torch.set_flush_denormal(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_with_warmup(s, steps, min(warmup_steps, steps // 5 + 1))
    )
    result = TrainingResult()
    start_step = 0
    checkpoint_path = Path(checkpoint) if checkpoint is not None else None
    if checkpoint_path is not None and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, weights_only=True)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = int(state["step"])
        result.losses, result.action_losses = list(state["losses"]), list(state["action_losses"])
        result.expert_counts = state.get("expert_counts")
        result.resumed_from = start_step
    model.train()
    if teacher is not None:
        teacher.eval()
    begin = time.perf_counter()
    bar = tqdm(total=steps, initial=start_step, desc=desc, disable=not progress, dynamic_ncols=True)
    for step, batch in random_batches(dataset, batch_size, steps, seed=seed, start_step=start_step):
        generator = torch.Generator().manual_seed(seed * 7_919 + step)
        extra: dict[str, Any] = {}
        if teacher is not None:
            extra["teacher_inputs"] = teacher.teacher_inputs(batch)
        losses = flow_matching_loss(model, wam, batch, generator=generator, **extra)
        loss = losses["loss"]
        if teacher is not None:
            loss = loss + model.auxiliary_loss()
            context = model.last_context()
            if context is not None and context.topk_indices.shape[1]:  # no router in the no-specialized ablation
                counts = torch.bincount(context.topk_indices[:, 0].cpu(), minlength=context.router_probs.shape[-1])
                result.expert_counts = (
                    counts.tolist()
                    if result.expert_counts is None
                    else [a + b for a, b in zip(result.expert_counts, counts.tolist())]
                )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        result.losses.append(float(loss.detach()))
        result.action_losses.append(float(losses["action_loss"].detach()))
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
        done = step + 1
        if checkpoint_path is not None and (done % checkpoint_every == 0) and done < steps:
            _save_checkpoint(checkpoint_path, model, optimizer, scheduler, done, result)
    bar.close()
    model.eval()
    result.seconds = time.perf_counter() - begin
    if checkpoint_path is not None and checkpoint_path.is_file():
        checkpoint_path.unlink()
    return result


def _save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, step: int, result: TrainingResult) -> None:
    state = {
        "trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "losses": result.losses,
        "action_losses": result.action_losses,
    }
    if result.expert_counts is not None:
        state["expert_counts"] = result.expert_counts
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
