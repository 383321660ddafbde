"""What the pre-registered experiment runs, derived from a question's registered values (`protocol.REGISTERED`).

Pure functions, no simulation: the demonstration sets and the init states each one reads (checked against the
splits), the seeds of every training, and the rows each question reports. `experiment.py` runs what this plans.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from peft_ckt.libero.splits import InitStateSplits

from .protocol import REGISTERED

PRIMARY = ("teacher", "student", "student+lora", "student+ckt")
# Controls whose adapters are trained (the others reuse the trained student+ckt adapters at inference).
TRAINED_CONTROLS = ("kv_only", "lora_kv", "no_specialized", "no_generalized", "no_auxiliary_loss", "ckt_kv")
INFERENCE_CONTROLS = ("ckt_wrong_instruction", "ckt_zero_features")


def question_values(question: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The registered values of `question`, with `overrides` merged in (nested dicts key by key). A run with any
    override is exploratory: its settings hash differs from the registered one."""
    values = copy.deepcopy(REGISTERED[question])
    _merge(values, overrides or {})
    return values


def _merge(values: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            _merge(values[key], value)
        else:
            values[key] = copy.deepcopy(value)


def splits_of(values: dict[str, Any]) -> InitStateSplits:
    s = values["splits"]
    return InitStateSplits(tuple(s["train"]), tuple(s["validation"]), tuple(s["test"]))


@dataclass(frozen=True)
class DemoSet:
    """Scripted demonstrations: every task x kind x init state, at one severity, all from one split."""

    name: str
    tasks: tuple[int, ...]
    kinds: tuple[str, ...]
    inits: tuple[int, ...]
    severity: int
    split: str

    def episodes(self) -> list[tuple[int, str, int]]:
        return [(task, kind, init) for task in self.tasks for kind in self.kinds for init in self.inits]

    def select(self, episodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """This set's demonstrations among collected ones (an episode the expert failed is simply absent)."""
        wanted = set(self.episodes())
        return [e for e in episodes if (e["task_id"], e["perturbation"], e["init_index"]) in wanted]


def demo_sets(values: dict[str, Any]) -> dict[str, DemoSet]:
    """Every demonstration set of a question, each checked against its split (`SplitViolationError` otherwise)."""
    data, splits = values["data"], splits_of(values)
    train = splits.states("train").start
    teacher, student, target = data["teacher"], data["student"], data["target"]
    clean = teacher["clean_per_task"]
    sets = {
        "teacher_clean": DemoSet(
            "teacher_clean", tuple(teacher["tasks"]), ("none",), tuple(range(train, train + clean)),
            teacher["severity"], "train",
        ),
        "teacher_perturbed": DemoSet(
            "teacher_perturbed", tuple(teacher["tasks"]), tuple(teacher["kinds"]),
            tuple(range(train + clean, train + clean + teacher["perturbed_per_task_and_kind"])),
            teacher["severity"], "train",
        ),
        "student": DemoSet(
            "student", tuple(student["tasks"]), ("none",),
            tuple(range(train + student["init_offset"], train + student["init_offset"] + student["clean_per_task"])),
            teacher["severity"], "train",
        ),
        "target": DemoSet(
            "target", tuple(target["tasks"]), ("none",),
            tuple(range(train + target["init_offset"], train + target["init_offset"] + target["clean_per_task"])),
            teacher["severity"], "train",
        ),
        "validation": DemoSet(
            "validation", tuple(data["validation"]["tasks"]), tuple(data["validation"]["kinds"]),
            tuple(data["validation"]["inits"]), data["validation"]["severity"], "validation",
        ),
    }  # fmt: skip
    for demo_set in sets.values():
        splits.check(demo_set.split, demo_set.inits, f"the {demo_set.name} demonstrations")
    splits.check("test", data["test"]["inits"], "the test rollouts")
    return sets


def collection_groups(
    questions: dict[str, dict[str, Any]], exclude: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """The demonstrations every question needs, collected once: one folder per (split, severity), holding the union of
    the (task, kind, init) episodes its sets ask for (the clean ones are shared between teacher, student and target).
    Returns `{folder name: {"split", "severity", "episodes"}}`; the name hashes its content."""
    groups: dict[tuple[str, int], set[tuple[int, str, int]]] = {}
    collection = None
    for values in questions.values():
        key = (values["suite"], values["image_size"], values["image_stride"], values["rollouts"]["episode_seed"])
        if collection is not None and key != collection:
            raise ValueError("the questions run together must share suite, image size, stride and episode seed")
        collection = key
        for demo_set in demo_sets(values).values():
            if demo_set.name in exclude:
                continue
            # A clean demonstration does not depend on the severity: keep one per (task, init).
            severity = 0 if demo_set.kinds == ("none",) else demo_set.severity
            groups.setdefault((demo_set.split, severity), set()).update(demo_set.episodes())
    out = {}
    for (split, severity), episodes in sorted(groups.items()):
        ordered = sorted(episodes)
        digest = hashlib.sha1(json.dumps([collection, split, severity, ordered]).encode()).hexdigest()[:10]
        out[f"{split}-s{severity}-{digest}"] = {"split": split, "severity": severity, "episodes": ordered}
    return out


def teacher_plan(values: dict[str, Any], pretrain_seed: int) -> dict[str, Any]:
    """Everything the teacher's pretraining at `pretrain_seed` depends on, known before any collection: its settings,
    the shared model settings, the collection's settings and the (task, kind, init) of its demonstrations. Equal
    plans give the same teacher on a machine (the committed teacher of `make demo` is checked against it)."""
    models = values["models"]
    sets = demo_sets(values)
    return {
        "teacher": models["teacher"],
        "shared": {k: models[k] for k in ("text_dim", "future_pool", "future_residual", "batch_size", "optimizer")},
        "collection": {
            "suite": values["suite"], "image_size": values["image_size"], "image_stride": values["image_stride"],
            "episode_seed": values["rollouts"]["episode_seed"], "severity": values["data"]["teacher"]["severity"],
        },
        "demonstrations": sorted(sets["teacher_clean"].episodes() + sets["teacher_perturbed"].episodes()),
        "pretrain_seed": pretrain_seed,
        "seed": pretrain_seed_of(values, "teacher", pretrain_seed),
    }  # fmt: skip


def pretrain_seed_of(values: dict[str, Any], role: str, pretrain_seed: int) -> int:
    """Seed of a WAM's initial weights and batches: the teacher and the student draw apart."""
    return 1_000 * pretrain_seed + (1 if role == "teacher" else 2)


def adapter_seed_of(pretrain_seed: int, adapter_seed: int) -> int:
    """Seed of an adapter's initial weights, batches and noise (distinct per pretraining and adapter seed)."""
    return 1 + 1_000 * adapter_seed + 100 * pretrain_seed


def trainings(values: dict[str, Any], controls: bool = False) -> list[tuple[int, int]]:
    """`(pretrain seed, adapter seed)` of every independent training: the full grid for the primary rows, the
    controls' pretraining seeds x the adapter seeds for the controls."""
    seeds = values["seeds"]
    pretrain = seeds["controls_pretrain"] if controls else seeds["pretrain"]
    return [(p, a) for p in pretrain for a in seeds["adapter"]]


def tuning_candidates(values: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """The configurations each method is tuned over, in the registered order."""
    grid = values["tuning"][method]
    if method == "ckt":
        return [
            {"learning_rate": lr, "teacher_layer": layer}
            for lr in grid["learning_rate"]
            for layer in grid["teacher_layer"]
        ]
    return [{"learning_rate": lr, "rank_multiple": m} for lr in grid["learning_rate"] for m in grid["rank_multiple"]]


def wrong_instructions(instructions: dict[int, str], tasks: list[int]) -> dict[str, str]:
    """The control that feeds the teacher another task's instruction: each evaluated task's instruction mapped to
    the next evaluated task's (a fixed derangement)."""
    return {instructions[task]: instructions[tasks[(i + 1) % len(tasks)]] for i, task in enumerate(tasks)}


def test_conditions(values: dict[str, Any]) -> list[tuple[int, str, int]]:
    """Every test episode as `(task, kind, init)`: the same for every policy (matched pairs)."""
    test = values["data"]["test"]
    return [(task, kind, init) for task in test["tasks"] for kind in test["kinds"] for init in test["inits"]]


__all__ = [
    "INFERENCE_CONTROLS",
    "PRIMARY",
    "TRAINED_CONTROLS",
    "DemoSet",
    "adapter_seed_of",
    "collection_groups",
    "demo_sets",
    "pretrain_seed_of",
    "question_values",
    "splits_of",
    "test_conditions",
    "trainings",
    "tuning_candidates",
    "wrong_instructions",
]
