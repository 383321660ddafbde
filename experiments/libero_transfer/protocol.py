"""The pre-registered settings of the confirmatory experiment (docs/protocol.md) and the check that a run follows them.

`REGISTERED` holds, per question, every value the protocol fixes. Their SHA-256 over canonical JSON (sorted keys, no
spaces) is registered in docs/protocol.md before any test rollout is played. `check_protocol` recomputes it for a
run: a run whose values differ is exploratory, and the report says so.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOL_FILE = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
EVALUATED_TASKS = [0, 1, 2, 3]
PERTURBATION_KINDS = ["camera", "robot", "language", "light", "background", "noise", "layout"]
TEACHER_KINDS = ["camera", "robot", "light", "background", "noise"]  # language and layout: never trained on

_Q1: dict[str, Any] = {
    "question": "Q1",
    "suite": "libero_object",
    "image_size": 32,
    "image_stride": 8,
    "splits": {"train": [0, 30], "validation": [30, 40], "test": [40, 50]},
    "evaluated_tasks": EVALUATED_TASKS,
    "data": {
        "teacher": {
            "tasks": list(range(10)),
            "clean_per_task": 3,
            "perturbed_per_task_and_kind": 2,
            "kinds": TEACHER_KINDS,
            "severity": 2,
        },
        "student": {
            "tasks": EVALUATED_TASKS,
            "clean_per_task": 5,
            "init_offset": 0,
            "vocabulary_tasks": EVALUATED_TASKS,
        },
        "target": {"tasks": EVALUATED_TASKS, "clean_per_task": 3, "init_offset": 5},
        "validation": {
            "tasks": EVALUATED_TASKS,
            "inits": [30, 31],
            "kinds": ["none", *PERTURBATION_KINDS],
            "severity": 3,
        },
        "test": {
            "tasks": EVALUATED_TASKS,
            "inits": [40, 41, 42, 43],
            "kinds": ["none", *PERTURBATION_KINDS],
            "severity": 3,
        },
    },
    "models": {
        "teacher": {"backbone": "wan", "layers": 6, "heads": 3, "head_dim": 32, "steps": 2400, "lr": 1.5e-3},
        "student": {"backbone": "cosmos", "layers": 4, "heads": 2, "head_dim": 32, "steps": 1200, "lr": 1.5e-3},
        "text_dim": 32,
        "future_pool": 2,
        "future_residual": True,
        "batch_size": 32,
        "optimizer": {"name": "AdamW", "betas": [0.9, 0.95], "schedule": "warm-up 50 steps + cosine"},
    },
    "ckt": {
        "num_context_tokens": 16,
        "num_experts": 4,
        "top_k": 2,
        "bottleneck_dim": 64,
        "router_hidden_dim": 64,
        "num_attention_heads": 2,
        "adapter_dropout": 0.1,
        "attention_dropout": 0.1,
        "student_modules_trained": [],
        "steps": 1200,
    },
    "lora": {
        "targets": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"],
        "rank": "smallest whose trainable count >= CKT's (r_budget)",
        "dropout": 0.0,
        "modules_to_save": [],
        "steps": 1200,
    },
    "tuning": {
        "score": "action MSE on the perturbed validation demonstrations (5 Euler steps, fixed noise)",
        "at": {"pretrain_seed": 0, "adapter_seed": 0},
        "ckt": {"learning_rate": [1e-3, 4e-3], "teacher_layer": [2, 4]},
        "lora": {"learning_rate": [1e-3, 4e-3], "rank_multiple": [1, 2]},
    },
    "seeds": {"pretrain": [0, 1], "adapter": [0, 1, 2], "controls_pretrain": [0]},
    "controls": [
        "kv_only",
        "lora_kv",
        "ckt_wrong_instruction",
        "ckt_zero_features",
        "no_specialized",
        "no_generalized",
        "no_auxiliary_loss",
        "ckt_kv",
    ],
    "reference": {"cnn": {"seeds": [0, 1, 2], "steps": 1500, "learning_rate": 1e-3}},
    "official_liberoplus": {
        "base_tasks": EVALUATED_TASKS,
        "dimensions": ["camera", "robot", "language", "noise", "layout"],
        "sample": 24,
        "sample_seed": 0,
    },
    "rollouts": {"max_steps": 200, "n_action_steps": 8, "episode_seed": 0},
    "primary": {
        "endpoint": "success on the perturbed test episodes (seven kinds pooled)",
        "first": "student+ckt",
        "second": "student+lora",
        "test": "exact McNemar, two-sided, discordant pairs pooled over trainings",
        "interval": {"bootstrap": "hierarchical: trainings, then start states", "resamples": 10000, "seed": 0},
        "alpha": 0.05,
    },
    "manipulation_check": {"teacher_minus_student_points": 15, "adapted_clean_vs_cnn_ratio": 0.5},
}

_Q2 = copy.deepcopy(_Q1)
_Q2["question"] = "Q2"
_Q2["data"]["student"] = {
    "tasks": [4, 5, 6, 7, 8, 9],
    "clean_per_task": 5,
    "init_offset": 0,
    "vocabulary_tasks": list(range(10)),
}
_Q2["lora"]["modules_to_save"] = ["text_embedding"]
_Q2["controls"] = [name for name in _Q1["controls"] if name != "ckt_kv"]
_Q2["primary"]["endpoint"] = "success on all test episodes (clean and perturbed)"
del _Q2["manipulation_check"]

REGISTERED: dict[str, dict[str, Any]] = {"Q1": _Q1, "Q2": _Q2}


def settings_hash(values: dict[str, Any]) -> str:
    """SHA-256 of the values as canonical JSON (sorted keys, compact): the same values give the same hash anywhere."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def registered_hash(question: str, protocol_file: str | Path = PROTOCOL_FILE) -> str | None:
    """The hash docs/protocol.md registers for `question` (first 16 hex digits), or None if it registers none."""
    text = Path(protocol_file).read_text()
    match = re.search(rf"settings-sha256:{re.escape(question)}:([0-9a-f]{{16}})", text)
    return match.group(1) if match else None


