"""Quickstart: transfer what a frozen Wan teacher sees into a frozen Cosmos student with CKT (tiny models, CPU).

The task is synthetic and built so that only the teacher can solve it: the student must predict the mean colour
(per channel) of the teacher's video latents, which the student never sees. Alone, the student can only guess; with
CKT, a ~1% adapter learns to carry that knowledge across through the context tokens.

    python examples/quickstart.py [--steps 150] [--output-dir outputs/quickstart]
"""

import argparse

import torch
from peft import PeftModel, get_peft_model
from tqdm.auto import tqdm

import peft_ckt  # noqa: F401  (registers the "ckt" peft method)
from peft_ckt import CKTConfig
from peft_ckt.testing import tiny_cosmos_inputs, tiny_cosmos_student, tiny_wan_inputs, tiny_wan_teacher


def batch(step: int, batch_size: int = 8):
    """Teacher and student views of the same samples, and the target only the teacher can see."""
    teacher_inputs = tiny_wan_inputs(batch_size, seed=2 * step)
    teacher_inputs["hidden_states"] += torch.randn(batch_size, 4, 1, 1, 1)  # a per-sample colour
    student_inputs = tiny_cosmos_inputs(batch_size, seed=2 * step + 1)
    target = (
        teacher_inputs["hidden_states"].mean(dim=(2, 3, 4), keepdim=True).expand_as(student_inputs["hidden_states"])
    )
    return student_inputs, teacher_inputs, target


def evaluate(model, num_batches: int = 4) -> float:
    losses = []
    with torch.no_grad():
        for index in range(num_batches):
            student_inputs, teacher_inputs, target = batch(10_000 + index)  # held-out samples
            out = model(**student_inputs, teacher_inputs=teacher_inputs).sample
            losses.append(torch.nn.functional.mse_loss(out, target).item())
    return sum(losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="training steps")
    parser.add_argument("--output-dir", default="outputs/quickstart", help="where the adapter is saved")
    args = parser.parse_args()
    torch.manual_seed(0)

    teacher, student = tiny_wan_teacher(), tiny_cosmos_student()
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
    model.train()
    progress = tqdm(range(args.steps), desc="CKT training")
    for step in progress:
        student_inputs, teacher_inputs, target = batch(step)
        out = model(**student_inputs, teacher_inputs=teacher_inputs).sample
        loss = torch.nn.functional.mse_loss(out, target) + model.auxiliary_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        progress.set_postfix(loss=f"{loss.item():.4f}")

    model.save_pretrained(args.output_dir)  # adapter_model.safetensors + adapter_config.json
    print(f"saved the CKT adapter to {args.output_dir}")

    reloaded = PeftModel.from_pretrained(tiny_cosmos_student(), args.output_dir, teacher=teacher).eval()
    with reloaded.disable_adapter():
        alone = evaluate(reloaded)
    with_ckt = evaluate(reloaded)
    print(f"held-out MSE  student alone: {alone:.4f}   student + CKT (reloaded): {with_ckt:.4f}")
    print(f"CKT removes {100 * (1 - with_ckt / alone):.0f}% of the student's error on what only the teacher sees.")


if __name__ == "__main__":
    main()
