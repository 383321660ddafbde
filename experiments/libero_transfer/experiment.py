"""The pre-registered experiment (docs/protocol.md): Q1 and Q2, their controls, the CNN reference, the report.

    python -m experiments.libero_transfer.experiment               # `make experiment`: the whole protocol
    python -m experiments.libero_transfer.experiment --phases primary          # the primary rows only
    python -m experiments.libero_transfer.experiment --exploratory --tiny      # every stage at toy counts

Phases run in order, each cached and resumable (a stopped run loses at most the episode in flight, the training
steps since the last checkpoint, or a demonstration folder still being collected): `primary` (collection, pretraining at every pretraining seed, the equal tuning on validation, both
adapters at every seed, their rollouts), `controls`, `cnn`, `official`. The report is rewritten after each phase, so a run
spread over several sessions always has one; rows not run yet are absent from it and `phases_done` says which ran.

A run whose settings are not the registered ones (`--tiny`, `--set`) must say `--exploratory`, and its report
says `"exploratory": true` everywhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from peft_ckt.atomic import staged_directory, write_json, write_text

from . import protocol_stages as stages
from .analysis import PRIMARY_ROWS, analyse, official_comparisons, policy_id
from .ledger import TimeLedger
from .plan import (
    INFERENCE_CONTROLS,
    TRAINED_CONTROLS,
    collection_groups,
    demo_sets,
    question_values,
    teacher_plan,
    test_conditions,
    trainings,
    tuning_candidates,
    wrong_instructions,
)
from .protocol import check_protocol

logger = logging.getLogger(__name__)
PHASES = ("primary", "controls", "cnn", "official")

# Toy counts that go through every stage in minutes (tests, `--tiny`): exploratory by construction.
TINY: dict[str, Any] = {
    "data": {
        "teacher": {"tasks": [0, 1], "clean_per_task": 1, "perturbed_per_task_and_kind": 1, "kinds": ["camera"]},
        "student": {"tasks": [0], "clean_per_task": 1, "vocabulary_tasks": [0]},
        "target": {"tasks": [0], "clean_per_task": 1, "init_offset": 1},
        "validation": {"tasks": [0], "inits": [30], "kinds": ["none", "camera"]},
        "test": {"tasks": [0], "inits": [40], "kinds": ["none", "camera"]},
    },
    "models": {
        "teacher": {"layers": 2, "steps": 20},
        "student": {"layers": 2, "steps": 20},
        "batch_size": 8,
    },
    "ckt": {"steps": 10},
    "lora": {"steps": 10},
    "tuning": {
        "ckt": {"learning_rate": [1e-3], "teacher_layer": [0, 1]},
        "lora": {"learning_rate": [1e-3], "rank_multiple": [1, 2]},
    },
    "seeds": {"pretrain": [0], "adapter": [0, 1], "controls_pretrain": [0]},
    "reference": {"cnn": {"seeds": [0], "steps": 20}},
    "rollouts": {"max_steps": 16},
}


REPOSITORY = Path(__file__).resolve().parents[2]
COMMITTED_REPORT = REPOSITORY / "docs" / "results" / "experiment" / "report.json"
# What `make demo` takes from the experiment before its report exists (`--publish-for-demo`): the teacher at
# pretraining seed 0, loaded rather than spend ~15 of the demo's minutes pretraining it again (once its `plan.json`
# shows it was pretrained with the registered settings), and each method's setting chosen on validation.
COMMITTED_TEACHER = COMMITTED_REPORT.parents[1] / "experiment-for-demo" / "teacher-p0"
COMMITTED_TUNING = COMMITTED_TEACHER.parent / "tuning.json"
COMMITTED_SNAPSHOT = COMMITTED_REPORT.parents[1] / "experiment-progress"  # the run in progress (`--snapshot`)
# `make demo`: one seed of Q1's primary comparison (teacher, student, student+LoRA, student+CKT at pretraining seed 0
# and adapter seed 0) on one test init state per task, labelled as one seed; ~22 min on 2 CPU cores with the install.
DEMO: dict[str, Any] = {"seeds": {"pretrain": [0], "adapter": [0]}, "data": {"test": {"inits": [40]}}}
# `make demo QUICK=1`: the same code at toy counts (a few minutes).
DEMO_QUICK: dict[str, Any] = {
    **TINY,
    "seeds": {"pretrain": [0], "adapter": [0], "controls_pretrain": [0]},
    "data": {**TINY["data"], "test": {"tasks": [0], "inits": [40], "kinds": ["none", "camera"]}},
}


def demo_tuning(values: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Each method's setting for the demo and where it comes from: the committed report's tuning, else the tuning
    committed for the demo before the report (`COMMITTED_TUNING`), else the first registered candidate."""
    question = values["question"]
    for committed in (COMMITTED_REPORT, COMMITTED_TUNING):
        if not committed.is_file():
            continue
        data = json.loads(committed.read_text())
        tuning = (
            data["questions"].get(question, {}).get("tuning", {})
            if committed == COMMITTED_REPORT
            else data.get(question, {})
        )
        layers = values["models"]["teacher"]["layers"]
        fits = tuning.get("ckt", {}).get("chosen", {}).get("teacher_layer", layers) < layers  # not at toy sizes
        if fits and all(tuning.get(m, {}).get("chosen") for m in ("ckt", "lora")):
            source = f"chosen on validation by the committed experiment ({committed.relative_to(REPOSITORY)})"
            return {m: (tuning[m]["chosen"], source) for m in ("ckt", "lora")}
    source = "the first registered candidate (no committed experiment tuning yet)"
    return {m: (tuning_candidates(values, m)[0], source) for m in ("ckt", "lora")}


