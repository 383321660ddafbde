"""The experiment's cache: the keys that name each stage's folder, and the staged save that fills one.

Every stage is cached under one folder keyed by the settings it depends on (and the demonstrations it trains on), so a
second run skips what is done and an interrupted one resumes. Changing a key here invalidates every cached run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from peft_ckt.atomic import staged_directory, write_json

from .settings import PERTURBATION_KINDS, TransferSettings

# The settings every demonstration set is collected under (part of each data folder's and each stage's key).
COLLECTION_FIELDS = ("suite", "image_size", "image_stride", "severity", "seed")


def dataset_specs(settings: TransferSettings) -> dict[str, tuple[tuple[int, ...], int, list[str], int]]:
    """Each demonstration set as `(tasks, episodes per task and kind, kinds, first init state)`."""
    s = settings
    specs = {
        "clean": (s.teacher_tasks, s.teacher_clean_episodes, ["none"], 0),
        "perturbed": (
            s.teacher_tasks,
            s.teacher_perturbed_episodes,
            list(PERTURBATION_KINDS),
            s.teacher_clean_episodes,
        ),
        "heldout": (s.heldout_tasks, 1, ["none", *PERTURBATION_KINDS], s.heldout_init),
    }
    if s.student_tasks:
        specs["student"] = (s.student_tasks, s.student_episodes, ["none"], 0)
    return specs


def dataset_folders(settings: TransferSettings, cache: Path) -> dict[str, Path]:
    """The folder of each demonstration set of `dataset_specs`, keyed by how and what it collects."""
    key = settings.key(*COLLECTION_FIELDS)
    finals = {}
    for name, (tasks, episodes, kinds, offset) in dataset_specs(settings).items():
        spec = "all" if kinds == list(PERTURBATION_KINDS) else ",".join(kinds)
        digest = hashlib.sha1((key + json.dumps([list(tasks), episodes, spec, offset])).encode()).hexdigest()[:10]
        finals[name] = cache / "data" / f"{name}-{digest}"
    return finals


def episodes_key(settings: TransferSettings, episodes: list[dict[str, Any]]) -> str:
    """Names exactly the demonstrations a stage trains on (with how they were collected), so a stage's cache key
    changes with its own data only: a new student set does not retrain the teacher, a new target count does retrain
    the adapters."""
    names = sorted(
        (e.get("task_id"), e.get("init_index"), e.get("perturbation"), e["task"], len(e["action"])) for e in episodes
    )
    collection = settings.key(*COLLECTION_FIELDS)
    return hashlib.sha1(json.dumps([collection, names], default=str).encode()).hexdigest()[:8]


def pretrain_fields(role: str) -> list[str]:
    """The settings a pretrained `role` ("teacher", "student") depends on besides its demonstrations."""
    return [
        f"{role}_layers",
        f"{role}_heads",
        "head_dim",
        "text_dim",
        "future_pool",
        "future_residual",
        "batch_size",
        f"{role}_steps",
        f"{role}_lr",
        "seed",
        "image_size",
    ]


def adapter_fields(settings: TransferSettings, kind: str) -> list[str]:
    """The settings an adapter (`kind`: "ckt", "lora") depends on besides its student and target set."""
    fields = [
        "adapter_steps",
        "batch_size",
        f"{kind}_lr",
        "teacher_layer",
        "num_context_tokens",
        "num_experts",
        "top_k",
        "bottleneck_dim",
        "attention_dropout",
        "adapter_dropout",
        "lora_rank",
        "seed",
        "adapter_seed",
    ]
    if settings.ckt_modules_to_save:  # only when set, so that frozen-student adapters trained before it stay cached
        fields.append("ckt_modules_to_save")
    return fields


EVAL_FIELDS = ("suite", "severity", "seed", "image_size", "eval_init_offset", "eval_max_steps", "n_action_steps")


def eval_key(settings: TransferSettings) -> dict[str, Any]:
    """The settings the recorded episodes of `episodes.jsonl` depend on (its `eval_config.json`)."""
    return {n: getattr(settings, n) for n in EVAL_FIELDS}


def save_stage(model, record: dict[str, Any], final: Path) -> None:
    """`save_pretrained` + `training.json` into a temporary folder, renamed into place when complete."""
    with staged_directory(final) as staging:
        model.save_pretrained(staging)
        write_json(staging / "training.json", record)


__all__ = [
    "COLLECTION_FIELDS",
    "EVAL_FIELDS",
    "adapter_fields",
    "dataset_folders",
    "dataset_specs",
    "episodes_key",
    "eval_key",
    "pretrain_fields",
    "save_stage",
]
