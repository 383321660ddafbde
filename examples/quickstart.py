"""Quickstart: transfer what a frozen Wan teacher sees into a frozen Cosmos student with CKT (tiny models, CPU).

The task is synthetic and built so that only the teacher has the answer. Every sample has a hidden colour
`c` (4 numbers, one per latent channel); the student must paint a frame of that colour (its output `sample`
should equal `c` at every position).

1. *The student's own training* (before CKT, a few seconds): a tiny Cosmos student learns to paint the colour
   named in its text conditioning. Half of the time it gets the empty prompt instead (caption dropout, as in
   text-to-video training), so with the empty prompt it paints the average colour. Then it is frozen.
2. *CKT*: the student only ever gets the empty prompt; the colour is in the teacher's video latents. Alone, the
   frozen student can at best paint the average colour. A small CKT adapter reads the teacher's second block and
   writes a context that the student reads through the same cross-attention as its text.

Every predictor is scored on one held-out set, generated once: the same tensors, the same MSE. Beside the student
alone and the student with CKT (saved, then reloaded from disk) the table shows two trivial predictors (zeros, the
training-set mean colour) and, as an upper bound of what can reach the student through its cross-attention, the
student told the colour in its prompt.

    python examples/quickstart.py [--steps 200] [--output-dir outputs/quickstart]
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from tqdm.auto import tqdm

import peft_ckt  # noqa: F401  (registers the "ckt" peft method)
from peft_ckt import CKTConfig
from peft_ckt.testing import (
    TINY_CHANNELS,
    TINY_TEXT_LENGTH,
    tiny_cosmos_inputs,
    tiny_cosmos_student,
    tiny_wan_inputs,
    tiny_wan_teacher,
)

STUDENT_TEXT_WIDTH = 24  # width of the tiny Cosmos student's `encoder_hidden_states`
# Not zero, so that "predict zeros" and "predict the training-set mean" are different baselines.
COLOUR_MEAN = torch.tensor([0.8, -0.4, 0.4, 0.0])
BATCH_SIZE = 16


@dataclass
class Split:
    """Samples of the task: the hidden colours and the inputs of both models."""

    colours: torch.Tensor  # [N, 4]: what only the teacher sees
    teacher_inputs: dict[str, torch.Tensor]  # Wan kwargs; the colour is added to its video latents
    student_inputs: dict[str, torch.Tensor]  # Cosmos kwargs; the prompt is the empty prompt

    def __len__(self) -> int:
        return len(self.colours)

    def __getitem__(self, index: torch.Tensor) -> Split:
        return Split(
            self.colours[index],
            {key: value[index] for key, value in self.teacher_inputs.items()},
            {key: value[index] for key, value in self.student_inputs.items()},
        )

    def targets(self) -> torch.Tensor:
        """The frame the student should output: the colour at every position, `[N, 4, frames, height, width]`."""
        latents = self.student_inputs["hidden_states"]
        return self.colours[:, :, None, None, None].expand_as(latents)


class ColourTask:
    """Fixed "text encoder" outputs of the task: the empty prompt, and how a caption names a colour."""

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.empty_prompt = torch.randn(TINY_TEXT_LENGTH, STUDENT_TEXT_WIDTH, generator=generator)
        self.colour_words = torch.randn(TINY_CHANNELS, STUDENT_TEXT_WIDTH, generator=generator) / 2

    def caption(self, colours: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings `[N, L, d_s]` naming each colour (what the student is never given during CKT)."""
        return self.empty_prompt + (colours @ self.colour_words)[:, None, :]

    def sample(self, num_samples: int, seed: int) -> Split:
        generator = torch.Generator().manual_seed(seed)
        colours = COLOUR_MEAN + torch.randn(num_samples, TINY_CHANNELS, generator=generator)
        teacher_inputs = tiny_wan_inputs(num_samples, seed=seed + 1)
        teacher_inputs["hidden_states"] += colours[:, :, None, None, None]
        student_inputs = tiny_cosmos_inputs(num_samples, seed=seed + 2)
        student_inputs["encoder_hidden_states"] = self.empty_prompt.expand(num_samples, -1, -1).clone()
        return Split(colours, teacher_inputs, student_inputs)


