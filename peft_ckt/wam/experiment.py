"""The LIBERO transfer experiment: can a frozen student WAM gain a frozen teacher WAM's robustness through CKT?

`make demo` (`python examples/libero_transfer.py`) runs, with progress bars, everything cached under one folder and
keyed by its settings (a second run skips what is done; an interrupted one resumes):

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

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..atomic import atomic_path, commit_directory, write_json, write_text

PERTURBATION_KINDS = ("camera", "robot", "language", "light", "background", "noise", "layout")
POLICIES = ("teacher", "student", "student+lora", "student+ckt")
ABLATIONS = ("no_specialized", "no_generalized", "no_auxiliary_loss")  # `make demo ABLATIONS=1`


def ablation_policy(name: str) -> str:
    return f"student+ckt ({name.replace('_', ' ')})"


@dataclass
class DemoSettings:
    """Everything that decides the experiment's result (the cache keys hash the parts each stage depends on)."""

    suite: str = "libero_object"
    image_size: int = 32
    image_stride: int = 8  # cameras rendered every 8th control step during collection (rendering dominates)
    severity: int = 3
    seed: int = 0
    # Data: init states 0.. for training, `heldout_init` for the offline set, `eval_init_offset..` for rollouts.
    teacher_tasks: tuple[int, ...] = (0, 1, 2, 3)
    teacher_clean_episodes: int = 3
    teacher_perturbed_episodes: int = 2
    student_episodes: int = 5
    # Tasks of the student's narrow pretraining: by default the other six libero_object tasks, so the evaluated
    # tasks, their objects' words and their perturbations are what the teacher knows and the student does not.
    # (): the evaluated tasks, on the first `student_episodes` of the teacher's clean demonstrations (measured in
    # docs/wam.md: the student then needs nothing from the teacher on the clean target set).
    student_tasks: tuple[int, ...] = (4, 5, 6, 7, 8, 9)
    target_episodes: int = 3
    heldout_tasks: tuple[int, ...] = (0, 1, 2, 3)
    heldout_init: int = 45
    # Models.
    teacher_layers: int = 6
    teacher_heads: int = 3
    student_layers: int = 4
    student_heads: int = 2
    head_dim: int = 32
    text_dim: int = 32
    future_pool: int = 2  # the generated future view at image_size / 2 (WorldActionModel's future_pool)
    future_residual: bool = True  # the future view generated as its change from the current one
    # Training.
    batch_size: int = 32
    teacher_steps: int = 1200
    student_steps: int = 1200
    adapter_steps: int = 1200
    teacher_lr: float = 1.5e-3
    student_lr: float = 1.5e-3
    ckt_lr: float = 4e-3
    lora_lr: float = 4e-3
    # CKT (paper defaults scaled to the small widths) and LoRA.
    # The teacher block CKT reads (-1: the middle one, the paper's l* = L/2, here block 2 of 6). Block 4 and K=16
    # measured better on the held-out set (docs/wam.md).
    teacher_layer: int = 4
    num_context_tokens: int = 16
    num_experts: int = 4
    top_k: int = 2
    bottleneck_dim: int = 64
    # The paper's dropouts (0.1) kept CKT from fitting the 231 target samples at this width (docs/wam.md): off.
    adapter_dropout: float = 0.0  # on the adapters' projected teacher tokens
    attention_dropout: float = 0.0  # on the learnable queries' attention weights
    # Student modules CKT trains and saves beside its bank (peft's `modules_to_save`), by name suffix. The default
    # trains the key and value projections through which the student's cross-attention reads its conditioning, and so
    # the context: this student's were trained on six other tasks' words only, and a frozen reading that narrow keeps
    # CKT from fitting the target set (docs/wam.md, "Why CKT underfits"). () is the paper's entirely frozen student.
    ckt_modules_to_save: tuple[str, ...] = ("attn2.to_k", "attn2.to_v")
    lora_rank: int = 0  # 0: the smallest rank whose budget is at least CKT's
    # Seed of the adapters' initial weights, batches and noise: another value retrains both adapters from scratch
    # on the same student, teacher and data (how much a retraining moves the rollouts).
    adapter_seed: int = 0
    # Evaluation.
    eval_tasks: tuple[int, ...] = (0, 1, 2, 3)
    eval_episodes: int = 2
    eval_init_offset: int = 40
    eval_max_steps: int = 200  # the longest success in 768 recorded rollouts took 192 steps; failures run to it
    n_action_steps: int = 8
    workers: int = 2
    heldout_samples: int = 512
    # The paper's CKT ablations (names of `peft_ckt.ablations.PAPER_ABLATIONS`) trained and evaluated beside the rest.
    ablations: tuple[str, ...] = ()

    @classmethod
    def quick(cls) -> DemoSettings:
        """The same steps at the smallest counts that still exercise every stage (`make demo QUICK=1`)."""
        return cls(
            teacher_tasks=(0,),
            teacher_clean_episodes=1,
            teacher_perturbed_episodes=1,
            student_episodes=1,
            student_tasks=(1,),
            target_episodes=1,
            heldout_tasks=(0,),
            teacher_steps=100,
            student_steps=60,
            adapter_steps=40,
            eval_tasks=(0,),
            eval_episodes=1,
            eval_max_steps=80,
            heldout_samples=128,
        )

    def key(self, *names: str) -> str:
        values = {name: getattr(self, name) for name in names}
        return hashlib.sha1(json.dumps(values, sort_keys=True, default=list).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- small utilities
def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (`(0, 1)` for no trials)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


_write_text = write_text
_write_json = write_json


def _log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ----------------------------------------------------------------------------- 1. data
def _collect_named(named_job: tuple[str, Any]) -> dict[str, Any]:
    """One expert episode in a worker, tagged with the dataset it belongs to (module level: sent to workers)."""
    from ..libero.collect import collect_episode

    name, job = named_job
    return {**collect_episode(job), "dataset": name}


# The settings every demonstration set is collected under (part of each data folder's and each stage's key).
COLLECTION_FIELDS = ("suite", "image_size", "image_stride", "severity", "seed")


def collect_all(settings: DemoSettings, cache: Path, progress: bool = True) -> dict[str, Path]:
    """The demonstration sets (teacher clean, teacher perturbed, held-out and, with `student_tasks`, the student's),
    collected in one worker pool.

    All the episodes of a task run back to back, so each worker builds each task's environment once (building one
    costs ~9 s, as much as two episodes). Each set is written into a temporary folder and renamed when complete.
    """
    from ..libero.collect import CollectJob
    from ..libero.dataset import LeRobotDatasetWriter
    from ..libero.env import CAMERAS
    from ..libero.parallel import run_jobs

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
    key = s.key(*COLLECTION_FIELDS)
    finals = {}
    for name, (tasks, episodes, kinds, offset) in specs.items():
        spec = "all" if kinds == list(PERTURBATION_KINDS) else ",".join(kinds)
        digest = hashlib.sha1((key + json.dumps([list(tasks), episodes, spec, offset])).encode()).hexdigest()[:10]
        finals[name] = cache / "data" / f"{name}-{digest}"
    todo = [name for name, path in finals.items() if not (path / "meta" / "episodes.jsonl").is_file()]
    for name in finals:
        if name not in todo:
            _log(f"{name} demonstrations: cached ({finals[name]})")
    if not todo:
        return finals
    jobs = []
    for name in todo:
        tasks, episodes, kinds, offset = specs[name]
        for task in tasks:
            for kind in kinds:
                for k in range(episodes):
                    job = CollectJob(
                        s.suite, task, offset + k, kind, s.severity, s.image_size, s.seed, False, None, s.image_stride
                    )
                    jobs.append((name, job))
    jobs.sort(key=lambda item: item[1].task_id)  # stable: each task's episodes together
    writers = {}
    for name in todo:
        partial = finals[name].with_name(finals[name].name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        writers[name] = LeRobotDatasetWriter(partial, image_keys=tuple(CAMERAS), image_size=(s.image_size,) * 2)
    _log(f"collecting {len(jobs)} scripted demonstrations ({', '.join(todo)}) with {s.workers} worker(s)")
    start = time.perf_counter()
    kept = dict.fromkeys(todo, 0)
    for result in run_jobs(_collect_named, jobs, s.workers, desc="collect demonstrations", progress=progress):
        if result["images"] is None:
            continue  # the expert failed: not a demonstration
        kept[result["dataset"]] += 1
        writers[result["dataset"]].add_episode(
            result["states"],
            result["actions"],
            result["images"],
            task=result["task"],
            extra={
                key: result[key] for key in ("success", "suite", "task_id", "init_index", "perturbation", "severity")
            }
            | {"image_stride": s.image_stride},
        )
    for name in todo:
        writers[name].finalize()
        commit_directory(finals[name].with_name(finals[name].name + ".partial"), finals[name])
    attempted = {name: sum(1 for n, _ in jobs if n == name) for name in todo}
    _log(
        "kept "
        + ", ".join(f"{name} {kept[name]}/{attempted[name]}" for name in todo)
        + f" in {time.perf_counter() - start:.0f} s"
    )
    return finals


def split_datasets(settings: DemoSettings, data: dict[str, Path]) -> dict[str, Any]:
    """Teacher (broad), student (narrow), target (small, clean) and held-out episode lists."""
    from .data import read_episodes

    clean = read_episodes(data["clean"])
    perturbed = read_episodes(data["perturbed"])
    heldout = read_episodes(data["heldout"])
    first = min(e["init_index"] for e in clean)
    student = (
        read_episodes(data["student"])
        if "student" in data
        else [e for e in clean if e["init_index"] < first + settings.student_episodes]
    )
    return {
        "teacher": clean + perturbed,
        "student": student,
        "target": [e for e in clean if e["init_index"] < first + settings.target_episodes],
        "heldout": heldout,
    }


# ----------------------------------------------------------------------------- 2. models
def build_wam(settings: DemoSettings, role: str, episodes: list[dict[str, Any]]):
    from .data import ChunkDataset
    from .modeling import WorldActionModel
    from .tokenizer import build_vocabulary

    chunk = (settings.image_size // 8) ** 2
    stats = ChunkDataset(episodes, chunk_size=chunk).statistics()
    torch.manual_seed(settings.seed + (1 if role == "teacher" else 2))
    teacher = role == "teacher"
    return WorldActionModel(
        backbone="wan" if teacher else "cosmos",
        vocabulary=build_vocabulary(e["task"] for e in episodes),
        image_size=settings.image_size,
        pixel_block=8,
        chunk_size=chunk,
        num_layers=settings.teacher_layers if teacher else settings.student_layers,
        num_attention_heads=settings.teacher_heads if teacher else settings.student_heads,
        attention_head_dim=settings.head_dim,
        text_dim=settings.text_dim,
        future_pool=settings.future_pool,
        future_residual=settings.future_residual,
        **stats,
    )


def episodes_key(settings: DemoSettings, episodes: list[dict[str, Any]]) -> str:
    """Names exactly the demonstrations a stage trains on (with how they were collected), so a stage's cache key
    changes with its own data only: a new student set does not retrain the teacher, a new target count does retrain
    the adapters."""
    names = sorted(
        (e.get("task_id"), e.get("init_index"), e.get("perturbation"), e["task"], len(e["action"])) for e in episodes
    )
    collection = settings.key(*COLLECTION_FIELDS)
    return hashlib.sha1(json.dumps([collection, names], default=str).encode()).hexdigest()[:8]


def pretrain_stage(settings: DemoSettings, cache: Path, role: str, episodes: list[dict[str, Any]]):
    """Pretrain (or load the cached) teacher / student WAM; returns `(model, training result dict)`."""
    from .data import ChunkDataset
    from .modeling import WorldActionModel
    from .training import train_wam

    fields = [
        f"{role}_layers",
        f"{role}_heads",
        "head_dim",
        "text_dim",
        "future_pool",
        "future_residual",
        "batch_size",
        f"{role}_steps",
        f"{role}_lr",
    ]
    final = (
        cache / "models" / f"{role}-{settings.key(*fields, 'seed', 'image_size')}-{episodes_key(settings, episodes)}"
    )
    if (final / "model.safetensors").is_file():
        _log(f"{role}: cached ({final})")
        return WorldActionModel.from_pretrained(final), json.loads((final / "training.json").read_text())
    model = build_wam(settings, role, episodes)
    dataset = ChunkDataset(episodes, chunk_size=model.chunk_size)
    params = sum(p.numel() for p in model.parameters())
    _log(
        f"{role}: pretraining a {model.backbone_type} WAM ({params / 1e6:.2f}M parameters) on {dataset.num_episodes} "
        f"demonstrations ({len(dataset)} samples)"
    )
    result = train_wam(
        model,
        model,
        dataset,
        steps=getattr(settings, f"{role}_steps"),
        batch_size=settings.batch_size,
        learning_rate=getattr(settings, f"{role}_lr"),
        seed=settings.seed,
        checkpoint=cache / "models" / f"{final.name}.ckpt",
        desc=f"pretrain {role}",
    )
    record = {
        "losses": result.losses,
        "action_losses": result.action_losses,
        "seconds": result.seconds,
        "parameters": params,
        "episodes": dataset.num_episodes,
        "samples": len(dataset),
    }
    _save_stage(model, record, final)
    return WorldActionModel.from_pretrained(final), record


def _save_stage(model, record: dict[str, Any], final: Path) -> None:
    """`save_pretrained` + `training.json` into a temporary folder, renamed into place when complete."""
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    _write_json(partial / "training.json", record)
    commit_directory(partial, final)


def teacher_layer_path(settings: DemoSettings, teacher) -> str:
    """Dotted path of the teacher block CKT reads (`settings.teacher_layer`, or the middle block)."""
    if settings.teacher_layer < 0:
        return teacher.middle_layer()
    if settings.teacher_layer >= teacher.num_layers:
        raise ValueError(f"teacher_layer={settings.teacher_layer}: the teacher has {teacher.num_layers} blocks")
    return f"{teacher.block_prefix}.{settings.teacher_layer}"


def ckt_config(settings: DemoSettings, teacher, student):
    from ..config import CKTConfig

    # peft skips a `modules_to_save` name that matches nothing: a typo would train the frozen-student CKT unnoticed.
    names = [name for name, _ in student.named_modules()]
    for suffix in settings.ckt_modules_to_save:
        if not any(name == suffix or name.endswith(f".{suffix}") for name in names):
            raise ValueError(f"ckt_modules_to_save: no student module is named {suffix!r} or ends with '.{suffix}'")

    return CKTConfig(
        teacher=teacher,
        teacher_layer=teacher_layer_path(settings, teacher),
        context_kwarg="encoder_hidden_states",
        num_context_tokens=settings.num_context_tokens,
        num_experts=settings.num_experts,
        top_k=settings.top_k,
        bottleneck_dim=settings.bottleneck_dim,
        router_hidden_dim=settings.bottleneck_dim,
        num_attention_heads=2,
        adapter_dropout=settings.adapter_dropout,
        attention_dropout=settings.attention_dropout,
        teacher_hidden_size=teacher.width,
        student_hidden_size=student.text_dim,
        modules_to_save=list(settings.ckt_modules_to_save) or None,
    )


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def lora_config(settings: DemoSettings, student, budget: int):
    """LoRA on every attention and MLP projection of the student's blocks, at the smallest rank whose trainable
    count is at least `budget` (unless `lora_rank` is set)."""
    from peft import LoraConfig

    linears = [
        m
        for name, m in student.backbone.transformer_blocks.named_modules()
        if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in LORA_TARGETS)
    ]
    per_rank = sum(m.in_features + m.out_features for m in linears)
    rank = settings.lora_rank or max(1, math.ceil(budget / per_rank))
    return LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, lora_dropout=0.0)


def adapter_stage(settings, cache, kind, teacher, student_path, target_episodes, budget=None, ablation: str = "full"):
    """Train (or load) the CKT or LoRA adapter on the frozen student; returns `(folder, record)`.

    `ablation` (CKT only) names one of `peft_ckt.ablations.PAPER_ABLATIONS` ("full": the method as specified).
    """
    from peft import get_peft_model

    import peft_ckt  # noqa: F401

    from .data import ChunkDataset
    from .modeling import WorldActionModel
    from .training import train_wam

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
    tag = kind if ablation == "full" else f"{kind}-{ablation}"
    label = f"student+{kind}" if ablation == "full" else ablation_policy(ablation)
    data = episodes_key(settings, target_episodes)
    final = cache / "adapters" / f"{tag}-{settings.key(*fields)}-{data}-{Path(student_path).name}"
    if (final / "adapter_config.json").is_file():
        _log(f"{label}: cached ({final})")
        return final, json.loads((final / "training.json").read_text())
    student = WorldActionModel.from_pretrained(student_path)
    # The adapter's initial weights come from the global generator: seeded here, so that they do not depend on what
    # this process built or loaded before (a cached teacher, another adapter trained first).
    adapter_seed = settings.seed + 1 + 1_000 * settings.adapter_seed
    torch.manual_seed(adapter_seed)
    if kind == "ckt":
        from ..ablations import ablation_config

        config = ablation_config(ckt_config(settings, teacher, student), ablation)
    else:
        config = lora_config(settings, student, budget or 0)
    model = get_peft_model(student, config)
    trainable, total = model.get_nb_trainable_parameters()
    dataset = ChunkDataset(target_episodes, chunk_size=student.chunk_size)
    _log(
        f"{label}: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%), "
        f"{dataset.num_episodes} target demonstrations ({len(dataset)} samples)"
    )
    result = train_wam(
        model,
        student,
        dataset,
        steps=settings.adapter_steps,
        batch_size=settings.batch_size,
        learning_rate=getattr(settings, f"{kind}_lr"),
        seed=adapter_seed,
        teacher=teacher if kind == "ckt" else None,
        checkpoint=cache / "adapters" / f"{final.name}.ckpt",
        desc=f"train {label}",
    )
    record = {
        "losses": result.losses,
        "action_losses": result.action_losses,
        "seconds": result.seconds,
        "trainable_params": trainable,
        "total_params": total,
        "expert_counts": result.expert_counts,
        "rank": getattr(config, "r", None),
    }
    _save_stage(model, record, final)
    return final, record


# ----------------------------------------------------------------------------- 4. rollouts
def evaluate_policies(settings: DemoSettings, policies: dict[str, str], out: Path, progress: bool = True):
    """Every policy on every (task, condition, init state); resumable through `episodes.jsonl`."""
    from ..libero.evaluation import EpisodeJob
    from ..libero.parallel import run_jobs
    from ..libero.records import open_episode_log

    # Through JSON, as it is stored (tuples become lists), so that a resumed run recognises its own config. The
    # policies are not part of it: an episode is reused when its policy folder (named by the policy's settings) is
    # still one of the policies, so adding the ablation rows keeps the episodes of the others. Nor are the tasks and
    # the episode count: every row names its task and init state, so `--eval-episodes 4` after a 2-episode run runs
    # the 2 new init states only, and the report counts the episodes the settings ask for.
    config = json.loads(json.dumps({"settings": _eval_key(settings)}))
    recorded, log = open_episode_log(out, config, "auto")
    # Policies are matched by their resolved folder, so a relative and an absolute `--cache` find the same episodes.
    specs = {os.path.realpath(spec): spec for spec in policies.values()}
    by_key = {os.path.realpath(spec): name for name, spec in policies.items()}
    done = {(os.path.realpath(r["policy"]), r["task_id"], r["perturbation"], r["init_index"]): r for r in recorded}
    conditions = ["none", *PERTURBATION_KINDS]
    jobs = []
    for task in settings.eval_tasks:
        for key, spec in specs.items():
            for kind in conditions:
                for k in range(settings.eval_episodes):
                    init = settings.eval_init_offset + k
                    if (key, task, kind, init) in done:
                        continue
                    jobs.append(
                        EpisodeJob(
                            suite=settings.suite,
                            task_id=task,
                            init_index=init,
                            perturbation=kind,
                            severity=settings.severity,
                            policy=spec,
                            image_size=settings.image_size,
                            seed=settings.seed,
                            max_steps=settings.eval_max_steps,
                            video_dir=None,
                            n_action_steps=settings.n_action_steps,
                        )
                    )
    with log:
        if jobs:
            _log(f"evaluation: {len(jobs)} episode(s) to run ({len(done)} already recorded)")
            for result in run_jobs(_run_episode, jobs, settings.workers, desc="evaluate", progress=progress):
                key = os.path.realpath(result["policy"])
                row = {**result, "policy_name": by_key[key]}
                done[(key, row["task_id"], row["perturbation"], row["init_index"])] = row
                log.append(row)
    wanted = {
        (task, settings.eval_init_offset + k) for task in settings.eval_tasks for k in range(settings.eval_episodes)
    }
    return [
        {**row, "policy_name": by_key[key]}
        for (key, task, _, init), row in done.items()
        if key in by_key and (task, init) in wanted
    ]


def _run_episode(job) -> dict[str, Any]:
    """One rollout in a worker, with the policy it ran (module level: sent to worker processes)."""
    from ..libero.evaluation import run_episode

    return {**asdict(run_episode(job)), "policy": job.policy}


def _eval_key(settings: DemoSettings) -> dict[str, Any]:
    names = [
        "suite",
        "severity",
        "seed",
        "image_size",
        "eval_init_offset",
        "eval_max_steps",
        "n_action_steps",
    ]
    return {n: getattr(settings, n) for n in names}


def success_cell(wins: int, trials: int) -> dict[str, Any]:
    """A success count as the report stores it: rate, counts and 95% Wilson interval."""
    low, high = wilson_interval(wins, trials)
    return {
        "success_rate": wins / trials if trials else None,
        "successes": wins,
        "episodes": trials,
        "ci95": [round(low, 4), round(high, 4)],
    }


# The differences the experiment is about: what CKT adds to the student, and CKT against LoRA.
COMPARISONS = (("student+ckt", "student"), ("student+ckt", "student+lora"), ("student+lora", "student"))


def compare_successes(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two success cells side by side: the difference of their rates and the two-sided p-value of Fisher's exact
    test (is a difference this large likely when both policies succeed equally often?)."""
    from scipy.stats import fisher_exact

    a, n, b, m = first["successes"], first["episodes"], second["successes"], second["episodes"]
    if not n or not m:
        return {"difference": None, "p_value": None}
    return {"difference": a / n - b / m, "p_value": float(fisher_exact([[a, n - a], [b, m - b]]).pvalue)}


def compare_policies(policies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`COMPARISONS` on the clean and the perturbed episodes, keyed `"A vs B"` (pairs with a missing policy skipped)."""
    return {
        f"{a} vs {b}": {
            split: compare_successes(policies[a][split], policies[b][split]) for split in ("clean", "perturbed")
        }
        for a, b in COMPARISONS
        if a in policies and b in policies
    }


def comparison_lines(policies: dict[str, dict[str, Any]], comparisons: dict[str, dict[str, Any]]) -> list[str]:
    """The comparisons as a markdown table (perturbed episodes: the LIBERO-Plus total)."""
    lines = [
        "| Perturbed episodes | successes | difference | Fisher's exact test, two-sided p |",
        "|---|---:|---:|---:|",
    ]
    for a, b in COMPARISONS:
        pair = f"{a} vs {b}"
        cell = comparisons.get(pair, {}).get("perturbed")
        if cell is None or cell["p_value"] is None:
            continue
        first, second = policies[a]["perturbed"], policies[b]["perturbed"]
        lines.append(
            f"| {pair} | {first['successes']}/{first['episodes']} vs {second['successes']}/{second['episodes']} | "
            f"{100 * cell['difference']:+.1f} points | {format_p_value(cell['p_value'])} |"
        )
    return lines


def format_p_value(p: float) -> str:
    """Three decimals, or an upper bound where three decimals would print 0.000."""
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def summarize_rollouts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def rate(subset):
        return success_cell(sum(bool(r["success"]) for r in subset), len(subset))

    perturbed = [r for r in rows if r["perturbation"] != "none"]
    return {
        "success_rate": rate(perturbed)["success_rate"],  # the LIBERO-Plus total: pooled over perturbed episodes
        "perturbed": rate(perturbed),
        "clean": rate([r for r in rows if r["perturbation"] == "none"]),
        "by_perturbation": {
            k: rate([r for r in rows if r["perturbation"] == k]) for k in ["none", *PERTURBATION_KINDS]
        },
    }


# ----------------------------------------------------------------------------- 5. offline metrics
@torch.no_grad()
def offline_metrics(models: dict[str, Any], heldout: dict[str, Any], train_stats, settings: DemoSettings) -> dict:
    """Held-out errors of every model and of trivial predictors, scored the same way (same samples, same noise).

    - `action_mse`: the action chunk the policy executes (5 Euler steps from fixed noise) against the demonstration,
      in action units.
    - `future_frame_mse`: the predicted agent view at t + 16 against the real one, in pixels in [0, 1] at the resolution the
      WAMs generate it at (every row pooled to it), from each
      model's one-step estimate at noise level 1 (the conditional mean: the fair point prediction to put beside the
      mean frame; a sharp sample loses to the mean in squared error even when it is plausible).

    `heldout` maps a split name (`clean`, `perturbed`) to a `ChunkDataset`. Trivial predictors: `zeros` (no motion;
    the mean colour of the training frames), `mean` (the training set's mean action chunk and mean future frame) and,
    for the frame, `copy` (the current agent view).
    """
    from .data import held_out_batches
    from .modeling import sample

    results: dict[str, dict[str, dict[str, float]]] = {}
    mean_action = torch.tensor(train_stats["mean_action"])
    mean_colour = torch.tensor(train_stats["mean_colour"]).view(1, 3, 1, 1)
    mean_frame = train_stats["mean_frame"]

    def like(batch):
        return batch["future.images.image"].permute(0, 3, 1, 2).float()

    def noise(batch, index, wam):
        generator = torch.Generator().manual_seed(10_000 + index)
        return torch.randn(wam.noise_shape(len(batch["action"])), generator=generator)

    # Every frame (predicted, trivial and true) is scored at the resolution the WAMs generate the future view at.
    frame_size = min(entry["wam"].future_size for entry in models.values())

    def pooled(frames):
        return torch.nn.functional.interpolate(frames, size=(frame_size, frame_size), mode="area")

    def run_split(split: str, dataset) -> None:
        batches = list(held_out_batches(dataset, max_samples=settings.heldout_samples, batch_size=128))
        truths = [pooled(b["future.images.image"].permute(0, 3, 1, 2).float().div(255.0)) for b in batches]

        def score(name, predict):
            action_err = frame_err = 0.0
            count = 0
            for index, (batch, truth) in enumerate(zip(batches, truths)):
                actions, frames = predict(batch, index)
                if actions is not None:
                    action_err += (actions - batch["action"]).pow(2).mean(dim=(1, 2)).sum().item()
                frame_err += (pooled(frames) - truth).pow(2).mean(dim=(1, 2, 3)).sum().item()
                count += len(batch["action"])
            row = results.setdefault(name, {}).setdefault(split, {})
            row["action_mse"] = action_err / count if actions is not None else None
            row["future_frame_mse"] = frame_err / count

        score("zeros", lambda b, i: (torch.zeros_like(b["action"]), mean_colour.expand_as(like(b))))
        score("mean", lambda b, i: (mean_action.expand_as(b["action"]), mean_frame.expand_as(like(b))))
        score("copy", lambda b, i: (None, b["observation.images.image"].permute(0, 3, 1, 2).float().div(255.0)))
        for name, entry in models.items():
            model, wam, teacher = entry["model"], entry["wam"], entry.get("teacher")

            def predict(batch, index, model=model, wam=wam, teacher=teacher):
                extra = {}
                if teacher is not None:
                    extra["ckt_context"] = model.encode_teacher(teacher.teacher_inputs(batch))
                start = noise(batch, index, wam)
                executed = sample(model, wam, batch, initial_noise=start, **extra)
                estimate = sample(model, wam, batch, num_steps=1, initial_noise=start, **extra)
                return executed["actions"], estimate["future_image"]

            score(name, predict)

    for split, dataset in heldout.items():
        run_split(split, dataset)
    return results


# ----------------------------------------------------------------------------- report
def plot_success(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["none", *PERTURBATION_KINDS, "total"]
    fig, ax = plt.subplots(figsize=(12, 4.2))
    names = list(report["policies"])
    width = 0.8 / len(names)
    colours = {"teacher": "#999999", "student": "#DD8452", "student+lora": "#55A868", "student+ckt": "#4C72B0"}
    extra = iter(["#8172B3", "#64B5CD", "#CCB974", "#C44E52"])
    for i, name in enumerate(names):
        row = report["policies"][name]
        cells = [row["by_perturbation"][c] for c in columns[:-1]] + [row["perturbed"]]
        values = [100 * (c["success_rate"] or 0) for c in cells]
        low = [v - 100 * c["ci95"][0] for v, c in zip(values, cells)]
        high = [100 * c["ci95"][1] - v for v, c in zip(values, cells)]
        x = np.arange(len(columns)) + (i - (len(names) - 1) / 2) * width
        ax.bar(
            x,
            values,
            width,
            label=name,
            color=colours.get(name) or next(extra),
            yerr=[low, high],
            capsize=2,
            error_kw={"elinewidth": 0.8, "alpha": 0.6},
        )
    ax.set_xticks(np.arange(len(columns)), ["clean", *PERTURBATION_KINDS, "total (perturbed)"], rotation=20)
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 105)
    n = report["policies"]["student"]["by_perturbation"]["none"]["episodes"]
    ax.set_title(f"LIBERO {report['settings']['suite']}: success by perturbation ({n} episodes per cell, 95% Wilson)")
    ax.legend(ncols=4, fontsize=8, loc="upper right")
    fig.tight_layout()
    _save_figure(fig, path)


def plot_training(records: dict[str, dict[str, Any]], path: Path) -> None:
    """Smoothed loss curves: pretraining, the adapters' total loss, and their action part (when recorded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_actions = any(r.get("action_losses") for n, r in records.items() if n not in ("teacher", "student"))
    fig, axes = plt.subplots(1, 3 if with_actions else 2, figsize=(15 if with_actions else 11, 3.8))

    def curve(ax, values, label):
        values = np.asarray(values)
        window = max(1, len(values) // 40)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window - 1, smooth, label=label)

    for name, record in records.items():
        pretraining = name in ("teacher", "student")
        curve(axes[0] if pretraining else axes[1], record["losses"], name)
        if with_actions and not pretraining and record.get("action_losses"):
            curve(axes[2], record["action_losses"], name)
    axes[0].set_title("pretraining (flow-matching loss)")
    axes[1].set_title("adapters on the frozen student (target set)")
    if with_actions:
        axes[2].set_title("adapters: action part of the loss")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def plot_experts(counts: list[int], heldout_counts: Optional[list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = np.arange(len(counts))
    ax.bar(x - 0.2, np.asarray(counts) / max(1, sum(counts)), 0.4, label="training (top-1)")
    if heldout_counts is not None:
        ax.bar(x + 0.2, np.asarray(heldout_counts) / max(1, sum(heldout_counts)), 0.4, label="held-out (top-1)")
    ax.set_xticks(x, [f"expert {i}" for i in x])
    ax.set_ylabel("share of samples")
    ax.set_title("CKT router: expert usage")
    ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def record_gif(settings: DemoSettings, policies: dict[str, str], rows: list[dict[str, Any]], out: Path) -> dict:
    """One episode of the student and of student+CKT under the same perturbation, side by side, as a GIF."""
    import imageio.v2 as imageio

    from ..libero.evaluation import EpisodeJob, run_episode
    from ..libero.parallel import close_cached

    def outcome(name, kind):
        return {
            (r["task_id"], r["init_index"]): r["success"]
            for r in rows
            if r["policy_name"] == name and r["perturbation"] == kind
        }

    # The perturbation where CKT gains most over the student (ties: the first), and in it the first episode that
    # student+CKT won and the student lost (else the first episode evaluated).
    gains = {
        k: sum(outcome("student+ckt", k).values()) - sum(outcome("student", k).values()) for k in PERTURBATION_KINDS
    }
    kind = max(PERTURBATION_KINDS, key=lambda k: (gains[k], -PERTURBATION_KINDS.index(k)))
    ckt, student = outcome("student+ckt", kind), outcome("student", kind)
    won = sorted(episode for episode, success in ckt.items() if success and not student.get(episode, False))
    task, init = won[0] if won else (settings.eval_tasks[0], settings.eval_init_offset)
    frames: dict[str, list[np.ndarray]] = {}
    successes = {}
    for name in ("student", "student+ckt"):
        # The evaluator's own episode, with its MP4 of the agent view, in this process.
        video_dir = out / f".gif-{name}"
        shutil.rmtree(video_dir, ignore_errors=True)
        video_dir.mkdir()
        job = EpisodeJob(
            suite=settings.suite, task_id=task, init_index=init, perturbation=kind, severity=settings.severity,
            policy=policies[name], image_size=settings.image_size, seed=settings.seed,
            max_steps=settings.eval_max_steps, video_dir=str(video_dir), n_action_steps=settings.n_action_steps,
        )  # fmt: skip
        try:
            result = run_episode(job)
        finally:
            close_cached()
        with imageio.get_reader(result.video, format="ffmpeg") as reader:
            frames[name] = [np.asarray(frame) for frame in reader][::2]
        successes[name] = result.success
        shutil.rmtree(video_dir)
    length = max(len(f) for f in frames.values())
    canvas = []
    for i in range(length):
        tiles = [np.kron(f[min(i, len(f) - 1)], np.ones((4, 4, 1), dtype=np.uint8)) for f in frames.values()]
        canvas.append(np.concatenate([tiles[0], np.full((tiles[0].shape[0], 4, 3), 255, np.uint8), tiles[1]], 1))
    path = out / "episode_student_vs_ckt.gif"
    with atomic_path(path, suffix=".gif") as tmp:
        imageio.mimsave(tmp, canvas, duration=0.1, loop=0)
    return {"file": path.name, "perturbation": kind, "task_id": task, "init_index": init, "success": successes}


def markdown_report(report: dict[str, Any]) -> str:
    def pct(cell):
        rate = cell["success_rate"]
        if rate is None:
            return "-"
        return f"{100 * rate:.0f} ({cell['successes']}/{cell['episodes']})"

    lines = [
        "# LIBERO transfer experiment: CKT from a Wan teacher WAM into a Cosmos student WAM",
        "",
        f"Suite `{report['settings']['suite']}`, evaluation tasks {list(report['settings']['eval_tasks'])}, "
        f"{report['settings']['eval_episodes']} episode(s) per task and condition, perturbation severity "
        f"{report['settings']['severity']}, the same init states and seeds for every policy. Success in % "
        "(successes/episodes); Total is pooled over the perturbed episodes (the LIBERO-Plus total), with its 95% "
        "Wilson interval.",
        "",
    ]
    trained_student_modules = report["settings"].get("ckt_modules_to_save") or ()
    if trained_student_modules:
        lines += [
            "student+ckt also trains and saves these student modules beside its bank (`modules_to_save`): "
            + ", ".join(f"`{name}`" for name in trained_student_modules)
            + "; the paper's CKT keeps the student frozen.",
            "",
        ]
    lines += [
        "| Policy | trainable | Clean | "
        + " | ".join(k.capitalize() for k in PERTURBATION_KINDS)
        + " | Total | 95% CI |",
        "|---|---:|---:|" + "---:|" * len(PERTURBATION_KINDS) + "---:|---|",
    ]
    for name, row in report["policies"].items():
        cells = [pct(row["by_perturbation"][k]) for k in ["none", *PERTURBATION_KINDS]]
        low, high = row["perturbed"]["ci95"]
        budget = f"{row['trainable_params']:,} ({row['trainable_percent']:.2f}%)"
        lines.append(
            f"| {name} | {budget} | " + " | ".join(cells) + f" | {pct(row['perturbed'])} | "
            f"{100 * low:.0f}-{100 * high:.0f} |"
        )
    if report.get("comparisons"):
        lines += ["", *comparison_lines(report["policies"], report["comparisons"])]
    lines += [
        "",
        "Offline, on a fixed held-out set of demonstrations (init state 45 of the evaluated tasks, clean and under each "
        "perturbation), every row scored on the same samples with the same sampling noise (lower is better). Action "
        "MSE: the executed chunk (5 denoising steps); future frame: pixel MSE (at the generated resolution, every row "
        "pooled to it) of the model's one-step estimate of "
        "the agent view 16 steps ahead.",
        "",
        "| Predictor | action MSE, clean | action MSE, perturbed | future frame, clean | future frame, perturbed |",
        "|---|---:|---:|---:|---:|",
    ]

    def number(value):
        return "-" if value is None else f"{value:.4f}"

    for name, row in report["offline"].items():
        cells = [row[s][k] for k in ("action_mse",) for s in ("clean", "perturbed")]
        cells += [row[s]["future_frame_mse"] for s in ("clean", "perturbed")]
        lines.append(f"| {name} | " + " | ".join(number(c) for c in cells) + " |")
    lines += ["", f"Wall-clock: {report['timing']}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the whole run
def run_demo(
    settings: DemoSettings,
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
            `peft_ckt.wam.seeds`).
    """
    import peft_ckt  # noqa: F401  (registers CKT with peft)

    from .data import ChunkDataset

    started = time.perf_counter()
    timing: dict[str, float] = {}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache is not None else out / "cache"
    # Small matrices: more than 2 threads buys nothing here, and oversubscribed threads stall badly.
    torch.set_num_threads(int(os.environ.get("PEFT_CKT_NUM_THREADS", min(2, os.cpu_count() or 1))))

    t = time.perf_counter()
    data = collect_all(settings, cache)
    splits = split_datasets(settings, data)
    timing["collect"] = time.perf_counter() - t

    t = time.perf_counter()
    teacher, teacher_record = pretrain_stage(settings, cache, "teacher", splits["teacher"])
    student, student_record = pretrain_stage(settings, cache, "student", splits["student"])
    teacher.requires_grad_(False)
    student_path = student.name_or_path
    timing["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    ckt_path, ckt_record = adapter_stage(settings, cache, "ckt", teacher, student_path, splits["target"])
    lora_path, lora_record = adapter_stage(
        settings, cache, "lora", None, student_path, splits["target"], budget=ckt_record["trainable_params"]
    )
    ablated = {
        ablation_policy(name): adapter_stage(
            settings, cache, "ckt", teacher, student_path, splits["target"], ablation=name
        )
        for name in settings.ablations
    }
    timing["adapters"] = time.perf_counter() - t

    policies = {
        "teacher": teacher.name_or_path,
        "student": student_path,
        "student+lora": str(lora_path),
        "student+ckt": str(ckt_path),
        **{name: str(path) for name, (path, _) in ablated.items()},
    }
    t = time.perf_counter()
    rows = evaluate_policies(settings, policies, Path(episode_log) if episode_log is not None else out)
    timing["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    from peft import PeftModel

    from .modeling import WorldActionModel

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
    lora_model = PeftModel.from_pretrained(WorldActionModel.from_pretrained(student_path), str(lora_path)).eval()
    ckt_model = PeftModel.from_pretrained(
        WorldActionModel.from_pretrained(student_path), str(ckt_path), teacher=teacher
    ).eval()
    models = {
        "teacher": {"model": teacher, "wam": teacher},
        "student": {"model": student, "wam": student},
        "student+lora": {"model": lora_model, "wam": lora_model.base_model.model},
        "student+ckt": {"model": ckt_model, "wam": ckt_model.base_model.model, "teacher": teacher},
    }
    for name, (path, _) in ablated.items():
        model = PeftModel.from_pretrained(WorldActionModel.from_pretrained(student_path), str(path), teacher=teacher)
        models[name] = {"model": model.eval(), "wam": model.base_model.model, "teacher": teacher}
    offline = offline_metrics(models, heldout, stats, settings)
    heldout_counts = _heldout_expert_counts(ckt_model, teacher, heldout["perturbed"], settings)
    timing["offline"] = time.perf_counter() - t

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
        *((name, record) for name, (_, record) in ablated.items()),
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
        "target_demonstrations": len(splits["target"]),
        "lora_rank": lora_record["rank"],
    }
    plot_success(report, out / "success_by_perturbation.png")
    plot_training(
        {
            "teacher": teacher_record,
            "student": student_record,
            "student+ckt": ckt_record,
            "student+lora": lora_record,
            **{name: record for name, (_, record) in ablated.items()},
        },
        out / "training_loss.png",
    )
    plot_experts(ckt_record["expert_counts"] or [], heldout_counts, out / "expert_usage.png")
    t = time.perf_counter()
    report["episode_gif"] = record_gif(settings, policies, rows, out)
    timing["gif"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - started
    report["timing"] = {k: round(v, 1) for k, v in timing.items()}
    _write_json(out / "report.json", report)
    _write_text(out / "report.md", markdown_report(report))
    return report


@torch.no_grad()
def _heldout_expert_counts(model, teacher, heldout, settings) -> list[int]:
    from .data import held_out_batches

    counts = None
    for batch in held_out_batches(heldout, max_samples=settings.heldout_samples, batch_size=128):
        context = model.encode_teacher(teacher.teacher_inputs(batch))
        if not context.topk_indices.shape[1]:  # no router in the no-specialized ablation
            return []
        c = torch.bincount(context.topk_indices[:, 0], minlength=context.router_probs.shape[-1])
        counts = c if counts is None else counts + c
    return counts.tolist() if counts is not None else []


__all__ = ["DemoSettings", "compare_policies", "compare_successes", "run_demo", "wilson_interval"]
