"""Training CKT adapters with Accelerate: one code path for a laptop CPU, one GPU, DDP, FSDP and DeepSpeed.

    from peft_ckt.training import CKTTrainer, CKTTrainingArguments
    trainer = CKTTrainer(peft_model, CKTTrainingArguments(output_dir="out"), dataset, student_loss, teacher=teacher)
    trainer.train()

or, with a preset, `train(CKTTrainingArguments(preset="tiny", ...))` (what `peft-ckt train` runs).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..atomic import commit_directory, commit_files, write_json, write_text
from .arguments import CKTTrainingArguments

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
METRICS_FILE = "metrics.jsonl"
TRAINING_ARGS_FILE = "training_args.json"
# Arguments that only say how this invocation runs (not what it trains): changing them on resume is expected.
RESUME_ONLY_ARGS = ("resume", "stop_after_steps", "progress_bar", "report_to", "dataloader_num_workers")
# Arguments that change the optimisation when changed on resume: a warning names them.
RUN_ALTERING_ARGS = (
    "per_device_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "router_learning_rate",
    "weight_decay",
    "lr_scheduler",
    "warmup_steps",
    "warmup_ratio",
    "max_steps",
    "seed",
)
TRAINABLE_STATE_FILE = "ckt_trainable_state.safetensors"
# Parameters without weight decay: 1-D tensors (biases, norm scales, the router's noise scale) and the learned
# tokens, whose scale is part of what they encode (LQCA queries, the <SEP> token).
NO_DECAY_NAME_PARTS = ("norm", "queries", "separator", "noise_scale", "bias")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------------- pieces
class CKTTrainingStep(nn.Module):
    """The forward of one training micro-batch, as one module so that DDP/FSDP/DeepSpeed see every parameter
    that takes part in it: context from the teacher (live `teacher_inputs` or cached `teacher_features`), the
    student's loss with that context, plus `model.auxiliary_loss()` (the weighted load-balancing loss).

    Returns a dict: `loss` (to backpropagate) and detached diagnostics.
    """

    def __init__(self, model: nn.Module, student_loss: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self.student_loss = student_loss

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if "teacher_features" in batch:
            context = self.model.encode_features(batch["teacher_features"])
        elif "teacher_inputs" in batch:
            context = self.model.encode_teacher(batch["teacher_inputs"])
        else:
            raise KeyError("A CKT training batch needs 'teacher_inputs' (live teacher) or 'teacher_features' (cache).")
        student_loss = self.student_loss(self.model, batch, ckt_context=context)
        aux_loss = self.model.auxiliary_loss().to(student_loss.device, student_loss.dtype)
        return {
            "loss": student_loss + aux_loss,
            "student_loss": student_loss.detach(),
            "aux_loss": aux_loss.detach(),
            "load_balance_loss": context.load_balance_loss.detach().float(),
            "expert_share": context.expert_share().detach(),
            "context_norm": context.tokens.detach().float().norm(dim=-1).mean(),
        }


@dataclass
class TrainerState:
    """Progress saved with every checkpoint (registered with `accelerator.register_for_checkpointing`)."""

    global_step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.global_step = int(state["global_step"])


@dataclass
class TrainResult:
    global_step: int
    output_dir: str
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)  # the metrics logged by this process (main only)


def build_param_groups(
    model: nn.Module, learning_rate: float, router_learning_rate: Optional[float], weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable (CKT) parameters: the router may have its own learning rate, and
    biases, norms, learned queries, the separator and the noise scale get no weight decay."""
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "router" if ".router." in f".{name}" else "adapters"
        no_decay = param.ndim < 2 or any(key in name for key in NO_DECAY_NAME_PARTS)
        key = f"{part}_no_decay" if no_decay else part
        group = groups.setdefault(
            key,
            {
                "params": [],
                "name": key,
                "lr": router_learning_rate if part == "router" and router_learning_rate is not None else learning_rate,
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        group["params"].append(param)
    if not groups:
        raise ValueError("The model has no trainable parameters: is a CKT adapter attached and not in inference mode?")
    order = ("adapters", "adapters_no_decay", "router", "router_no_decay")
    return [groups[key] for key in order if key in groups]


def step_seed(seed: int, step: int, micro_step: int, process_index: int) -> int:
    """Seed of one micro-batch: noise, dropout and router noise depend only on (seed, step, micro-step, rank),
    so a resumed run draws exactly what the uninterrupted run drew."""
    return int(np.random.SeedSequence([seed, step, micro_step, process_index]).generate_state(1)[0])


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest first."""
    folder = os.path.join(output_dir, CHECKPOINTS_DIR)
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := CHECKPOINT_PATTERN.match(name))]
    return [os.path.join(folder, name) for _, name in sorted(found)]


def _cpu_only_multi_process() -> bool:
    """True for several processes (torchrun / `accelerate launch --multi_gpu`) on a machine without GPUs: Accelerate
    then needs `cpu=True` to set up DDP over gloo instead of silently running each process alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import accelerate.utils

    if torch.cuda.is_available():
        return False
    # Other accelerator back-ends Accelerate knows (probes missing from older versions count as absent).
    probes = ("is_xpu_available", "is_npu_available", "is_mlu_available", "is_hpu_available")
    return not any(getattr(accelerate.utils, name, lambda: False)() for name in probes)


def _warn_if_cpu_launch_is_single_process() -> None:
    """`accelerate launch --cpu --num_processes N` (N > 1) relies on MPI to start the processes; without
    `--mpirun_hostfile` it starts one, which then trains alone. Say so instead of letting it pass silently."""
    from accelerate.utils import str_to_bool

    cpu_launch = str_to_bool(os.environ.get("ACCELERATE_USE_CPU", "false") or "false")
    mpi_or_torchrun = any(
        k in os.environ for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    )
    if cpu_launch and "MASTER_ADDR" in os.environ and not mpi_or_torchrun:
        warnings.warn(
            "`accelerate launch --cpu --num_processes N` started a single process (Accelerate needs MPI, "
            "`--mpirun_hostfile`, to start N CPU processes). For data-parallel training on CPUs use "
            "`accelerate launch --multi_gpu --num_processes N ...` or `torchrun --nproc_per_node N ...`.",
            stacklevel=2,
        )


def _flat_config(args: CKTTrainingArguments) -> dict[str, Any]:
    # Trackers (TensorBoard hparams) accept scalars only.
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in args.to_dict().items()}


# --------------------------------------------------------------------------------------------------- trainer
class CKTTrainer:
    """Trains the CKT adapter of `model` with Accelerate.

    Args:
        model: a PeftModel with a CKT adapter (only its CKT weights are trainable).
        args: [`CKTTrainingArguments`].
        train_dataset: map-style dataset of dict samples holding `teacher_inputs` or `teacher_features` plus what
            `student_loss` reads.
        student_loss: `student_loss(model, batch, ckt_context=...) -> scalar`, e.g. [`FlowMatchingLoss`].
        teacher: the frozen teacher, moved to the training device (None when training from cached features).
        collate_fn: DataLoader collate function (default: torch's, which stacks nested dicts).
    """

    def __init__(
        self,
        model: nn.Module,
        args: CKTTrainingArguments,
        train_dataset: Dataset,
        student_loss: Callable[..., torch.Tensor],
        teacher: Optional[nn.Module] = None,
        collate_fn: Optional[Callable] = None,
    ):
        self.model = model
        self.args = args
        self.train_dataset = train_dataset
        self.student_loss = student_loss
        self.teacher = teacher
        self.collate_fn = collate_fn
        self.state = TrainerState()

    # ----------------------------------------------------------------------------------------------- setup
    def _build_accelerator(self):
        from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
        from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

        args = self.args
        return Accelerator(
            cpu=_cpu_only_multi_process(),
            mixed_precision=args.mixed_precision,
            # Accumulation is counted by Accelerate's own step counter (saved in checkpoints), not by the end of
            # an epoch, so a resumed run syncs at exactly the same micro-batches.
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            log_with=args.trackers or None,
            project_config=ProjectConfiguration(
                project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
            ),
            # A seedable sampler makes the data order a function of (seed, epoch) on every process.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
            # Sparse experts: in a DDP step some experts receive no samples on some (or all) ranks.
            # `find_unused_parameters=True` lets the reducer finish without their gradients and averages the ones
            # that do exist across ranks. We prefer it to a zero-weighted "touch" of idle experts: a touch gives
            # them zero gradients that AdamW would still turn into updates (momentum, weight decay), unlike a
            # single-process run where idle experts have no gradient and are skipped. Its cost (one walk of the
            # autograd graph per step) is small next to the teacher and student forwards.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            step_scheduler_with_optimizer=False,
        )

    def _register_checkpoint_hooks(self, accelerator, step_module: nn.Module) -> None:
        """Checkpoints hold the trainable CKT weights only, not the frozen student (which can be billions of
        parameters). FSDP and DeepSpeed keep Accelerate's own (sharded) model checkpointing."""
        from accelerate.utils import DistributedType
        from safetensors.torch import load_file, save_file

        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return
        unwrapped = accelerator.unwrap_model(step_module)
        trainable = {name for name, param in unwrapped.named_parameters() if param.requires_grad}

        def save_hook(models, weights, output_dir):
            for i, model in enumerate(models):
                if accelerator.unwrap_model(model) is unwrapped:
                    if accelerator.is_main_process:
                        state = {k: v.detach().contiguous().cpu() for k, v in weights[i].items() if k in trainable}
                        save_file(state, os.path.join(output_dir, TRAINABLE_STATE_FILE))
                    weights.pop(i)
                    return

        def load_hook(models, input_dir):
            for i, model in enumerate(models):
                if accelerator.unwrap_model(model) is unwrapped:
                    state = load_file(os.path.join(input_dir, TRAINABLE_STATE_FILE))
                    missing = trainable - set(state)
                    if missing:
                        raise ValueError(f"Checkpoint {input_dir} lacks trainable weights: {sorted(missing)[:5]}...")
                    unwrapped.load_state_dict(state, strict=False)
                    models.pop(i)
                    return

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    def _resume_candidates(self) -> list[str]:
        """Checkpoints to resume from, in the order to try them: the named one, or (for "latest") every complete
        checkpoint newest first, so that a corrupt newest one falls back to the one before."""
        resume = self.args.resume
        if not resume:
            return []
        if resume == "latest":
            return list_checkpoints(self.args.output_dir)[::-1]
        if not os.path.isdir(resume):
            raise FileNotFoundError(f"--resume {resume!r}: no such checkpoint folder.")
        return [resume]

    def _load_checkpoint(self, accelerator, candidates: list[str]) -> Optional[str]:
        """Loads the first loadable checkpoint of `candidates`; returns it (None when there is none to try)."""
        for position, candidate in enumerate(candidates):
            try:
                accelerator.load_state(candidate)
            except Exception as err:
                older = candidates[position + 1] if position + 1 < len(candidates) else None
                problem = f"Checkpoint {candidate} cannot be loaded ({type(err).__name__}: {err})"
                if older is None:
                    raise RuntimeError(f"{problem}, and there is no older checkpoint to fall back to.") from err
                # Every component is loaded again from the older checkpoint, so nothing of the bad one remains.
                warnings.warn(f"{problem}; falling back to {older}.", stacklevel=2)
                continue
            accelerator.print(f"Resuming from {candidate}")
            return candidate
        return None

    def _write_training_args(self, resumed_from: Optional[str]) -> None:
        """`training_args.json` holds the arguments the run started with. A resumed run whose arguments differ keeps
        it, writes its own beside it (`training_args.resumed-step-N.json`) and warns about changes that alter the
        run (batch size, learning rates, schedule)."""
        path = os.path.join(self.args.output_dir, TRAINING_ARGS_FILE)
        current = self.args.to_dict()
        previous = None
        if resumed_from is not None and os.path.isfile(path):
            with open(path) as f:
                previous = json.load(f)
        if previous is None:
            write_json(path, current)
            return
        changed = {
            key: (previous.get(key), value)
            for key, value in current.items()
            if key not in RESUME_ONLY_ARGS and previous.get(key) != value
        }
        if not changed:
            return
        beside = os.path.join(self.args.output_dir, f"training_args.resumed-step-{self.state.global_step}.json")
        write_json(beside, current)
        altering = {key: change for key, change in changed.items() if key in RUN_ALTERING_ARGS}
        if altering:
            described = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in altering.items())
            warnings.warn(
                f"Resuming from {resumed_from} with changed arguments: {described}. The run continues with the new "
                f"values; {TRAINING_ARGS_FILE} keeps the original ones and {os.path.basename(beside)} the new ones.",
                stacklevel=2,
            )

    # ----------------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _batches(dataloader, accelerator, start_micro_batch: int) -> Iterator[Any]:
        """Endless micro-batches, epoch after epoch, starting `start_micro_batch` batches into the run."""
        per_epoch = len(dataloader)
        epoch, skip = divmod(start_micro_batch, per_epoch)
        while True:
            dataloader.set_epoch(epoch)
            loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
            yield from loader
            epoch, skip = epoch + 1, 0

    def _save_checkpoint(self, accelerator) -> str:
        folder = os.path.join(self.args.output_dir, CHECKPOINTS_DIR)
        final = os.path.join(folder, f"checkpoint-{self.state.global_step}")
        staging = final + ".partial"
        if accelerator.is_main_process:
            os.makedirs(folder, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(staging)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # The rename marks the checkpoint complete: a job killed mid-save leaves only a ".partial" folder.
            commit_directory(staging, final)
            limit = self.args.checkpoints_total_limit
            if limit is not None and limit > 0:
                for old in list_checkpoints(self.args.output_dir)[:-limit]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def _truncate_metrics(self, path: str, last_step: int) -> None:
        """Drops logged metrics past `last_step` (they belong to steps a resumed run redoes)."""
        if not os.path.exists(path):
            return
        with open(path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
        write_text(path, "".join(kept))

    def _save_adapter(self, accelerator, step_module: nn.Module) -> None:
        """Writes the final adapter (`save_pretrained`) to `output_dir` from the main process, atomically per file."""
        state_dict = accelerator.get_state_dict(step_module)  # gathers FSDP / ZeRO-3 shards on every process
        if not accelerator.is_main_process:
            return
        prefix = "model."
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        peft_model = accelerator.unwrap_model(step_module).model
        with tempfile.TemporaryDirectory(dir=self.args.output_dir, prefix=".adapter-") as staging:
            peft_model.save_pretrained(staging, state_dict=state_dict)
            commit_files(staging, self.args.output_dir)

    # ----------------------------------------------------------------------------------------------- train
    def train(self) -> TrainResult:
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm
        from transformers import get_scheduler

        args = self.args
        _warn_if_cpu_launch_is_single_process()
        accelerator = self._build_accelerator()
        set_seed(args.seed, deterministic=args.full_determinism)
        resume_candidates = self._resume_candidates()
        if accelerator.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)

        if self.teacher is not None:
            self.teacher.to(accelerator.device)
            if args.teacher_dtype:
                self.teacher.to(TORCH_DTYPES[args.teacher_dtype])

        step_module = CKTTrainingStep(self.model, self.student_loss)
        optimizer = torch.optim.AdamW(
            build_param_groups(self.model, args.learning_rate, args.router_learning_rate, args.weight_decay),
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
        )
        # Stepped by hand once per optimizer update (not prepared): the schedule is in optimizer steps whatever
        # the number of processes.
        scheduler = get_scheduler(
            args.lr_scheduler, optimizer, num_warmup_steps=args.num_warmup_steps, num_training_steps=args.max_steps
        )
        dataloader = DataLoader(
            self.train_dataset,
            batch_size=args.per_device_batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=self.collate_fn,
            num_workers=args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(args.seed),
        )
        step_module, optimizer, dataloader = accelerator.prepare(step_module, optimizer, dataloader)
        if len(dataloader) == 0:
            raise ValueError(
                f"The dataset ({len(self.train_dataset)} samples) is smaller than one batch per process "
                f"({args.per_device_batch_size} x {accelerator.num_processes})."
            )
        accelerator.register_for_checkpointing(scheduler, self.state)
        self._register_checkpoint_hooks(accelerator, step_module)
        trainable_params = [p for p in step_module.parameters() if p.requires_grad]

        resume_from = self._load_checkpoint(accelerator, resume_candidates)
        if accelerator.is_main_process:
            self._write_training_args(resume_from)
        metrics_path = os.path.join(args.output_dir, METRICS_FILE)
        if accelerator.is_main_process:
            if resume_from is None and os.path.exists(metrics_path):
                os.remove(metrics_path)
            self._truncate_metrics(metrics_path, self.state.global_step)
        if args.trackers:
            accelerator.init_trackers(args.project_name, config=_flat_config(args))

        start_step = self.state.global_step
        batches = self._batches(dataloader, accelerator, start_step * args.gradient_accumulation_steps)
        progress = tqdm(
            total=args.max_steps,
            initial=start_step,
            desc="Training CKT",
            unit="step",
            disable=not (args.progress_bar and accelerator.is_main_process),
        )
        history: list[dict[str, Any]] = []
        last_log_time, last_log_step = time.perf_counter(), start_step
        stopped_early = False
        step_module.train()

        while self.state.global_step < args.max_steps:
            sums: dict[str, torch.Tensor] = {}
            grad_norm = None
            for micro_step in range(args.gradient_accumulation_steps):
                batch = next(batches)
                torch.manual_seed(step_seed(args.seed, self.state.global_step, micro_step, accelerator.process_index))
                with accelerator.accumulate(step_module):
                    outputs = step_module(batch)
                    accelerator.backward(outputs["loss"])
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        grad_norm = accelerator.clip_grad_norm_(trainable_params, args.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for key, value in outputs.items():
                    value = value.detach().float() / args.gradient_accumulation_steps
                    sums[key] = sums[key] + value if key in sums else value
            if not accelerator.sync_gradients:  # cannot happen with sync_with_dataloader=False; guards misuse
                raise RuntimeError("Gradient accumulation fell out of step with the optimizer steps.")
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule on the applied steps
                scheduler.step()
            self.state.global_step += 1
            step = self.state.global_step

            if step % args.logging_steps == 0 or step == args.max_steps:
                reduced = {key: accelerator.reduce(value, reduction="mean") for key, value in sums.items()}
                now = time.perf_counter()
                record: dict[str, Any] = {
                    "step": step,
                    "loss": reduced["loss"].item(),
                    "student_loss": reduced["student_loss"].item(),
                    "aux_loss": reduced["aux_loss"].item(),
                    "load_balance_loss": reduced["load_balance_loss"].item(),
                    "context_norm": reduced["context_norm"].item(),
                    "expert_share": [round(v, 6) for v in reduced["expert_share"].tolist()],
                    "steps_per_second": (step - last_log_step) / max(now - last_log_time, 1e-9),
                }
                for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                    record[f"lr/{group.get('name', 'group')}"] = lr
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                last_log_time, last_log_step = now, step
                if args.trackers:
                    scalars = {k: v for k, v in record.items() if k not in ("step", "expert_share")}
                    scalars.update({f"expert_share/{m}": v for m, v in enumerate(record["expert_share"])})
                    accelerator.log(scalars, step=step)
                if accelerator.is_main_process:
                    history.append(record)
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    progress.set_postfix(loss=f"{record['loss']:.4f}", lbal=f"{record['load_balance_loss']:.3f}")
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"The training loss became {record['loss']} at step {step}.")
            progress.update(1)

            if args.checkpointing_steps and step % args.checkpointing_steps == 0 and step < args.max_steps:
                self._save_checkpoint(accelerator)
            if args.stop_after_steps is not None and step >= args.stop_after_steps and step < args.max_steps:
                stopped_early = True
                break

        progress.close()
        batches.close()
        if not stopped_early:
            accelerator.wait_for_everyone()
            self._save_adapter(accelerator, step_module)
        del step_module, optimizer, dataloader, trainable_params
        _end_distributed_training(accelerator)
        return TrainResult(self.state.global_step, args.output_dir, stopped_early, history)


def _end_distributed_training(accelerator) -> None:
    """Ends the run so that every process exits. The wrapped model (DDP's reducer holds the process group) is
    released while the group still exists, every process then waits at a barrier with no collective left in flight,
    and only then is the group destroyed (`end_training`). The other order let a gloo job hang at exit: the last
    reference to the group went away with the DDP module, whose destructor joined gloo's worker thread while holding
    the GIL, and that thread, freeing a finished barrier, waited for the GIL."""
    import gc

    accelerator.wait_for_everyone()  # every rank is done and all pending collectives have completed
    accelerator.free_memory()  # drops Accelerate's references to the wrapped model, optimizer and dataloader
    gc.collect()
    accelerator.wait_for_everyone()  # a barrier with nothing before it: gloo's worker is idle when it returns
    accelerator.end_training()  # finishes the trackers, destroys the process group


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    dataset: Dataset,
    student_loss: Callable[..., torch.Tensor],
    batch_size: int = 16,
    max_batches: Optional[int] = None,
    seed: int = 0,
) -> dict[str, float]:
    """Mean losses of `model` (a CKT PeftModel) over `dataset` in eval mode, with noise drawn from `seed`: the same
    number for the same weights, so runs and checkpoints can be compared. Returns `loss`, `student_loss` and
    `zero_shot_loss` (the student alone, adapter disabled, on the same noise)."""
    was_training = model.training
    model.eval()
    step_module = CKTTrainingStep(model, student_loss)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    totals = {"loss": 0.0, "student_loss": 0.0, "zero_shot_loss": 0.0}
    count = 0
    device = next(p.device for p in model.parameters())
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        batch = _to_device(batch, device)
        torch.manual_seed(step_seed(seed, index, 0, 0))
        outputs = step_module(batch)
        torch.manual_seed(step_seed(seed, index, 0, 0))
        with model.disable_adapter():
            totals["zero_shot_loss"] += float(student_loss(model, batch))
        totals["loss"] += float(outputs["loss"])
        totals["student_loss"] += float(outputs["student_loss"])
        count += 1
    model.train(was_training)
    return {key: value / max(count, 1) for key, value in totals.items()}


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value


def train(args: CKTTrainingArguments) -> TrainResult:
    """Builds the preset's models and data (`args.preset`) and trains; what `peft-ckt train` runs."""
    from accelerate.utils import set_seed

    from .presets import build_training_setup

    set_seed(args.seed)  # identical adapter initialisation on every process
    setup = build_training_setup(args)
    trainer = CKTTrainer(
        setup.model,
        args,
        setup.train_dataset,
        setup.student_loss,
        teacher=setup.teacher,
        collate_fn=setup.collate_fn,
    )
    return trainer.train()
