"""Stage 5: every model scored offline on a fixed held-out set beside trivial predictors, and CKT's expert usage."""

from __future__ import annotations

from typing import Any

import torch

from ..settings import TransferSettings


@torch.no_grad()
def offline_metrics(models: dict[str, Any], heldout: dict[str, Any], train_stats, settings: TransferSettings) -> dict:
    """Held-out errors of every model and of trivial predictors, scored the same way (same samples, same noise).

    - `action_mse`: the action chunk the policy executes (5 Euler steps from fixed noise) against the demonstration,
      in action units.
    - `future_frame_mse`: the predicted agent view at t + 16 against the real one, in pixels in [0, 1] at the resolution the
      WAMs generate it at (every row pooled to it), from each
      model's one-step estimate at noise level 1 (the conditional mean: the fair point prediction to put beside the
      mean frame; a sharp sample loses to the mean in squared error even when it is plausible).

    `heldout` maps a split name (`clean`, `perturbed`) to a `ChunkDataset`. Trivial predictors: `zeros` (no motion;
    the mean colour of the training frames), `mean` (the training set's mean action chunk and mean future frame) and,
    for the frame, `copy` (the current agent view).
    """
    from peft_ckt.wam.data import held_out_batches
    from peft_ckt.wam.modeling import sample

    results: dict[str, dict[str, dict[str, float]]] = {}
    mean_action = torch.tensor(train_stats["mean_action"])
    mean_colour = torch.tensor(train_stats["mean_colour"]).view(1, 3, 1, 1)
    mean_frame = train_stats["mean_frame"]

    def like(batch):
        return batch["future.images.image"].permute(0, 3, 1, 2).float()

    def noise(batch, index, wam):
        generator = torch.Generator().manual_seed(10_000 + index)
        return torch.randn(wam.noise_shape(len(batch["action"])), generator=generator)

    # Every frame (predicted, trivial and true) is scored at the resolution the WAMs generate the future view at.
    frame_size = min(entry["wam"].future_size for entry in models.values())

    def pooled(frames):
        return torch.nn.functional.interpolate(frames, size=(frame_size, frame_size), mode="area")

    def run_split(split: str, dataset) -> None:
        batches = list(held_out_batches(dataset, max_samples=settings.heldout_samples, batch_size=128))
        truths = [pooled(b["future.images.image"].permute(0, 3, 1, 2).float().div(255.0)) for b in batches]

        def score(name, predict):
            action_err = frame_err = 0.0
            count = 0
            for index, (batch, truth) in enumerate(zip(batches, truths)):
                actions, frames = predict(batch, index)
                if actions is not None:
                    action_err += (actions - batch["action"]).pow(2).mean(dim=(1, 2)).sum().item()
                frame_err += (pooled(frames) - truth).pow(2).mean(dim=(1, 2, 3)).sum().item()
                count += len(batch["action"])
            row = results.setdefault(name, {}).setdefault(split, {})
            row["action_mse"] = action_err / count if actions is not None else None
            row["future_frame_mse"] = frame_err / count

        score("zeros", lambda b, i: (torch.zeros_like(b["action"]), mean_colour.expand_as(like(b))))
        score("mean", lambda b, i: (mean_action.expand_as(b["action"]), mean_frame.expand_as(like(b))))
        score("copy", lambda b, i: (None, b["observation.images.image"].permute(0, 3, 1, 2).float().div(255.0)))
        for name, entry in models.items():
            model, wam, teacher = entry["model"], entry["wam"], entry.get("teacher")

            def predict(batch, index, model=model, wam=wam, teacher=teacher):
                extra = {}
                if teacher is not None:
                    extra["ckt_context"] = model.encode_teacher(teacher.teacher_inputs(batch))
                start = noise(batch, index, wam)
                executed = sample(model, wam, batch, initial_noise=start, **extra)
                estimate = sample(model, wam, batch, num_steps=1, initial_noise=start, **extra)
                return executed["actions"], estimate["future_image"]

            score(name, predict)

    for split, dataset in heldout.items():
        run_split(split, dataset)
    return results


@torch.no_grad()
def heldout_expert_counts(model, teacher, heldout, settings: TransferSettings) -> list[int]:
    """How often each of CKT's experts is the router's first choice on the held-out samples ([] without a router)."""
    from peft_ckt.wam.data import held_out_batches

    counts = None
    for batch in held_out_batches(heldout, max_samples=settings.heldout_samples, batch_size=128):
        context = model.encode_teacher(teacher.teacher_inputs(batch))
        if not context.topk_indices.shape[1]:  # no router in the no-specialized ablation
            return []
        c = torch.bincount(context.topk_indices[:, 0], minlength=context.router_probs.shape[-1])
        counts = c if counts is None else counts + c
    return counts.tolist() if counts is not None else []


__all__ = ["heldout_expert_counts", "offline_metrics"]
