"""Training with Accelerate on the tiny Wan -> Cosmos pairing (synthetic data): resume, logging, parameter groups,
a real 2-process DDP run over gloo, and the example script."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from process_group import run_process_group
from safetensors.torch import load_file

from peft_ckt.training import CKTTrainer, CKTTrainingArguments, build_param_groups, build_training_setup, train
from peft_ckt.training.trainer import TRAINABLE_STATE_FILE, evaluate_loss, list_checkpoints

# Accelerate keeps process-wide singletons; each in-process run starts from a clean slate (conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def tiny_args(output_dir, **overrides) -> CKTTrainingArguments:
    base = dict(
        preset="tiny",
        output_dir=str(output_dir),
        max_steps=8,
        per_device_batch_size=4,
        num_train_samples=16,
        checkpointing_steps=3,
        report_to="none",
        progress_bar=False,
        warmup_steps=1,
    )
    base.update(overrides)
    return CKTTrainingArguments(**base)


def read_metrics(output_dir) -> list[dict]:
    with open(Path(output_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_killed_run_resumes_on_the_same_loss_curve(tmp_path):
    # 16 samples / batch 4 = 4 micro-batches per epoch, 2 per step: the resume point (step 3) is mid-epoch.
    # bf16 autocast: mixed precision must not break the determinism either.
    full = train(tiny_args(tmp_path / "full", gradient_accumulation_steps=2, mixed_precision="bf16"))
    assert not full.stopped_early and full.global_step == 8
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    killed = train(
        tiny_args(tmp_path / "resumed", gradient_accumulation_steps=2, mixed_precision="bf16", stop_after_steps=5)
    )
    assert killed.stopped_early and killed.global_step == 5
    assert not (tmp_path / "resumed" / "adapter_model.safetensors").exists()
    # At most the steps since the last checkpoint are lost: checkpoint-3 is the newest.
    assert [Path(p).name for p in list_checkpoints(tmp_path / "resumed")] == ["checkpoint-3"]
    checkpoint = tmp_path / "resumed" / "checkpoints" / "checkpoint-3"
    # Checkpoints hold only the trainable CKT weights, not the frozen student.
    trainable = load_file(checkpoint / TRAINABLE_STATE_FILE)
    assert trainable and all(".ckt" in key for key in trainable)

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed = train(
        tiny_args(tmp_path / "resumed", gradient_accumulation_steps=2, mixed_precision="bf16", resume="latest")
    )
    assert [r["step"] for r in resumed.history] == [4, 5, 6, 7, 8]

    full_losses = [r["loss"] for r in read_metrics(tmp_path / "full")]
    resumed_losses = [r["loss"] for r in read_metrics(tmp_path / "resumed")]
    # Same seeds, same data order, same per-step noise and dropout: the curves coincide exactly on CPU.
    assert resumed_losses == full_losses
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_lowers_the_loss_and_logs_everything(tmp_path):
    args = tiny_args(
        tmp_path,
        max_steps=12,
        per_device_batch_size=8,
        learning_rate=1e-2,
        report_to="tensorboard",
        checkpointing_steps=0,
    )
    set_seed(0)
    setup = build_training_setup(args)
    before = evaluate_loss(setup.model, setup.train_dataset, setup.student_loss, max_batches=2)
    result = CKTTrainer(setup.model, args, setup.train_dataset, setup.student_loss, teacher=setup.teacher).train()
    after = evaluate_loss(setup.model, setup.train_dataset, setup.student_loss, max_batches=2)
    # Deterministic evaluation (fixed noise): only the 12 optimizer steps changed the adapter.
    assert after["student_loss"] < before["student_loss"] - 0.01
    assert after["student_loss"] < after["zero_shot_loss"]

    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 13)) and records == result.history
    last = records[-1]
    for key in ("loss", "student_loss", "aux_loss", "load_balance_loss", "context_norm", "steps_per_second"):
        assert isinstance(last[key], float) and last[key] == last[key]
    assert abs(sum(last["expert_share"]) - 1.0) < 1e-5 and len(last["expert_share"]) == 4
    assert {"lr/adapters", "lr/adapters_no_decay", "lr/router", "lr/router_no_decay"} <= last.keys()
    # Warm-up (1 step) then cosine decay to 0 at max_steps.
    assert records[0]["lr/adapters"] == pytest.approx(1e-2) and last["lr/adapters"] < 1e-4
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event file"

    # The saved adapter reloads with the teacher and gives the same evaluation.
    from peft import PeftModel

    from peft_ckt.testing import tiny_cosmos_student

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "CKT" and config["teacher_layer"] == "blocks.2"
    reloaded = PeftModel.from_pretrained(tiny_cosmos_student(), str(tmp_path), teacher=setup.teacher)
    again = evaluate_loss(reloaded, setup.train_dataset, setup.student_loss, max_batches=2)
    assert again["student_loss"] == pytest.approx(after["student_loss"], abs=1e-6)


def test_parameter_groups_split_router_and_spare_norms_from_decay(tmp_path):
    set_seed(0)
    setup = build_training_setup(tiny_args(tmp_path))
    groups = {g["name"]: g for g in build_param_groups(setup.model, 1e-3, 5e-4, 0.05)}
    assert set(groups) == {"adapters", "adapters_no_decay", "router", "router_no_decay"}
    assert groups["router"]["lr"] == 5e-4 and groups["adapters"]["lr"] == 1e-3
    assert groups["adapters"]["weight_decay"] == 0.05 and groups["adapters_no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in setup.model.named_parameters()}
    no_decay = [names[id(p)] for g in groups.values() if g["weight_decay"] == 0.0 for p in g["params"]]
    decay = [names[id(p)] for g in groups.values() if g["weight_decay"] > 0 for p in g["params"]]
    assert any(n.endswith("separator") for n in no_decay) and any("queries" in n for n in no_decay)
    assert any("noise_scale" in n for n in no_decay) and any(".norm." in n for n in no_decay)
    assert all(p_name.endswith("weight") and "norm" not in p_name for p_name in decay)
    assert all(".router." in n for n in (names[id(p)] for p in groups["router"]["params"]))
    trainable = sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == trainable


DDP_WORKER = textwrap.dedent(
    """
    import gc, os, sys, json, torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from accelerate.utils import set_seed
    from safetensors.torch import save_file
    from peft_ckt.training import CKTTrainer, CKTTrainingArguments, build_training_setup
    from peft_ckt.training.trainer import evaluate_loss

    torch.set_num_threads(1)
    out = sys.argv[1]
    # Records how many DDP modules are still alive (not yet freed) when the process group is destroyed: freeing one
    # after its group is gone is what hung gloo jobs at exit.
    alive_at_destroy = []
    destroy = dist.destroy_process_group
    def recording_destroy(*args, **kwargs):
        alive_at_destroy.append(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
        return destroy(*args, **kwargs)
    dist.destroy_process_group = recording_destroy
    # top_k=1 and one sample per rank: every step leaves most experts idle, and the two ranks usually pick
    # different experts (a gradient exists on one rank only).
    args = CKTTrainingArguments(preset="tiny", output_dir=out, max_steps=10, per_device_batch_size=1, top_k=1,
                                num_train_samples=64, learning_rate=1e-2, warmup_steps=1, checkpointing_steps=0,
                                report_to="none", progress_bar=False)
    set_seed(0)
    setup = build_training_setup(args)
    initial = {n: p.detach().clone() for n, p in setup.model.named_parameters() if p.requires_grad}
    before = evaluate_loss(setup.model, setup.train_dataset, setup.student_loss, max_batches=2)
    trainer = CKTTrainer(setup.model, args, setup.train_dataset, setup.student_loss, teacher=setup.teacher)
    trainer.train()
    after = evaluate_loss(setup.model, setup.train_dataset, setup.student_loss, max_batches=2)
    rank = int(os.environ.get("RANK", "0"))
    weights = {n: p.detach().contiguous() for n, p in setup.model.named_parameters() if p.requires_grad}
    save_file(weights, os.path.join(out, f"rank{rank}.safetensors"))
    save_file(initial, os.path.join(out, f"initial{rank}.safetensors"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"before": before, "after": after, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                   "alive_at_destroy": alive_at_destroy, "initialized_after": dist.is_initialized()}, f)
    """
)


def test_ddp_two_cpu_processes_with_idle_experts(tmp_path):
    worker = tmp_path / "ddp_worker.py"
    worker.write_text(DDP_WORKER)
    out = tmp_path / "out"
    out.mkdir()
    # `--multi_gpu` makes Accelerate start 2 processes (torchrun); on a CPU-only machine the trainer sets up
    # DDP over gloo. (`--cpu --num_processes 2` starts a single process unless run under mpirun.)
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(worker), str(out)]
    # Own session, killed as a whole on timeout: a hung rank cannot outlive the test.
    proc = run_process_group(cmd, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in reports)
    # Training ended deterministically: the DDP module was freed before its process group was destroyed, once.
    assert all(r["alive_at_destroy"] == [0] and not r["initialized_after"] for r in reports), reports
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    initial = load_file(out / "initial0.safetensors")
    # Gradients were averaged across ranks (never dropped on one side): both ranks hold identical adapters.
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    changed_experts = {
        k.split("specialized.")[1].split(".")[0]
        for k in rank0
        if "specialized." in k and not torch.equal(rank0[k], initial[k])
    }
    assert len(changed_experts) >= 2, f"only experts {changed_experts} were ever updated"
    assert reports[0]["after"]["student_loss"] < reports[0]["before"]["student_loss"] - 0.005
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()


def test_example_script_under_accelerate_launch(tmp_path):
    out = tmp_path / "OUT"
    cmd = [ACCELERATE, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", str(REPO / "examples" / "train_ckt.py"), "--preset", "tiny", "--max-steps", "6"]
    cmd += ["--output-dir", str(out), "--no-progress-bar", "--report-to", "none"]
    proc = run_process_group(cmd, timeout=240, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
    # Without MPI, Accelerate's CPU launcher starts one process: the trainer says so rather than pretend.
    assert "started a single process" in proc.stderr
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all(key.startswith("base_model.model.ckt") for key in saved)


def reset_accelerate():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    killed = train(tiny_args(tmp_path, max_steps=6, checkpointing_steps=2, stop_after_steps=5))
    assert killed.stopped_early
    checkpoints = list_checkpoints(tmp_path)
    assert [Path(p).name for p in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    weights = Path(checkpoints[-1]) / TRAINABLE_STATE_FILE
    weights.write_bytes(weights.read_bytes()[:100])  # a torn write
    reset_accelerate()
    with pytest.warns(UserWarning, match=r"checkpoint-4 cannot be loaded .*; falling back to .*checkpoint-2"):
        resumed = train(tiny_args(tmp_path, max_steps=6, checkpointing_steps=2, resume="latest"))
    assert not resumed.stopped_early and resumed.global_step == 6
    # The steps after checkpoint-2 were redone: the resumed run logged steps 3..6.
    assert [record["step"] for record in resumed.history] == [3, 4, 5, 6]
    assert (tmp_path / "adapter_model.safetensors").exists()


def test_resume_with_changed_arguments_warns_and_keeps_the_original_arguments(tmp_path):
    train(tiny_args(tmp_path, max_steps=6, checkpointing_steps=2, stop_after_steps=3))
    original = json.loads((tmp_path / "training_args.json").read_text())
    reset_accelerate()
    with pytest.warns(
        UserWarning, match=r"changed arguments: per_device_batch_size 4 -> 2, learning_rate 0.001 -> 0.002"
    ):
        train(
            tiny_args(
                tmp_path,
                max_steps=6,
                checkpointing_steps=2,
                resume="latest",
                per_device_batch_size=2,
                learning_rate=2e-3,
            )
        )
    assert json.loads((tmp_path / "training_args.json").read_text()) == original
    beside = json.loads((tmp_path / "training_args.resumed-step-2.json").read_text())
    assert (beside["per_device_batch_size"], beside["learning_rate"], beside["resume"]) == (2, 2e-3, "latest")


@pytest.mark.parametrize("rate", ["learning_rate", "router_learning_rate"])
def test_non_positive_learning_rate_is_refused(rate):
    for value in (0.0, -1e-3):
        with pytest.raises(ValueError, match=rf"--{rate.replace('_', '-')} must be > 0"):
            CKTTrainingArguments(**{rate: value})