def protocol_commit(protocol_file: str | Path = PROTOCOL_FILE) -> str | None:
    """The last commit that changed the protocol file (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%H", "--", str(protocol_file)],
            cwd=Path(protocol_file).parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


@dataclass(frozen=True)
class ProtocolStatus:
    question: str
    settings_hash: str
    registered_hash: str | None
    commit: str | None

    @property
    def exploratory(self) -> bool:
        return self.registered_hash is None or not self.settings_hash.startswith(self.registered_hash)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "settings_sha256": self.settings_hash,
            "registered_sha256": self.registered_hash,
            "commit": self.commit,
            "exploratory": self.exploratory,
        }


class ProtocolMismatchError(RuntimeError):
    """A run meant as confirmatory whose settings are not the registered ones."""


def check_protocol(
    question: str, values: dict[str, Any], protocol_file: str | Path = PROTOCOL_FILE, confirmatory: bool = True
) -> ProtocolStatus:
    """Compares a run's values with the registered ones. A confirmatory run (the default) that differs is refused
    with the differing keys named; with `confirmatory=False` the status says `exploratory: true` instead."""
    if question not in REGISTERED:
        raise ValueError(f"unknown question {question!r}; registered: {sorted(REGISTERED)}")
    status = ProtocolStatus(
        question, settings_hash(values), registered_hash(question, protocol_file), protocol_commit(protocol_file)
    )
    if status.exploratory and confirmatory:
        changed = sorted(_differences(REGISTERED[question], values))
        why = f"differs from the registered settings in {changed[:8]}" if changed else "is not registered"
        raise ProtocolMismatchError(
            f"{question}: this run's settings (sha256 {status.settings_hash[:16]}) {why} in {protocol_file}; "
            "run it as exploratory, or amend the protocol before any test rollout"
        )
    return status


def _differences(registered: Any, values: Any, prefix: str = "") -> list[str]:
    if isinstance(registered, dict) and isinstance(values, dict):
        out = []
        for key in registered.keys() | values.keys():
            out += _differences(registered.get(key), values.get(key), f"{prefix}{key}.")
        return out
    return [] if json.dumps(registered, sort_keys=True) == json.dumps(values, sort_keys=True) else [prefix.rstrip(".")]
