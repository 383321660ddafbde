"""The whole experiment: every stage in order, each cached, and the report.

1. Collect scripted demonstrations on `libero_object` (`collect_demonstrations`, images at the WAM's size).
2. Pretrain the teacher (Wan backbone, wider and deeper) on broad data: the evaluated tasks, clean scenes plus
   demonstrations under each of the seven LIBERO-Plus perturbations. Pretrain the student (Cosmos backbone) on
   narrow data: clean scenes only, of other tasks (`student_tasks`). Both are then frozen.
3. Train student+CKT (on the teacher block `teacher_layer`: 4 of 6 by default, -1 for the middle one) and
   student+LoRA (at least CKT's trainable budget) on the same small target set of clean demonstrations.
4. Evaluate teacher, student, student+LoRA and student+CKT in LIBERO, clean and under the seven perturbations, with
   the same init states and seeds for every policy; every episode is appended to `episodes.jsonl` as it ends.
5. Score every model offline on a fixed held-out set of demonstrations beside trivial predictors, and write
   `report.json`, `report.md` and the plots.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from peft_ckt.atomic import write_json, write_text
from peft_ckt.libero.metrics import compare_policies

from .report import markdown_report, plot_experts, plot_success, plot_training, record_gif
from .settings import TransferSettings, ablation_policy
from .stages.adapters import adapter_stage, teacher_layer_path
from .stages.data import collect_all, split_datasets
from .stages.offline import heldout_expert_counts, offline_metrics
from .stages.pretrain import pretrain_stage
from .stages.rollouts import evaluate_policies, summarize_rollouts


def train_adapters(settings: TransferSettings, cache: Path, teacher, student_path: str, target) -> dict[str, Any]:
    """Stage 3: student+CKT, student+LoRA (at least CKT's budget) and the ablations, as `{policy: (path, record)}`."""
    ckt = adapter_stage(settings, cache, "ckt", teacher, student_path, target)
    lora = adapter_stage(settings, cache, "lora", None, student_path, target, budget=ckt[1]["trainable_params"])
    ablated = {
        ablation_policy(name): adapter_stage(settings, cache, "ckt", teacher, student_path, target, ablation=name)
        for name in settings.ablations
    }
    return {"student+lora": lora, "student+ckt": ckt, **ablated}


def score_offline(settings: TransferSettings, splits, teacher, student, adapters) -> tuple[dict, list[int]]:
    """Stage 5: every model's held-out errors beside trivial predictors, and student+CKT's held-out expert usage."""
    from peft import PeftModel

    from peft_ckt.wam.data import ChunkDataset
    from peft_ckt.wam.modeling import WorldActionModel

    student_path = student.name_or_path
    heldout = {
        "clean": ChunkDataset([e for e in splits["heldout"] if e["perturbation"] == "none"], student.chunk_size),
        "perturbed": ChunkDataset([e for e in splits["heldout"] if e["perturbation"] != "none"], student.chunk_size),
    }
    train_target = ChunkDataset(splits["target"], chunk_size=student.chunk_size)
    frames = train_target.image[train_target.sample_rows].permute(0, 3, 1, 2).float().div(255.0)
    stats = {
        "mean_action": train_target.action.mean(0).tolist(),
        "mean_colour": frames.mean(dim=(0, 2, 3)).tolist(),
        "mean_frame": frames.mean(0, keepdim=True),
    }
    models: dict[str, dict[str, Any]] = {
        "teacher": {"model": teacher, "wam": teacher},
        "student": {"model": student, "wam": student},
    }
    for name, (path, _) in adapters.items():
        # The LoRA adapter reads no teacher; every CKT one does.
        extra = {} if name == "student+lora" else {"teacher": teacher}
        model = PeftModel.from_pretrained(WorldActionModel.from_pretrained(student_path), str(path), **extra).eval()
        models[name] = {"model": model, "wam": model.base_model.model, **extra}
    offline = offline_metrics(models, heldout, stats, settings)
    counts = heldout_expert_counts(models["student+ckt"]["model"], teacher, heldout["perturbed"], settings)
    return offline, counts


def build_report(settings, rows, policies, pretrained, adapters, offline, teacher, student, target) -> dict[str, Any]:
    """`report.json`'s content: every policy's rollouts, trainable budget and path, the comparisons and the models."""
    teacher_record, student_record = pretrained["teacher"], pretrained["student"]
    ckt_record, lora_record = adapters["student+ckt"][1], adapters["student+lora"][1]

    def budget(record: Optional[dict]) -> tuple[int, float]:
        # Teacher and student are frozen after pretraining: nothing of theirs is trained on the target set.
        if record is None:
            return 0, 0.0
        return record["trainable_params"], 100 * record["trainable_params"] / record["total_params"]

    report: dict[str, Any] = {"settings": asdict(settings), "policies": {}, "offline": offline}
    for name, record in (
        ("teacher", None),
        ("student", None),
        ("student+lora", lora_record),
        ("student+ckt", ckt_record),
        *((name, record) for name, (_, record) in adapters.items() if name not in ("student+lora", "student+ckt")),
    ):
        summary = summarize_rollouts([r for r in rows if r["policy_name"] == name])
        trainable, percent = budget(record)
        report["policies"][name] = {
            **summary,
            "trainable_params": trainable,
            "trainable_percent": percent,
            "path": policies[name],
        }
    report["comparisons"] = compare_policies(report["policies"])
    report["policies"]["student+ckt"]["trainable_percent_of_teacher_and_student"] = (
        100 * ckt_record["trainable_params"] / (ckt_record["total_params"] + teacher_record["parameters"])
    )
    report["models"] = {
        "teacher": {
            "backbone": "WanTransformer3DModel",
            "parameters": teacher_record["parameters"],
            "layers": settings.teacher_layers,
            "width": teacher.width,
            "demonstrations": teacher_record["episodes"],
            "teacher_layer": teacher_layer_path(settings, teacher),
        },
        "student": {
            "backbone": "CosmosTransformer3DModel",
            "parameters": student_record["parameters"],
            "layers": settings.student_layers,
            "width": student.width,
            "demonstrations": student_record["episodes"],
        },
        "target_demonstrations": len(target),
        "lora_rank": lora_record["rank"],
    }
    return report


def write_plots(report: dict[str, Any], pretrained, adapters, heldout_counts: list[int], out: Path) -> None:
    plot_success(report, out / "success_by_perturbation.png")
    records = {
        "teacher": pretrained["teacher"],
        "student": pretrained["student"],
        "student+ckt": adapters["student+ckt"][1],
        "student+lora": adapters["student+lora"][1],
        **{name: record for name, (_, record) in adapters.items()},
    }
    plot_training(records, out / "training_loss.png")
    plot_experts(adapters["student+ckt"][1]["expert_counts"] or [], heldout_counts, out / "expert_usage.png")


def run_transfer(
    settings: TransferSettings,
    output: str | os.PathLike,
    cache: Optional[str | os.PathLike] = None,
    episode_log: Optional[str | os.PathLike] = None,
) -> dict:
    """Runs (or resumes) the experiment and writes the report into `output`.

    Args:
        settings: what decides the result; each stage is cached under `cache` by the settings it depends on.
        output: the report folder (`report.md`, `report.json`, plots, GIF).
        cache: the cache folder (default `output/cache`).
        episode_log: the folder of the rollouts' `episodes.jsonl` (default `output`). Episodes are keyed by the
            policy folder that played them, so runs that share a log and a cache play each shared policy once (see
            `experiments.libero_transfer.seeds`).
    """
    import peft_ckt  # noqa: F401  (registers CKT with peft)

    started = time.perf_counter()
    timing: dict[str, float] = {}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache is not None else out / "cache"
    # Small matrices: more than 2 threads buys nothing here, and oversubscribed threads stall badly.
    torch.set_num_threads(int(os.environ.get("PEFT_CKT_NUM_THREADS", min(2, os.cpu_count() or 1))))

    t = time.perf_counter()
    splits = split_datasets(settings, collect_all(settings, cache))
    timing["collect"] = time.perf_counter() - t

    t = time.perf_counter()
    teacher, teacher_record = pretrain_stage(settings, cache, "teacher", splits["teacher"])
    student, student_record = pretrain_stage(settings, cache, "student", splits["student"])
    teacher.requires_grad_(False)
    pretrained = {"teacher": teacher_record, "student": student_record}
    timing["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    adapters = train_adapters(settings, cache, teacher, student.name_or_path, splits["target"])
    timing["adapters"] = time.perf_counter() - t

    policies = {
        "teacher": teacher.name_or_path,
        "student": student.name_or_path,
        **{name: str(path) for name, (path, _) in adapters.items()},
    }
    t = time.perf_counter()
    rows = evaluate_policies(settings, policies, Path(episode_log) if episode_log is not None else out)
    timing["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    offline, heldout_counts = score_offline(settings, splits, teacher, student, adapters)
    timing["offline"] = time.perf_counter() - t

    report = build_report(settings, rows, policies, pretrained, adapters, offline, teacher, student, splits["target"])
    write_plots(report, pretrained, adapters, heldout_counts, out)
    t = time.perf_counter()
    report["episode_gif"] = record_gif(settings, policies, rows, out)
    timing["gif"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - started
    report["timing"] = {k: round(v, 1) for k, v in timing.items()}
    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown_report(report))
    return report


# The name the experiment's entry point had inside `peft_ckt.wam` (kept for its callers).
run_demo = run_transfer

__all__ = ["run_demo", "run_transfer"]