def committed_teacher(values: dict[str, Any], folder: Path = COMMITTED_TEACHER) -> tuple[Path | None, str]:
    """`(folder, why)`: the committed teacher if `folder` holds one pretrained with `values`' teacher plan at
    pretraining seed 0 (`plan.teacher_plan`), else `(None, why not)`."""
    import hashlib

    plan_file = folder / "plan.json"
    if not plan_file.is_file():
        return None, f"no committed teacher in {folder}"
    shipped = json.loads(plan_file.read_text())
    if shipped["plan"] != json.loads(json.dumps(teacher_plan(values, 0))):
        return None, f"the teacher in {folder} was pretrained with other settings than these"
    weights = (folder / "model.safetensors").read_bytes()
    if hashlib.sha256(weights).hexdigest() != shipped["sha256"]:
        return None, f"{folder / 'model.safetensors'} does not match the checksum in {plan_file.name}"
    shown = folder.relative_to(REPOSITORY) if folder.is_relative_to(REPOSITORY) else folder
    return (
        folder,
        f"the experiment's teacher at pretraining seed 0, committed in {shown} ({shipped['cache_name']})",
    )


def publish_teacher(output: Path, target: Path = COMMITTED_TEACHER, overrides: dict[str, Any] | None = None) -> Path:
    """Copies the teacher that the run in `output` pretrained at seed 0 into `target` (to be committed) with its
    `plan.json` (the teacher plan, its cache name and the weights' sha256). The run's demonstrations must be
    collected and the teacher pretrained; returns `target`."""
    import hashlib
    import shutil

    cache = output / "cache"
    # The run collected once for the questions it ran together: the whole protocol, or Q1 alone (as the demo does).
    for names in (("Q1", "Q2"), ("Q1",)):
        questions = {q: question_values(q, overrides) for q in names}
        groups = collection_groups(questions)
        if all((cache / "data" / name / "meta" / "episodes.jsonl").is_file() for name in groups):
            break
    else:
        raise ValueError(f"{output} has not collected Q1's demonstrations: run the experiment's primary phase first")
    values = questions["Q1"]
    pool = stages.collect(questions, cache, workers=1, progress=False)
    episodes, vocabulary = stages.teacher_data({n: stages.demos(pool, s) for n, s in demo_sets(values).items()})
    folder = stages.model_folder(values, cache, "teacher", 0, episodes, vocabulary)
    if not (folder / "model.safetensors").is_file():
        raise ValueError(
            f"{output} holds no teacher pretrained at seed 0 ({folder.name}): run the primary phase first"
        )
    training = json.loads((folder / "training.json").read_text())
    with staged_directory(target) as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True)
        write_json(staging / "plan.json", {
            "plan": teacher_plan(values, 0), "cache_name": folder.name,
            "sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
        })  # fmt: skip
        write_text(staging / "README.md", TEACHER_CARD.format(
            cache_name=folder.name, steps=values["models"]["teacher"]["steps"], episodes=len(episodes),
            parameters=training.get("parameters", "?"),
        ))  # fmt: skip
    return target


def publish_tuning(output: Path, target: Path = COMMITTED_TUNING) -> Path:
    """Writes each question's tuning of the run in `output` (candidates, validation scores, the choice) to `target`:
    chosen on validation demonstrations alone, it can be committed before any test rollout is looked at."""
    tuning: dict[str, dict[str, Any]] = {}
    for record in sorted((output / "cache" / "tuning").glob("*.json")):
        question, method, _ = record.stem.split("-")
        if method in tuning.setdefault(question, {}):
            raise ValueError(f"{output} holds two tunings of {question} {method}: publish from a run of one setting")
        tuning[question][method] = json.loads(record.read_text())
    if not tuning:
        raise ValueError(f"{output} holds no tuning yet: run the experiment's primary phase first")
    write_json(target, tuning)
    return target


TEACHER_CARD = """---
library_name: peft-ckt
tags:
- robotics
- world-action-model
- libero
---

# The experiment's teacher WAM at pretraining seed 0

The Wan-backbone teacher of the pre-registered LIBERO experiment (`docs/protocol.md`), pretrained by
`make experiment` at pretraining seed 0 ({steps} steps on {episodes} scripted demonstrations of libero_object, clean
and perturbed; {parameters} parameters; cache name `{cache_name}`). Copied here with
`python -m experiments.libero_transfer.experiment --publish-for-demo`.

`make demo` loads it in place of pretraining it again, when `plan.json` (everything its pretraining depended on)
equals the registered settings and the weights match its sha256; `make demo PRETRAIN_TEACHER=1` pretrains it instead.

```python
from peft_ckt.wam.modeling import WorldActionModel

teacher = WorldActionModel.from_pretrained("docs/results/experiment-for-demo/teacher-p0")
```
"""


