"""The scale-up paths, run on CPU: 2-process FSDP (FSDP1 with use_orig_params, FSDP2 `fully_shard`) over gloo with a
killed-and-resumed run, and frozen bf16 student and teacher with an fp32 bank. (DDP: tests/test_training.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fsdp_worker
import pytest
import torch
from peft import PeftModel, get_peft_model
from process_group import run_process_group, worker_env
from safetensors.torch import load_file

from peft_ckt import CKTConfig
from peft_ckt.testing import tiny_cosmos_student
from peft_ckt.training import CKTTrainer, CKTTrainingArguments
from peft_ckt.training.presets import get_preset
from peft_ckt.training.trainer import evaluate_loss

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
WORKER = str(Path(__file__).with_name("fsdp_worker.py"))


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The single-process reference run (both halves of every step in one process, same seeds)."""
    out = tmp_path_factory.mktemp("single")
    fsdp_worker.run_single(str(out))
    return out


def launch(*args: str) -> None:
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", WORKER, *args]
    proc = run_process_group(cmd, timeout=150, env=worker_env(FSDP_WORKER_TIMEOUT="120"))
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("version", ["fsdp1", "fsdp2"])
def test_fsdp_two_cpu_processes_killed_and_resumed_match_a_single_process(version, tmp_path, single_process):
    # Steps 1-3, a full checkpoint (trainable weights and AdamW state gathered on rank 0), the job ends; a new job
    # shards the models again, loads the checkpoint and runs steps 4-6.
    launch(version, str(tmp_path), "--stop-after", "3")
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3 and not (tmp_path / "adapter_model.safetensors").exists()
    trainable = set(checkpoint["model"])
    assert trainable and all(".ckt." in name for name in trainable)  # the frozen student is not in it
    assert {name for name, state in checkpoint["optimizer"]["state"].items() if "exp_avg" in state} == trainable
    launch(version, str(tmp_path), "--resume", str(tmp_path / "checkpoint.pt"))

    losses = json.loads((tmp_path / "losses.json").read_text())
    reference_losses = json.loads((single_process / "losses.json").read_text())
    assert losses == pytest.approx(reference_losses, rel=1e-5)

    # The adapter written by rank 0 from the gathered full state dict equals the single process's. The tolerance
    # is for AdamW, which turns float-level differences of near-zero gradients into differences of up to ~1e-4; an
    # optimizer state lost at the resume moves weights by 0.05.
    fsdp = load_file(tmp_path / "adapter_model.safetensors")
    single = load_file(single_process / "adapter_model.safetensors")
    assert fsdp.keys() == single.keys() and all(v.dtype == torch.float32 for v in fsdp.values())
    worst = max((fsdp[k] - single[k]).abs().max().item() for k in fsdp)
    assert worst < 2e-3, worst

    # Training lowered the loss: the saved adapter, loaded with the teacher, against the initial adapter.
    setup, _ = fsdp_worker.build()
    before = evaluate_loss(setup.model, setup.train_dataset, setup.student_loss)
    trained = PeftModel.from_pretrained(tiny_cosmos_student(), str(tmp_path), teacher=setup.teacher)
    after = evaluate_loss(trained, setup.train_dataset, setup.student_loss)
    assert after["student_loss"] < before["student_loss"] - 0.02, (before, after)


def test_bf16_student_and_teacher_with_an_fp32_bank(tmp_path, fresh_accelerate_state):
    # The frozen models cast to bf16 (half their memory), the bank trained in fp32 under bf16 autocast.
    args = CKTTrainingArguments(
        preset="tiny",
        output_dir=str(tmp_path),
        max_steps=8,
        per_device_batch_size=8,
        num_train_samples=16,
        learning_rate=1e-2,
        warmup_steps=1,
        checkpointing_steps=0,
        mixed_precision="bf16",
        report_to="none",
        progress_bar=False,
    )
    preset = get_preset("tiny")
    torch.manual_seed(0)
    teacher = preset.build_teacher().to(torch.bfloat16)
    student = preset.build_student().to(torch.bfloat16)
    config = CKTConfig(teacher=teacher, teacher_layer=preset.teacher_layer, **preset.ckt_config_kwargs)
    model = get_peft_model(student, config)
    dataset, student_loss = preset.build_dataset(args), preset.build_student_loss()
    bank = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert bank and all(p.dtype == torch.float32 for p in bank.values())
    initial = {name: p.detach().clone() for name, p in bank.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = evaluate_loss(model, dataset, student_loss, max_batches=1)

    CKTTrainer(model, args, dataset, student_loss, teacher=teacher).train()

    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    # The bank trained and stayed fp32.
    assert all(p.dtype == torch.float32 for p in bank.values())
    assert sum(not torch.equal(initial[n], p) for n, p in bank.items()) > len(bank) // 2
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved and all(v.dtype == torch.float32 for v in saved.values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = evaluate_loss(model, dataset, student_loss, max_batches=1)
    assert after["student_loss"] < before["student_loss"] - 0.01, (before, after)
