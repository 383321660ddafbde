"""FSDP training of the `tiny` preset's CKT adapter on CPU over gloo (Accelerate sets up FSDP on accelerators only, so this
drives torch's FSDP directly, with the trainer's own pieces: `CKTTrainingStep`, `build_param_groups`, `step_seed`).

    torchrun --nproc_per_node 2 tests/fsdp_worker.py fsdp1|fsdp2 OUT [--stop-after N] [--resume CKPT]
    python tests/fsdp_worker.py single OUT      # the single-process reference

Step s trains on samples [s*2B, (s+1)*2B) of the dataset, rank r on its half, with its micro-batch seed
`step_seed(0, s, 0, r)`. The reference runs both halves in one process with the same seeds and averages their
losses, which is what FSDP's gradient averaging computes: the adapters must agree within float tolerance.
Writes OUT/losses.json (the mean loss of each step, over both halves) and OUT/adapter_model.safetensors
(`save_pretrained` of the full state dict gathered on rank 0).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from accelerate.utils import set_seed
from torch.utils.data import default_collate

from peft_ckt.training import CKTTrainingArguments, build_param_groups, build_training_setup
from peft_ckt.training.trainer import CKTTrainingStep, step_seed

STEPS, HALF_BATCH, WORLD = 6, 2, 2


def build():
    # top_k = M: every expert has a gradient in every step. (FSDP's flat buffers hand unused parameters zero
    # gradients, which AdamW turns into updates, while a single process leaves them without gradient.)
    args = CKTTrainingArguments(
        preset="tiny", output_dir="unused", top_k=4, num_train_samples=WORLD * HALF_BATCH * STEPS
    )
    set_seed(0)
    setup = build_training_setup(args)
    return setup, CKTTrainingStep(setup.model, setup.student_loss)


def half_batch(dataset, step: int, rank: int):
    start = (step * WORLD + rank) * HALF_BATCH
    return default_collate([dataset[i] for i in range(start, start + HALF_BATCH)])


def make_optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(build_param_groups(module, 1e-2, None, 0.01))


def run_single(out: str) -> None:
    setup, step_module = build()
    optimizer = make_optimizer(step_module)
    step_module.train()
    losses = []
    for step in range(STEPS):
        total = 0.0
        for rank in range(WORLD):
            torch.manual_seed(step_seed(0, step, 0, rank))
            loss = step_module(half_batch(setup.train_dataset, step, rank))["loss"] / WORLD
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    setup.model.save_pretrained(out)
    with open(os.path.join(out, "losses.json"), "w") as f:
        json.dump(losses, f)


def shard(step_module: torch.nn.Module, version: str) -> torch.nn.Module:
    from diffusers.models.transformers.transformer_cosmos import CosmosTransformerBlock

    if version == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        # As examples/accelerate/fsdp.yaml: the student's blocks are FSDP units, the rest (the CKT bank among it) is
        # the root unit, frozen and trainable parameters together (hence use_orig_params).
        return FullyShardedDataParallel(
            step_module,
            auto_wrap_policy=ModuleWrapPolicy({CosmosTransformerBlock}),
            use_orig_params=True,
            device_id=torch.device("cpu"),
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for module in step_module.modules():
        if isinstance(module, CosmosTransformerBlock):
            fully_shard(module, mesh=mesh)
    fully_shard(step_module, mesh=mesh)
    return step_module


def run_sharded(version: str, out: str, stop_after: int | None, resume: str | None) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    setup, step_module = build()
    trainable = {name for name, param in step_module.named_parameters() if param.requires_grad}
    sharded = shard(step_module, version)
    optimizer = make_optimizer(sharded)
    # Full (gathered) state dicts. No cpu_offload: the tensors are on the CPU already, and FSDP1's offload of CPU
    # tensors hands back views of the unsharded buffer it then frees (a segfault when they are read).
    full = StateDictOptions(full_state_dict=True)
    start, losses = 0, []
    if resume:
        # Every rank reads the full checkpoint and keeps its shard.
        checkpoint = torch.load(resume, weights_only=True)
        set_state_dict(
            sharded,
            optimizer,
            model_state_dict=checkpoint["model"],
            optim_state_dict=checkpoint["optimizer"],
            options=StateDictOptions(full_state_dict=True, strict=False),
        )
        start, losses = checkpoint["step"], checkpoint["losses"]
    sharded.train()
    for step in range(start, STEPS):
        torch.manual_seed(step_seed(0, step, 0, rank))
        loss = sharded(half_batch(setup.train_dataset, step, rank))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / WORLD)
        if stop_after is not None and step + 1 == stop_after:
            model_state, optim_state = get_state_dict(sharded, optimizer, options=full)
            if rank == 0:
                # Only the trainable (CKT) weights: the frozen student is rebuilt from its own source.
                model_state = {k: v for k, v in model_state.items() if k in trainable}
                torch.save(
                    {"model": model_state, "optimizer": optim_state, "step": step + 1, "losses": losses},
                    os.path.join(out, "checkpoint.pt"),
                )
            break
    else:
        model_state, _ = get_state_dict(sharded, optimizer, options=full)
        if rank == 0:
            assert trainable <= model_state.keys(), sorted(trainable - model_state.keys())[:5]
            prefix = "model."
            state_dict = {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}
            setup.model.save_pretrained(out, state_dict=state_dict)
            with open(os.path.join(out, "losses.json"), "w") as f:
                json.dump(losses, f)
    dist.barrier()
    del sharded, optimizer
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    import faulthandler

    faulthandler.enable()
    faulthandler.dump_traceback_later(float(os.environ.get("FSDP_WORKER_TIMEOUT", "150")), exit=True)  # say where
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "fsdp1", "fsdp2"])
    parser.add_argument("out")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--resume")
    cli = parser.parse_args()
    os.makedirs(cli.out, exist_ok=True)
    if cli.mode == "single":
        run_single(cli.out)
    else:
        run_sharded(cli.mode, cli.out, cli.stop_after, cli.resume)