class Experiment:
    """One run of the protocol's questions into `output` (cache under `output/cache`)."""

    def __init__(
        self,
        questions: dict[str, dict[str, Any]],
        output: Path,
        workers: int,
        progress: bool = True,
        train_workers: int | None = None,
    ):
        self.questions = questions
        self.output = output
        self.cache = output / "cache"
        self.workers = workers
        # Adapter trainings run one thread each; on 2 cores two at a time nearly halve their time.
        self.train_workers = workers if train_workers is None else train_workers
        self._budget: dict[str, int] = {}
        self.progress = progress
        self.pool: dict = {}
        self.models: dict[str, Any] = {}  # (role, question, pretrain seed) -> (folder, record)
        self.adapters: dict[str, Any] = {}  # policy id per question -> (folder, record)
        self.policies: dict[str, dict[str, str]] = {q: {} for q in questions}  # question -> {policy id: folder}
        self.tuning: dict[str, Any] = {}
        self.timing: dict[str, float] = {}
        self.ledger: TimeLedger | None = None  # the seconds of every session on this output (`timing.json`)
        self.fixed_tuning: dict[str, dict[str, tuple[dict, str]]] | None = None
        self.shipped_teacher: Path | None = None  # a committed teacher used in place of pretraining at seed 0
        self.teacher_source = "pretrained in this run"
        self.label = "the pre-registered experiment"
        self.official_tasks: list[str] = []  # set by the `official` phase
        self._sets: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._inference: dict[tuple, dict[str, Any]] = {}  # timings by the policies timed: measured once per run

    # ------------------------------------------------------------------------------------------- stages
    def sets(self, question: str) -> dict[str, list[dict[str, Any]]]:
        if question not in self._sets:  # the pool is fixed once collected: select each question's sets once
            values = self.questions[question]
            self._sets[question] = {name: stages.demos(self.pool, s) for name, s in demo_sets(values).items()}
        return self._sets[question]

    def instructions(self) -> dict[int, str]:
        return {e["task_id"]: e["task"] for group in self.pool.values() for e in group}

    def teacher(self, pretrain_seed: int):
        return stages.load_teacher(self.models[("teacher", pretrain_seed)][0])

    def pretrain_all(self, seeds: list[int]) -> None:
        from peft_ckt.wam.tokenizer import build_vocabulary

        instructions = self.instructions()
        for p in seeds:
            for question, values in self.questions.items():
                sets = self.sets(question)
                if self.shipped_teacher is not None and p == 0:
                    self.models[("teacher", p)] = self.load_shipped_teacher()
                else:
                    self.models[("teacher", p)] = stages.pretrain(
                        values, self.cache, "teacher", p, *stages.teacher_data(sets)
                    )
                words = values["data"]["student"]["vocabulary_tasks"]
                vocab = build_vocabulary(instructions[t] for t in words if t in instructions)
                self.models[("student", question, p)] = stages.pretrain(
                    values, self.cache, "student", p, sets["student"], vocab
                )
                self.policies[question][policy_id("teacher", p)] = str(self.models[("teacher", p)][0])
                self.policies[question][policy_id("student", p)] = str(self.models[("student", question, p)][0])

    def load_shipped_teacher(self) -> tuple[Path, dict[str, Any]]:
        """The committed teacher, copied into the cache under the name its own pretraining gave it."""
        import shutil

        shipped = self.shipped_teacher
        assert shipped is not None
        final = self.cache / "models" / json.loads((shipped / "plan.json").read_text())["cache_name"]
        if not (final / "model.safetensors").is_file():
            with staged_directory(final) as staging:
                shutil.copytree(shipped, staging, dirs_exist_ok=True)
        return final, json.loads((final / "training.json").read_text())

    def budget(self, question: str) -> int:
        """CKT's trainable count on the question's student at the tuning seed (what LoRA's rank is matched to)."""
        if question not in self._budget:
            values = self.questions[question]
            at = values["tuning"]["at"]["pretrain_seed"]
            student = self.models[("student", question, at)][0]
            self._budget[question] = stages.ckt_budget(values, self.teacher(at), student)
        return self._budget[question]

    def tuning_jobs(self, question: str) -> list[stages.AdapterJob]:
        """The candidates' trainings of the question's tuning, for `train_adapters` ahead of `tune`."""
        if self.fixed_tuning is not None:
            return []
        values = self.questions[question]
        at = values["tuning"]["at"]
        seeds = (at["pretrain_seed"], at["adapter_seed"])
        return [
            self.job(question, method, method, seeds, hyper)
            for method in ("ckt", "lora")
            for hyper in tuning_candidates(values, method)
        ]

    def job(
        self, question: str, kind: str, method: str, seeds: tuple[int, int], hyper: dict | None = None
    ) -> stages.AdapterJob:
        """The training of an adapter of `kind` with `method`'s tuned setting (or `hyper`) at `(pretrain, adapter)`."""
        if hyper is None:
            hyper = dict(self.tuning[(question, method)]["chosen"])
        if kind == "kv_only":
            hyper = {"learning_rate": hyper["learning_rate"]}
        return stages.AdapterJob(
            self.questions[question], self.cache, kind, hyper,
            self.models[("teacher", seeds[0])][0] if method == "ckt" else None,
            self.models[("student", question, seeds[0])][0], self.sets(question)["target"], tuple(seeds),
            self.budget(question), torch.get_num_threads() if self.train_workers <= 1 else 1,
        )  # fmt: skip

    def train_ahead(self, jobs: list[stages.AdapterJob]) -> None:
        """Trains `jobs` in `train_workers` processes; the phases then find them cached."""
        t = time.perf_counter()
        if stages.train_adapters(jobs, self.train_workers, self.progress):
            self.timing["trainings"] = self.timing.get("trainings", 0.0) + time.perf_counter() - t
            self.record_time()

    def tune(self, question: str) -> None:
        values = self.questions[question]
        at = values["tuning"]["at"]["pretrain_seed"]
        teacher, student = self.teacher(at), self.models[("student", question, at)][0]
        sets = self.sets(question)
        budget = self.budget(question)
        if self.fixed_tuning is not None:  # the demo: settings chosen by an earlier run's tuning, not tuned again
            for method in ("ckt", "lora"):
                chosen, source = self.fixed_tuning[question][method]
                self.tuning[(question, method)] = {"chosen": chosen, "source": source, "budget": budget}
            return
        for method in ("ckt", "lora"):
            chosen, scores = stages.tune(
                values, self.cache, method, tuning_candidates(values, method), teacher, student, sets["target"],
                sets["validation"], budget,
            )  # fmt: skip
            self.tuning[(question, method)] = {"chosen": chosen, "scores": scores, "budget": budget}

    def train(self, question: str, kind: str, method: str, seeds: tuple[int, int]) -> tuple[Path, dict]:
        """An adapter of `kind` with `method`'s tuned setting ("ckt" or "lora") at `(pretrain, adapter)` seeds."""
        return stages.train_job(self.job(question, kind, method, seeds), self.progress)

    def rollouts(self, question: str) -> list[dict[str, Any]]:
        return stages.rollouts(
            self.questions[question], self.policies[question], self.output / "rollouts", self.workers, self.progress
        )

    # ------------------------------------------------------------------------------------------- phases
    def primary(self) -> None:
        first = next(iter(self.questions.values()))
        seeds = sorted(
            {p for v in self.questions.values() for p in v["seeds"]["pretrain"]}
            | {first["tuning"]["at"]["pretrain_seed"]}
        )
        self.pretrain_all(seeds)
        self.train_ahead([job for question in self.questions for job in self.tuning_jobs(question)])
        for question in self.questions:
            self.tune(question)
        self.train_ahead([
            self.job(question, method, method, (p, a))
            for question, values in self.questions.items() for p, a in trainings(values) for method in ("ckt", "lora")
        ])  # fmt: skip
        for question, values in self.questions.items():
            for p, a in trainings(values):
                for policy, method in (("student+ckt", "ckt"), ("student+lora", "lora")):
                    folder, record = self.train(question, method, method, (p, a))
                    self.adapters[(question, policy_id(policy, p, a))] = (folder, record)
                    self.policies[question][policy_id(policy, p, a)] = str(folder)

    def controls(self) -> None:
        from peft_ckt.wam.policy import write_control_policy

        instructions = self.instructions()
        self.train_ahead([
            self.job(question, "ckt" if control in INFERENCE_CONTROLS else control,
                     "lora" if control == "lora_kv" else "ckt", (p, a))
            for question, values in self.questions.items() for p, a in trainings(values, controls=True)
            for control in values["controls"] if control in INFERENCE_CONTROLS or control in TRAINED_CONTROLS
        ])  # fmt: skip
        for question, values in self.questions.items():
            for p, a in trainings(values, controls=True):
                for control in values["controls"]:
                    if control in INFERENCE_CONTROLS:
                        folder, _ = self.train(question, "ckt", "ckt", (p, a))
                        tasks = values["data"]["test"]["tasks"]
                        mapping = wrong_instructions(instructions, tasks) if control == "ckt_wrong_instruction" else {}
                        target = self.cache / "controls" / f"{control}-{folder.name}"
                        write_control_policy(target, folder, mapping, control == "ckt_zero_features")
                        self.policies[question][policy_id(control, p, a)] = str(target)
                        continue
                    if control not in TRAINED_CONTROLS:
                        raise ValueError(f"{question}: unknown control {control!r}")
                    method = "lora" if control == "lora_kv" else "ckt"
                    folder, record = self.train(question, control, method, (p, a))
                    self.adapters[(question, policy_id(control, p, a))] = (folder, record)
                    self.policies[question][policy_id(control, p, a)] = str(folder)

    def cnn(self) -> None:
        """The plain CNN reference on every clean training demonstration of the evaluated tasks (the Q1 student's and
        the target set), one per seed; shared by both questions."""
        from peft_ckt.libero.policies.cnn import train_cnn_policy

        values = next(iter(self.questions.values()))
        tasks = set(values["evaluated_tasks"])
        episodes = [e for e in self.pool[("train", 0)] if e["task_id"] in tasks]
        spec = values["reference"]["cnn"]
        for seed in spec["seeds"]:
            key = stages.digest(spec, stages.episodes_digest(episodes), seed, values["image_size"])
            folder = self.cache / "cnn" / f"c{seed}-{key}"
            if not (folder / "model.safetensors").is_file():
                policy, losses = train_cnn_policy(
                    episodes, steps=spec["steps"], learning_rate=spec["learning_rate"], seed=seed,
                    image_size=values["image_size"],
                )  # fmt: skip
                with staged_directory(folder) as staging:
                    policy.save_pretrained(staging)
                    write_json(staging / "training.json", {"losses": losses})
            for question in self.questions:
                self.policies[question][policy_id("cnn", cnn=seed)] = str(folder)

    def official(self) -> None:
        """The untouched test on the primary rows (teacher, student, both adapters at every training)."""
        values = next(iter(self.questions.values()))
        self.official_tasks = stages.official_sample(values)

    def official_rows(self, question: str) -> list[dict[str, Any]]:
        if not self.official_tasks:
            return []
        primary = {
            pid: spec
            for pid, spec in self.policies[question].items()
            if pid.split("@")[0] in ("teacher", "student", "student+ckt", "student+lora")
        }
        return stages.official_rollouts(
            self.questions[question],
            primary,
            self.official_tasks,
            self.output / "official",
            self.workers,
            self.progress,
        )

    def inference_time(self, question: str) -> dict[str, Any]:
        """Seconds per action chunk of the student, student+LoRA and student+CKT at the first training, and the ratio
        to the student's (`protocol_stages.inference_seconds`)."""
        chosen = {}
        for name in ("student", "student+lora", "student+ckt"):
            ids = sorted(pid for pid in self.policies[question] if pid.split("@")[0] == name)
            if ids:
                chosen[name] = self.policies[question][ids[0]]
        if "student" not in chosen:
            return {}
        key = tuple(sorted(chosen.items()))
        if key in self._inference:
            return self._inference[key]
        episode = self.sets(question)["target"][0]
        observation = {
            "observation.images.image": episode["image"][0],
            "observation.images.wrist_image": episode["wrist_image"][0],
            "observation.state": episode["state"][0],
            "task": episode["task"],
        }
        self._inference[key] = stages.inference_seconds(chosen, observation)
        return self._inference[key]

    def record_time(self) -> None:
        if self.ledger is not None:
            self.ledger.update(self.timing)

    # ------------------------------------------------------------------------------------------- report
    def report(self, statuses: dict[str, Any], phases_done: list[str], resamples: int | None = None) -> dict:
        report: dict[str, Any] = {
            "settings": {q: v for q, v in self.questions.items()},
            "protocol": statuses,
            "exploratory": any(s["exploratory"] for s in statuses.values()),
            "phases_done": phases_done,
            "training_threads": torch.get_num_threads(),
            "label": self.label,
            "teacher": self.teacher_source,
            "questions": {},
        }
        for question, values in self.questions.items():
            t = time.perf_counter()
            rows = self.rollouts(question)
            self.timing[f"rollouts {question}"] = (
                self.timing.get(f"rollouts {question}", 0.0) + time.perf_counter() - t
            )
            self.record_time()
            result = analyse(values, rows, resamples)
            result["tuning"] = {
                method: self.tuning.get((question, method))
                for method in ("ckt", "lora")
                if (question, method) in self.tuning
            }
            result["trainable_params"] = {
                pid: record["trainable_params"] for (q, pid), (_, record) in self.adapters.items() if q == question
            }
            official = self.official_rows(question)
            if official:
                interval = values["primary"]["interval"]
                result["official_liberoplus"] = {
                    "tasks": self.official_tasks,
                    "rows": official_table(official),
                    "comparisons": official_comparisons(
                        official, resamples or interval["resamples"], interval["seed"]
                    ),
                }
            result["inference_time"] = self.inference_time(question)
            result["policies"] = self.policies[question]
            result["exploratory"] = statuses[question]["exploratory"]
            report["questions"][question] = result
        from .report import plot_rows

        for question, result in report["questions"].items():
            plot_question(result, values["suite"], self.output / f"success_{question}.png")
            plot_rows(result, question, PRIMARY_ROWS, self.output / f"controls_{question}.png")
        # Seconds of this invocation (a resumed run counts only what it did itself).
        report["timing"] = {k: round(v, 1) for k, v in self.timing.items()}
        if self.ledger is not None:  # and what every session on this output took, killed ones included
            report["timing_all_sessions"] = self.ledger.totals()
        write_json(self.output / "report.json", report)
        write_text(self.output / "report.md", markdown(report))
        return report