def train_student(student: torch.nn.Module, task: ColourTask, steps: int) -> None:
    """The student's own training, before CKT: paint the colour its prompt names (empty prompt half the time)."""
    student.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    for step in tqdm(range(steps), desc="student's own training"):
        batch = task.sample(BATCH_SIZE, seed=1_000_000 + 3 * step)
        named = torch.rand(BATCH_SIZE, 1, 1) < 0.5
        prompt = torch.where(named, task.caption(batch.colours), batch.student_inputs["encoder_hidden_states"])
        out = student(**{**batch.student_inputs, "encoder_hidden_states": prompt}).sample
        loss = F.mse_loss(out, batch.targets())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    student.eval().requires_grad_(False)


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split, **kwargs: Any) -> torch.Tensor:
    return model(**{**split.student_inputs, **kwargs}).sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="CKT training steps (default: %(default)s)")
    parser.add_argument(
        "--student-steps", type=int, default=120, help="steps of the student's own training (default: %(default)s)"
    )
    parser.add_argument("--output-dir", default="outputs/quickstart", help="where the adapter is saved")
    args = parser.parse_args()
    # The models are tiny: thread synchronisation would cost more than intra-op parallelism saves.
    torch.set_num_threads(1)
    torch.manual_seed(0)

    task = ColourTask()
    train_set = task.sample(512, seed=0)
    held_out = task.sample(256, seed=100)  # generated once; every row below is scored on these tensors

    student = tiny_cosmos_student()
    train_student(student, task, args.student_steps)
    frozen_student = copy.deepcopy(student)  # kept untouched, to reload the adapter onto later

    teacher = tiny_wan_teacher()
    config = CKTConfig(
        teacher=teacher,
        teacher_layer="blocks.1",  # H_T: the output of the teacher's 2nd block (later blocks never run)
        context_kwarg="encoder_hidden_states",  # the student's text conditioning E_t
        num_context_tokens=4,
        num_experts=4,
        top_k=2,
        bottleneck_dim=32,
        router_hidden_dim=32,
        num_attention_heads=2,
        adapter_dropout=0.0,
    )
    model = get_peft_model(student, config)
    model.print_trainable_parameters()

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(args.steps, 1))
    order = torch.Generator().manual_seed(0)
    model.train()
    progress = tqdm(range(args.steps), desc="CKT training")
    for _ in progress:
        batch = train_set[torch.randint(len(train_set), (BATCH_SIZE,), generator=order)]
        out = model(**batch.student_inputs, teacher_inputs=batch.teacher_inputs).sample
        loss = F.mse_loss(out, batch.targets()) + model.auxiliary_loss()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        progress.set_postfix(loss=f"{loss.item():.4f}")

    model.save_pretrained(args.output_dir)  # adapter_model.safetensors + adapter_config.json
    print(f"saved the CKT adapter to {args.output_dir}")
    reloaded = PeftModel.from_pretrained(frozen_student, args.output_dir, teacher=teacher).eval()

    targets = held_out.targets()
    with reloaded.disable_adapter():  # the untouched student
        alone = predict(reloaded, held_out)
        told = predict(reloaded, held_out, encoder_hidden_states=task.caption(held_out.colours))
    rows = {
        "predict zeros": torch.zeros_like(targets),
        "predict the training-set mean colour": train_set.targets().mean(dim=0).expand_as(targets),
        "student alone (adapter disabled)": alone,
        "student + CKT (reloaded from disk)": predict(reloaded, held_out, teacher_inputs=held_out.teacher_inputs),
        "reference: student told the colour in its prompt": told,
    }
    scores = {name: F.mse_loss(prediction, targets).item() for name, prediction in rows.items()}

    print(f"\nheld-out MSE ({len(held_out)} samples, the same tensors for every row; lower is better)")
    for name, score in scores.items():
        print(f"  {name:<50} {score:8.4f}")
    with_ckt = scores["student + CKT (reloaded from disk)"]
    best_baseline = min(score for name, score in scores.items() if name.startswith(("predict", "student alone")))
    print(
        f"\nheld-out MSE  student alone: {scores['student alone (adapter disabled)']:.4f}   "
        f"student + CKT (reloaded): {with_ckt:.4f}"
    )
    print(f"CKT removes {100 * (1 - with_ckt / best_baseline):.0f}% of the error of the best baseline without it.")


if __name__ == "__main__":
    main()