def plot_question(result: dict[str, Any], suite: str, path: Path) -> None:
    """Success by perturbation of the primary rows (and the CNN reference) of a question, pooled over trainings, with
    95% Wilson intervals; the controls have their own plot (`report.plot_rows`)."""
    from peft_ckt.libero.metrics import success_cell

    from .report import plot_success
    from .settings import PERTURBATION_KINDS

    empty = success_cell(0, 0)
    policies = {}
    for name, row in result["rows"].items():
        if name not in PRIMARY_ROWS:
            continue
        pooled = row["pooled"]
        kinds = {k: pooled["by_perturbation"].get(k, empty) for k in ["none", *PERTURBATION_KINDS]}
        policies[name] = {"by_perturbation": kinds, "perturbed": pooled["perturbed"]}
    if "student" in policies:
        plot_success({"policies": policies, "settings": {"suite": suite}}, path)


def official_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Successes on the official sample per policy (pooled over trainings) and per dimension; errors apart."""
    from peft_ckt.libero.metrics import success_cell

    from .analysis import split_id

    out: dict[str, Any] = {}
    for policy in dict.fromkeys(split_id(r["policy_id"])[0] for r in rows):
        mine = [r for r in rows if split_id(r["policy_id"])[0] == policy]
        played = [r for r in mine if "error" not in r]
        out[policy] = {
            "all": success_cell(sum(bool(r["success"]) for r in played), len(played)),
            "by_dimension": {
                d: success_cell(
                    sum(bool(r["success"]) for r in played if r["dimension"] == d),
                    sum(r["dimension"] == d for r in played),
                )
                for d in sorted({r["dimension"] for r in played})
            },
            "errors": len(mine) - len(played),
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Pre-registered LIBERO transfer experiment",
        "",
        f"Run: {report.get('label', 'the pre-registered experiment')}.",
        "",
    ]
    if report["exploratory"]:
        lines += ["**Exploratory run**: its settings are not the registered ones (docs/protocol.md).", ""]
    lines += [f"Phases run: {', '.join(report['phases_done']) or 'none'}.", ""]
    if "timing_all_sessions" in report:
        every = report["timing_all_sessions"]
        lines += [
            f"Wall time: {every['seconds'].get('total', 0.0) / 3600:.1f} h over {every['sessions']} session(s) "
            f"(this one {every.get('this_session', 0.0) / 3600:.1f} h; `timing.json`).",
            "",
        ]
    for question, result in report["questions"].items():
        primary = result["primary"]
        lines += [f"## {question}" + (" (exploratory)" if result["exploratory"] else ""), ""]
        lines += ["| policy | trainings | perturbed | clean | spread perturbed |", "|---|---|---|---|---|"]
        for policy, row in result["rows"].items():
            pooled = row["pooled"]
            lines.append(
                f"| {policy} | {row['num_trainings']} | {pooled['perturbed']['successes']}/{pooled['perturbed']['episodes']} "
                f"| {pooled['clean']['successes']}/{pooled['clean']['episodes']} "
                f"| {row['spread']['perturbed'][0]:.2f}-{row['spread']['perturbed'][1]:.2f} |"
            )
        lines += [""]
        if primary.get("episodes"):
            lines += [
                f"**Primary** ({primary['endpoint']}): {primary['first_policy']} {primary['first']} vs "
                f"{primary['second_policy']} {primary['second']} of {primary['episodes']} matched episodes; "
                f"difference {100 * primary['difference']:+.1f} points, 95% bootstrap interval "
                f"[{100 * primary['bootstrap_ci95'][0]:+.1f}, {100 * primary['bootstrap_ci95'][1]:+.1f}], exact McNemar "
                f"p = {primary['mcnemar_p']:.3g}; decision: **{primary['decision']}**.",
                "",
            ]
        for policy, te in result.get("transfer_efficiency", {}).items():
            if te.get("episodes"):
                interval = (
                    "no interval"
                    if te["ci95"] is None
                    else f"95% bootstrap interval [{te['ci95'][0]:.2f}, {te['ci95'][1]:.2f}]"
                )
                estimate = (
                    "undefined (the teacher does not lead)" if te["estimate"] is None else f"{te['estimate']:.2f}"
                )
                lines.append(
                    f"- Transfer efficiency of {policy}: {estimate}, {interval}, over {te['episodes']} matched episodes"
                )
        if result.get("transfer_efficiency"):
            lines.append("")
        if "manipulation_check" in result:
            lines += [f"Manipulation check: `{json.dumps(result['manipulation_check'])}`", ""]
        kinds = sorted({k for row in result["rows"].values() for k in row["pooled"]["by_perturbation"]})
        if kinds:
            lines += ["Per perturbation kind (pooled over trainings):", ""]
            lines += ["| policy | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
            for policy, row in result["rows"].items():
                cells = row["pooled"]["by_perturbation"]
                lines.append(
                    f"| {policy} | "
                    + " | ".join(
                        f"{cells[k]['successes']}/{cells[k]['episodes']}" if k in cells else "" for k in kinds
                    )
                    + " |"
                )
            lines.append("")
        if result.get("official_liberoplus"):
            lines += ["Official LIBERO-Plus sample (untouched test, one episode per task and training):", ""]
            for policy, row in result["official_liberoplus"]["rows"].items():
                lines.append(f"- {policy}: {row['all']['successes']}/{row['all']['episodes']}")
            for name, comparison in result["official_liberoplus"].get("comparisons", {}).items():
                fisher, matched = comparison["fisher"], comparison["paired"]
                if fisher["p_value"] is None or not matched.get("episodes"):
                    continue
                lines.append(
                    f"- {name}: {100 * fisher['difference']:+.1f} points, Fisher's exact p = {fisher['p_value']:.3g} "
                    f"(registered); matched on training and task, exact McNemar p = {matched['mcnemar_p']:.3g} "
                    f"({matched['first_only']} vs {matched['second_only']} discordant of {matched['episodes']})"
                )
            lines.append("")
        if result.get("inference_time"):
            timed = result["inference_time"]
            quartiles = timed.get("ratio_quartiles", {})
            lines += [
                f"Inference time per action chunk, ratio to the student (median over {timed['rounds']} interleaved "
                "rounds, quartiles in brackets): "
                + ", ".join(
                    f"{k} {v:.2f}x" + (f" [{quartiles[k][0]:.2f}, {quartiles[k][1]:.2f}]" if k in quartiles else "")
                    for k, v in timed["ratio_to_student"].items()
                ),
                "",
            ]
        for name, comparison in result.get("secondary", {}).items():
            if comparison.get("episodes"):
                lines.append(
                    f"- {name}: {100 * comparison['difference']:+.1f} points over {comparison['episodes']} pairs, "
                    f"Holm p = {comparison.get('holm_p', comparison['mcnemar_p']):.3g} (secondary)"
                )
        lines.append("")
    return "\n".join(lines)


def run_experiment(
    questions: list[str] = ("Q1", "Q2"),
    output: str | os.PathLike = "outputs/experiment",
    phases: list[str] = PHASES,
    exploratory: bool = False,
    overrides: dict[str, Any] | None = None,
    workers: int = 2,
    progress: bool = True,
    resamples: int | None = None,
    demo: bool = False,
    train_workers: int | None = None,
    teacher: Path | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the protocol's `phases` for `questions`; returns the report (also written to `output`).

    `demo`: no tuning; each method's setting is the one the committed experiment chose (`COMMITTED_REPORT`), or,
    before there is one, the first registered candidate; the report says which. `train_workers`: adapter trainings
    run at once, one thread each (default `workers`; 1 trains them here, one after the other). `teacher`: a folder
    written by `publish_teacher`, loaded in place of pretraining the teacher at seed 0 when it was pretrained with
    these settings (`committed_teacher`); its demonstrations are then not collected. The report says which."""
    import peft_ckt  # noqa: F401

    values = {q: question_values(q, overrides) for q in questions}
    statuses = {q: check_protocol(q, v, confirmatory=not exploratory).to_dict() for q, v in values.items()}
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f"unknown phase(s) {unknown}; expected some of {PHASES}")
    # One training thread, fixed: the same seeds then give the same floats on a machine (`make demo` too: its models
    # are then the experiment's at seed 0), and a thread never waits on another that the simulation workers or anything
    # else running took the core from (measured on 2 cores: a 2-thread pretraining slowed from ~6 to 0.2-0.4 steps/s
    # beside one busy process).
    torch.set_num_threads(int(os.environ.get("PEFT_CKT_NUM_THREADS", 1)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    run = Experiment(values, out, workers, progress, train_workers)
    if demo:
        run.fixed_tuning = {q: demo_tuning(v) for q, v in values.items()}
        run.label = "make demo: one seed (pretraining 0, adapter 0) of the primary comparison, not the result"
    excluded: tuple[str, ...] = ("validation",) if demo else ()  # the demo tunes nothing: no validation demos
    if teacher is not None:
        shipped, run.teacher_source = committed_teacher(next(iter(values.values())), teacher)
        if shipped is not None and len({json.dumps(teacher_plan(v, 0)) for v in values.values()}) == 1:
            run.shipped_teacher = shipped
            excluded += ("teacher_clean", "teacher_perturbed")
        else:
            run.teacher_source = f"pretrained in this run ({run.teacher_source})"
        logger.info(f"teacher at pretraining seed 0: {run.teacher_source}")
    started = time.perf_counter()
    run.ledger = TimeLedger(out / "timing.json").start()
    try:
        run.pool = stages.collect(values, run.cache, workers, progress, exclude=excluded)
        run.timing["collect"] = time.perf_counter() - started
        run.record_time()
        done: list[str] = []
        report: dict[str, Any] = {}
        # `primary` always runs (cached after the first time): the later phases need its models and tuned settings.
        for phase in [p for p in PHASES if p == "primary" or p in phases]:
            t = time.perf_counter()
            getattr(run, phase)()
            done.append(phase)
            run.timing[phase] = time.perf_counter() - t
            run.timing["total"] = time.perf_counter() - started  # this session's, up to the report's rollouts
            run.record_time()
            report = run.report(statuses, done, resamples)  # the rollouts of every row planned so far, the report
    finally:
        run.ledger.close()
    return report


PUBLISHED = ("report.json", "report.md", "success_Q1.png", "success_Q2.png", "controls_Q1.png", "controls_Q2.png",
             "timing.json", "rollouts/episodes.jsonl", "official/episodes.jsonl")  # fmt: skip


def publish(output: Path, target: Path = COMMITTED_REPORT.parent, allow_exploratory: bool = False) -> list[str]:
    """Copies a run's report, plots and per-episode logs from `output` into `target` (`docs/results/experiment`, to
    be committed), replacing what `target` held all at once; returns the files copied. Refuses a folder without a
    report, and an exploratory one (`make demo`'s, a `--tiny` run) unless `allow_exploratory`: only the
    pre-registered run is published, whatever phases it has done (the report says which)."""
    import shutil

    report_file = output / "report.json"
    if not report_file.is_file():
        raise ValueError(f"{output} holds no report.json: run the experiment first")
    if json.loads(report_file.read_text()).get("exploratory") and not allow_exploratory:
        raise ValueError(f"{report_file} is exploratory: only the pre-registered run is published to {target}")
    copied = []
    with staged_directory(target) as staging:
        for name in PUBLISHED:
            if (output / name).is_file():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(output / name, staging / name)
                copied.append(name)
    return copied


def planned_counts(values: dict[str, dict[str, Any]]) -> dict[str, int]:
    """What a full run of `values` (per question) trains and plays: models, tuning runs, adapters, rollouts."""
    questions = list(values.values())
    first = questions[0]
    pretrain = sorted({p for v in questions for p in v["seeds"]["pretrain"]})
    episodes = len(test_conditions(first))
    adapters = sum(2 * len(trainings(v)) for v in questions)
    trained = sum(
        len([c for c in v["controls"] if c in TRAINED_CONTROLS]) * len(trainings(v, True)) for v in questions
    )
    inference = sum(
        len([c for c in v["controls"] if c in INFERENCE_CONTROLS]) * len(trainings(v, True)) for v in questions
    )
    cnn = len(first["reference"]["cnn"]["seeds"])
    # The teacher of a pretraining seed is one model for every question (same data and settings).
    policies = len(pretrain) * (1 + len(questions)) + adapters + trained + inference + cnn
    primary = len(pretrain) * (1 + len(questions)) + adapters
    return {
        "models": len(pretrain) * (1 + len(questions)),
        "tuning": 2 * len(questions),
        # The tuning's winner at its seeds is the primary adapter at those seeds: trained once.
        "adapter trainings (tuning, primary, controls)": adapters
        + trained
        + sum(len(tuning_candidates(v, m)) - 1 for v in questions for m in ("ckt", "lora")),
        "rollouts": policies * episodes,
        "official episodes": primary * first["official_liberoplus"]["sample"],
    }


def status(output: Path, values: dict[str, dict[str, Any]], snapshot: Path | None = None) -> list[str]:
    """One line per stage: what the folder holds against what the full run plans (nothing is computed); with
    `snapshot`, a last line on what of it that snapshot lacks."""
    from peft_ckt.libero.records import read_records

    cache = output / "cache"

    def folders(name: str, marker: str) -> int:
        root = cache / name
        return sum(1 for f in root.iterdir() if (f / marker).is_file()) if root.is_dir() else 0

    def adapters() -> int:
        root = cache / "adapters"
        if not root.is_dir():
            return 0
        return sum(
            1 for f in root.iterdir() if (f / "adapter_config.json").is_file() or (f / "model.safetensors").is_file()
        )

    def episodes(name: str) -> int:
        log = output / name / "episodes.jsonl"
        return len(read_records(log)) if log.is_file() else 0

    planned = planned_counts(values)
    groups = collection_groups(values)
    have = {
        "demonstration sets": (folders("data", "meta/episodes.jsonl"), len(groups)),
        "models": (folders("models", "model.safetensors"), planned["models"]),
        "tuning": (
            len(list((cache / "tuning").glob("*.json"))) if (cache / "tuning").is_dir() else 0,
            planned["tuning"],
        ),
        "adapter trainings (tuning, primary, controls)": (
            adapters(),
            planned["adapter trainings (tuning, primary, controls)"],
        ),
        "rollouts": (episodes("rollouts"), planned["rollouts"]),
        "official episodes": (episodes("official"), planned["official episodes"]),
    }
    lines = [f"{name}: {done}/{total}" for name, (done, total) in have.items()]
    report = output / "report.json"
    if report.is_file():
        lines.append(f"report: phases done {json.loads(report.read_text()).get('phases_done')}")
    if (output / "timing.json").is_file():
        sessions = json.loads((output / "timing.json").read_text())["sessions"]
        hours = sum(s["seconds"].get("total", 0.0) for s in sessions) / 3600
        lines.append(f"wall time so far: {hours:.1f} h over {len(sessions)} session(s)")
    if snapshot is not None and cache.is_dir():
        from .progress import pending

        behind = pending(output, snapshot)
        listed = ", ".join(behind[:4]) + (f" and {len(behind) - 4} more" if len(behind) > 4 else "")
        lines.append(f"not yet in the snapshot {snapshot}: {len(behind)} unit(s)" + (f": {listed}" if behind else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.libero_transfer.experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--questions", default="Q1,Q2", help="Comma-separated questions to run (Q1, Q2).")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"Comma-separated phases of {PHASES}.")
    parser.add_argument("--output", default="outputs/experiment", help="Report folder (cache under OUTPUT/cache).")
    parser.add_argument("--workers", type=int, default=2, help="Simulation worker processes.")
    parser.add_argument(
        "--train-workers", type=int, default=None,
        help="Adapter trainings at once, one thread each (default: --workers; 1 trains them in this process).",
    )  # fmt: skip
    parser.add_argument("--exploratory", action="store_true", help="Allow settings other than the registered ones.")
    parser.add_argument("--tiny", action="store_true", help="Toy counts through every stage (needs --exploratory).")
    parser.add_argument("--set", default=None, help="JSON merged into the registered values (needs --exploratory).")
    parser.add_argument("--demo", action="store_true", help="`make demo`: one seed of Q1's primary comparison.")
    parser.add_argument("--quick", action="store_true", help="With --demo: the same at toy counts.")
    parser.add_argument(
        "--pretrain-teacher", action="store_true",
        help="With --demo: pretrain the teacher here (~15 min more) rather than load the committed one.",
    )  # fmt: skip
    parser.add_argument(
        "--status",
        action="store_true",
        help="Print what --output holds against the plan, and what of it the snapshot lacks; run nothing.",
    )
    parser.add_argument(
        "--publish", action="store_true",
        help="Copy --output's report, plots and episode logs into docs/results/experiment (to commit); run nothing.",
    )  # fmt: skip
    parser.add_argument(
        "--publish-for-demo", action="store_true",
        help=f"Copy --output's teacher at pretraining seed 0 and its tuning into docs/results/"
        f"{COMMITTED_TEACHER.parent.name} (to commit: what `make demo` takes from the experiment); run nothing.",
    )  # fmt: skip
    parser.add_argument(
        "--snapshot", default=None, metavar="DIR",
        help="Copy --output's finished work (demonstrations, models, adapters, tuning, episode logs, time ledger) into "
        "DIR, to commit, so that the run resumes on another machine; run nothing. Safe while the run goes on.",
    )  # fmt: skip
    parser.add_argument(
        "--restore", default=None, metavar="DIR",
        help="Before running, copy into --output what the snapshot DIR holds and --output lacks.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    overrides: dict[str, Any] = {}
    if args.tiny:
        overrides = json.loads(json.dumps(TINY))
    if args.set:
        try:
            from .plan import _merge

            _merge(overrides, json.loads(args.set))
        except json.JSONDecodeError as error:
            parser.error(f"--set is not JSON: {error}")
    if args.quick and not args.demo:
        parser.error("--quick goes with --demo")
    if args.pretrain_teacher and not args.demo:
        parser.error("--pretrain-teacher goes with --demo (the experiment always pretrains its teachers)")
    if args.demo:
        if overrides:
            parser.error("--demo has its own settings: drop --tiny / --set")
        # The demo is one seed of the registered Q1 comparison: exploratory by construction, labelled so.
        overrides = json.loads(json.dumps(DEMO_QUICK if args.quick else DEMO))
        args.exploratory, args.questions, args.phases = True, "Q1", "primary"
        if args.output == parser.get_default("output"):
            args.output = "outputs/demo-quick" if args.quick else "outputs/demo"
    if overrides and not args.exploratory:
        parser.error("--tiny and --set change the registered settings: add --exploratory")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1; got {args.workers}")
    if args.train_workers is not None and args.train_workers < 1:
        parser.error(f"--train-workers must be >= 1; got {args.train_workers}")
    if args.snapshot and args.restore:
        parser.error("--snapshot copies out of --output, --restore into it: give one")
    if args.snapshot:
        from .progress import snapshot

        try:
            copied = snapshot(Path(args.output), Path(args.snapshot))
        except ValueError as error:
            parser.exit(2, f"error: {error}\n")
        print(f"copied {len(copied)} new or changed unit(s) of {args.output} into {args.snapshot}")
        for unit in copied:
            print(f"  {unit}")
        return 0
    if args.restore:
        from .progress import restore

        try:
            restored = restore(Path(args.restore), Path(args.output))
        except ValueError as error:
            parser.exit(2, f"error: {error}\n")
        logger.info(f"restored {len(restored)} unit(s) of the snapshot {args.restore} into {args.output}")
    if args.publish_for_demo:
        try:
            target = publish_teacher(Path(args.output))
            tuning = publish_tuning(Path(args.output))
        except ValueError as error:
            parser.exit(2, f"error: {error}\n")
        print(f"published the teacher at pretraining seed 0 into {target} and the tuning into {tuning}")
        return 0
    if args.publish:
        try:
            copied = publish(Path(args.output))
        except ValueError as error:
            parser.exit(2, f"error: {error}\n")
        print(f"published {', '.join(copied)} into {COMMITTED_REPORT.parent}")
        return 0
    if args.status:
        questions = [q.strip() for q in args.questions.split(",") if q.strip()]
        snapshot = Path(args.restore) if args.restore else COMMITTED_SNAPSHOT
        values = {q: question_values(q, overrides) for q in questions}
        for line in status(Path(args.output), values, snapshot if (snapshot / "cache").is_dir() else None):
            print(line)
        return 0
    try:
        report = run_experiment(
            [q.strip() for q in args.questions.split(",") if q.strip()], args.output,
            [p.strip() for p in args.phases.split(",") if p.strip()], args.exploratory, overrides, args.workers,
            demo=args.demo, train_workers=args.train_workers,
            teacher=COMMITTED_TEACHER if args.demo and not args.pretrain_teacher else None,
        )  # fmt: skip
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    for question, result in report.get("questions", {}).items():
        print(f"{question}: primary decision {result['primary'].get('decision')}")
    print(f"report: {Path(args.output) / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
