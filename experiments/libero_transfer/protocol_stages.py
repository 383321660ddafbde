"""The stages of the pre-registered experiment (`experiment.py`): collection, pretraining, tuning on validation,
adapters and controls, rollouts. Each is cached under a folder named by what it depends on, written all-or-nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from peft_ckt.atomic import commit_directory, write_json
from peft_ckt.libero.splits import select_on_validation

from .cache import save_stage
from .plan import DemoSet, adapter_seed_of, collection_groups, pretrain_seed_of, splits_of
from .stages.pretrain import pretraining_record

logger = logging.getLogger(__name__)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
KV = ["attn2.to_k", "attn2.to_v"]  # the student's cross-attention key/value projections: how it reads its context


def digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------------------------- collection
def collect(
    questions: dict[str, dict[str, Any]], cache: Path, workers: int, progress: bool = True, exclude: tuple = ()
) -> dict:
    """Every demonstration the questions need, once (`plan.collection_groups`; the sets named in `exclude` left
    out); returns `{(split, severity): episodes}`."""
    from peft_ckt.libero.collect import CollectJob, collect_into
    from peft_ckt.libero.dataset import LeRobotDatasetWriter
    from peft_ckt.libero.env import CAMERAS
    from peft_ckt.wam.data import read_episodes

    values = next(iter(questions.values()))
    groups = collection_groups(questions, exclude)
    folders = {name: cache / "data" / name for name in groups}
    todo = [name for name, path in folders.items() if not (path / "meta" / "episodes.jsonl").is_file()]
    if todo:
        jobs = []
        for name in todo:
            group = groups[name]
            for task, kind, init in group["episodes"]:
                job = CollectJob(
                    values["suite"], task, init, kind, max(1, group["severity"]), values["image_size"],
                    values["rollouts"]["episode_seed"], False, None, values["image_stride"],
                )  # fmt: skip
                jobs.append((name, job))
        jobs.sort(key=lambda item: item[1].task_id)  # each task's episodes together: one env build per worker
        writers = {}
        for name in todo:
            partial = folders[name].with_name(folders[name].name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            size = (values["image_size"],) * 2
            writers[name] = LeRobotDatasetWriter(partial, image_keys=tuple(CAMERAS), image_size=size)
        logger.info(f"collecting {len(jobs)} scripted demonstrations with {workers} worker(s)")
        kept = dict.fromkeys(todo, 0)
        for name, _, kept_episode in collect_into(jobs, writers, workers, "collect demonstrations", progress):
            kept[name] += kept_episode
        for name in todo:
            writers[name].finalize()
            commit_directory(folders[name].with_name(folders[name].name + ".partial"), folders[name])
            logger.info(f"{name}: kept {kept[name]}/{len(groups[name]['episodes'])}")
    return {(g["split"], g["severity"]): read_episodes(folders[name]) for name, g in groups.items()}


def demos(pool: dict, demo_set: DemoSet) -> list[dict[str, Any]]:
    """A demonstration set's episodes from the collected pool."""
    severity = 0 if demo_set.kinds == ("none",) else demo_set.severity
    return demo_set.select(pool.get((demo_set.split, severity), []))  # [] for a set left out of the collection


def episodes_digest(episodes: list[dict[str, Any]]) -> str:
    return digest(sorted((e["task_id"], e["init_index"], e["perturbation"], len(e["action"])) for e in episodes))


# ----------------------------------------------------------------------------------------------- pretraining
def teacher_data(sets: dict[str, list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The teacher's demonstrations (clean and perturbed) and its vocabulary (their instructions)."""
    from peft_ckt.wam.tokenizer import build_vocabulary

    episodes = sets["teacher_clean"] + sets["teacher_perturbed"]
    return episodes, build_vocabulary(sorted({e["task"] for e in episodes}))


def model_folder(values, cache: Path, role: str, pretrain_seed: int, episodes, vocabulary: list[str]) -> Path:
    """Where the WAM of `role` pretrained at `pretrain_seed` on `episodes` is cached (named by what it depends on)."""
    spec = values["models"][role]
    models = values["models"]
    shared = {k: models[k] for k in ("text_dim", "future_pool", "future_residual", "batch_size", "optimizer")}
    key = digest(role, spec, shared, values["image_size"], pretrain_seed, episodes_digest(episodes), vocabulary)
    return cache / "models" / f"{role}-p{pretrain_seed}-{key}"


def pretrain(values, cache: Path, role: str, pretrain_seed: int, episodes, vocabulary: list[str]):
    """Pretrain (or load) the teacher (Wan) or a student (Cosmos) WAM; returns `(folder, record)`."""
    from peft_ckt.wam.data import ChunkDataset
    from peft_ckt.wam.modeling import WorldActionModel
    from peft_ckt.wam.training import train_wam

    spec = values["models"][role]
    models = values["models"]
    final = model_folder(values, cache, role, pretrain_seed, episodes, vocabulary)
    if (final / "model.safetensors").is_file():
        return final, json.loads((final / "training.json").read_text())
    chunk = (values["image_size"] // 8) ** 2
    stats = ChunkDataset(episodes, chunk_size=chunk).statistics()
    seed = pretrain_seed_of(values, role, pretrain_seed)
    torch.manual_seed(seed)
    model = WorldActionModel(
        backbone=spec["backbone"],
        vocabulary=vocabulary,
        image_size=values["image_size"],
        pixel_block=8,
        chunk_size=chunk,
        num_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        attention_head_dim=spec["head_dim"],
        text_dim=models["text_dim"],
        future_pool=models["future_pool"],
        future_residual=models["future_residual"],
        **stats,
    )
    dataset = ChunkDataset(episodes, chunk_size=chunk)
    params = sum(p.numel() for p in model.parameters())
    logger.info(
        f"{role} (pretraining seed {pretrain_seed}): {params / 1e6:.2f}M parameters, {dataset.num_episodes} demos"
    )
    result = train_wam(
        model, model, dataset, steps=spec["steps"], batch_size=models["batch_size"], learning_rate=spec["lr"],
        seed=seed, checkpoint=cache / "models" / f"{final.name}.ckpt", desc=f"pretrain {role} p{pretrain_seed}",
    )  # fmt: skip
    save_stage(model, pretraining_record(result, params, dataset), final)
    return final, json.loads((final / "training.json").read_text())


# ----------------------------------------------------------------------------------------------- adapters
def ckt_config(values, teacher, student, teacher_layer: int, overrides: Optional[dict] = None):
    from peft_ckt.config import CKTConfig

    ckt = values["ckt"]
    if not 0 <= teacher_layer < teacher.num_layers:
        raise ValueError(f"teacher_layer={teacher_layer}: the teacher has {teacher.num_layers} blocks")
    kwargs = dict(
        teacher=teacher,
        teacher_layer=f"{teacher.block_prefix}.{teacher_layer}",
        context_kwarg="encoder_hidden_states",
        num_context_tokens=ckt["num_context_tokens"],
        num_experts=ckt["num_experts"],
        top_k=ckt["top_k"],
        bottleneck_dim=ckt["bottleneck_dim"],
        router_hidden_dim=ckt["router_hidden_dim"],
        num_attention_heads=ckt["num_attention_heads"],
        adapter_dropout=ckt["adapter_dropout"],
        attention_dropout=ckt["attention_dropout"],
        teacher_hidden_size=teacher.width,
        student_hidden_size=student.text_dim,
        modules_to_save=list(ckt["student_modules_trained"]) or None,
    )
    kwargs.update(overrides or {})
    return CKTConfig(**kwargs)


def lora_rank_budget(values, student, budget: int) -> int:
    """The smallest LoRA rank whose LoRA matrices count at least `budget` trainable parameters (`r_budget`)."""
    targets = values["lora"]["targets"]
    linears = [
        m
        for name, m in student.backbone.transformer_blocks.named_modules()
        if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in targets)
    ]
    return max(1, math.ceil(budget / sum(m.in_features + m.out_features for m in linears)))


def lora_config(values, rank: int, kv: bool = False):
    """LoRA on every attention and MLP projection of the student's blocks; with `kv`, the cross-attention key/value
    projections are trained in full instead (the `lora_kv` control)."""
    from peft import LoraConfig

    lora = values["lora"]
    targets: Any = list(lora["targets"])
    modules_to_save = list(lora["modules_to_save"])
    if kv:
        # Every target but attn2.to_k / attn2.to_v, which are trained whole (peft cannot do both to one module).
        targets = r".*transformer_blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_q|to_out\.0)|ff\.net\.(0\.proj|2))"
        modules_to_save += KV
    return LoraConfig(
        r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=lora["dropout"],
        modules_to_save=modules_to_save or None,
    )  # fmt: skip


def adapter_folder(
    values,
    cache: Path,
    kind: str,
    hyper: dict[str, Any],
    student_path: Path,
    target,
    seeds: tuple[int, int],
    budget: int = 0,
) -> Path:
    """Where `train_adapter` keeps this adapter: named by everything it depends on."""
    steps = values["ckt"]["steps"] if kind not in ("lora", "lora_kv") else values["lora"]["steps"]
    key = digest(kind, hyper, values["ckt"], values["lora"], values["models"]["batch_size"], steps, budget,
                 episodes_digest(target), student_path.name, seeds)  # fmt: skip
    return cache / "adapters" / f"{kind}-p{seeds[0]}a{seeds[1]}-{key}"


def adapter_trained(folder: Path, kind: str) -> bool:
    return (folder / ("model.safetensors" if kind == "kv_only" else "adapter_config.json")).is_file()


def train_adapter(
    values,
    cache: Path,
    kind: str,
    hyper: dict[str, Any],
    teacher,
    student_path: Path,
    target,
    seeds: tuple[int, int],
    budget: int = 0,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Train (or load) one adapter on the frozen student; returns `(folder, record)`.

    `kind`: "ckt", "lora", a paper ablation ("no_specialized", ...), "ckt_kv" (CKT + the student's cross-attention
    keys/values), "lora_kv" (LoRA + the same keys/values) or "kv_only" (those keys/values alone, saved as a whole
    WAM). `hyper`: the tuned `learning_rate` and `teacher_layer` (CKT) or `rank_multiple` (LoRA).
    """
    from peft import get_peft_model

    import peft_ckt  # noqa: F401
    from peft_ckt.ablations import ablation_config
    from peft_ckt.wam.data import ChunkDataset
    from peft_ckt.wam.modeling import WorldActionModel
    from peft_ckt.wam.training import train_wam

    pretrain_seed, adapter_seed = seeds
    steps = values["ckt"]["steps"] if kind not in ("lora", "lora_kv") else values["lora"]["steps"]
    final = adapter_folder(values, cache, kind, hyper, student_path, target, seeds, budget)
    if adapter_trained(final, kind):
        return final, json.loads((final / "training.json").read_text())
    student = WorldActionModel.from_pretrained(student_path)
    seed = adapter_seed_of(pretrain_seed, adapter_seed)
    torch.manual_seed(seed)  # initial weights from the global generator: independent of what ran before
    rank = None
    if kind == "kv_only":
        student.requires_grad_(False)
        for name, module in student.named_modules():
            if any(name.endswith(k) for k in KV):
                module.requires_grad_(True)
        model = student
    else:
        if kind in ("lora", "lora_kv"):
            rank = lora_rank_budget(values, student, budget) * hyper["rank_multiple"]
            config = lora_config(values, rank, kv=kind == "lora_kv")
        else:
            overrides = {"modules_to_save": KV} if kind == "ckt_kv" else None
            config = ckt_config(values, teacher, student, hyper["teacher_layer"], overrides)
            if kind not in ("ckt", "ckt_kv"):
                config = ablation_config(config, kind)
        model = get_peft_model(student, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    dataset = ChunkDataset(target, chunk_size=student.chunk_size)
    result = train_wam(
        model, student, dataset, steps=steps, batch_size=values["models"]["batch_size"],
        learning_rate=hyper["learning_rate"], seed=seed,
        teacher=teacher if kind not in ("lora", "lora_kv", "kv_only") else None,
        checkpoint=cache / "adapters" / f"{final.name}.ckpt", desc=f"train {kind} p{pretrain_seed}a{adapter_seed}",
        progress=progress,
    )  # fmt: skip
    record = {
        "kind": kind,
        "hyper": hyper,
        "seeds": list(seeds),
        "losses": result.losses,
        "action_losses": result.action_losses,
        "seconds": result.seconds,
        "trainable_params": trainable,
        "total_params": total,
        "rank": rank,
        "expert_counts": result.expert_counts,
    }
    save_stage(model, record, final)
    return final, record


@dataclass(frozen=True)
class AdapterJob:
    """One `train_adapter` call, picklable for a training worker: the teacher by its folder, not as a model."""

    values: dict[str, Any]
    cache: Path
    kind: str
    hyper: dict[str, Any]
    teacher: Optional[Path]
    student_path: Path
    target: list
    seeds: tuple[int, int]
    budget: int
    threads: int = 1

    @property
    def folder(self) -> Path:
        return adapter_folder(
            self.values, self.cache, self.kind, self.hyper, self.student_path, self.target, self.seeds, self.budget
        )


def load_teacher(folder: Path):
    from peft_ckt.wam.modeling import WorldActionModel

    teacher = WorldActionModel.from_pretrained(folder)
    teacher.requires_grad_(False)
    return teacher


def train_job(job: AdapterJob, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """`train_adapter` for `job`, its teacher loaded from its folder (only when there is something to train)."""
    teacher = (
        load_teacher(job.teacher) if job.teacher is not None and not adapter_trained(job.folder, job.kind) else None
    )
    return train_adapter(
        job.values, job.cache, job.kind, job.hyper, teacher, job.student_path, job.target, job.seeds, job.budget,
        progress=progress,
    )  # fmt: skip


def run_adapter_job(job: AdapterJob) -> str:
    """Trains `job` in a training worker (the settings `run_experiment` fixes for the main process, set again here:
    a spawned worker starts from torch's defaults)."""
    torch.set_num_threads(job.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return train_job(job, progress=False)[0].name


def train_adapters(jobs: list[AdapterJob], workers: int, progress: bool = True) -> int:
    """Trains the `jobs` not trained yet, `workers` at a time in spawned worker processes (1 or fewer: here, one
    after the other); returns how many were trained. Each training is seeded on its own (`adapter_seed_of`) and
    runs on `job.threads` threads, so the order and the worker change no float. A worker dies with this process;
    a stopped training resumes from its checkpoint."""
    from peft_ckt.libero.workers import run_jobs

    todo = {job.folder: job for job in jobs if not adapter_trained(job.folder, job.kind)}
    if not todo:
        return 0
    if workers <= 1 or len(todo) == 1:
        threads = torch.get_num_threads()
        try:
            for job in todo.values():
                torch.set_num_threads(job.threads)
                train_job(job, progress)
        finally:
            torch.set_num_threads(threads)
        return len(todo)
    # Longest first (CKT runs the teacher each step): the last worker to finish then waits least.
    ordered = sorted(todo.values(), key=lambda job: job.teacher is None)
    names = run_jobs(run_adapter_job, ordered, min(workers, len(ordered)), "adapter trainings", progress, "training")
    for name in names:
        logger.info(f"trained {name}")
    return len(todo)


def ckt_budget(values, teacher, student_path: Path) -> int:
    """Trainable parameters of the registered CKT bank on this student (what LoRA's rank is matched to)."""
    from peft import get_peft_model

    from peft_ckt.wam.modeling import WorldActionModel

    student = WorldActionModel.from_pretrained(student_path)
    model = get_peft_model(student, ckt_config(values, teacher, student, values["tuning"]["ckt"]["teacher_layer"][0]))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------- tuning
@torch.no_grad()
def validation_action_mse(folder: Path, student_path: Path, teacher, episodes, max_samples: int = 512) -> float:
    """Action MSE of an adapter on validation demonstrations: the executed chunk (5 Euler steps from fixed noise)
    against the demonstration's, the same samples and noise for every candidate."""
    from peft import PeftModel

    from peft_ckt.wam.data import ChunkDataset, held_out_batches
    from peft_ckt.wam.modeling import WorldActionModel, sample

    student = WorldActionModel.from_pretrained(student_path)
    model = PeftModel.from_pretrained(student, str(folder), **({"teacher": teacher} if teacher else {})).eval()
    wam = model.base_model.model
    dataset = ChunkDataset(episodes, chunk_size=wam.chunk_size)
    error, count = 0.0, 0
    for index, batch in enumerate(held_out_batches(dataset, max_samples=max_samples, batch_size=128)):
        noise = torch.randn(
            wam.noise_shape(len(batch["action"])), generator=torch.Generator().manual_seed(10_000 + index)
        )
        extra = {"ckt_context": model.encode_teacher(teacher.teacher_inputs(batch))} if teacher else {}
        actions = sample(model, wam, batch, initial_noise=noise, **extra)["actions"]
        error += (actions - batch["action"]).pow(2).mean(dim=(1, 2)).sum().item()
        count += len(batch["action"])
    return error / count


def tune(values, cache: Path, method: str, candidates, teacher, student_path: Path, target, validation, budget: int):
    """Trains every candidate at the tuning seeds and keeps the lowest perturbed-validation action MSE; refuses any
    score read outside the validation split. Returns `(chosen, scores)`, cached."""
    at = values["tuning"]["at"]
    seeds = (at["pretrain_seed"], at["adapter_seed"])
    perturbed = [e for e in validation if e["perturbation"] != "none"]
    key = digest(method, candidates, values["ckt"], values["lora"], student_path.name, episodes_digest(perturbed))
    record_file = cache / "tuning" / f"{values['question']}-{method}-{key}.json"
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        return record["chosen"], record["scores"]
    teacher_for = teacher if method == "ckt" else None

    def score(hyper: dict[str, Any]) -> float:
        folder, _ = train_adapter(values, cache, method, hyper, teacher_for, student_path, target, seeds, budget)
        mse = validation_action_mse(folder, student_path, teacher_for, perturbed)
        logger.info(f"tuning {values['question']} {method} {hyper}: validation action MSE {mse:.5f}")
        return mse

    chosen, scores = select_on_validation(
        candidates, score, "validation", splits_of(values), [e["init_index"] for e in perturbed]
    )
    record_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(record_file, {"chosen": chosen, "scores": scores, "seeds": list(seeds)})
    return chosen, scores


# ----------------------------------------------------------------------------------------------- rollouts
def _play(policies, jobs, run_one, error_row, config, log_folder: Path, episode, workers, desc, progress):
    """Runs the `jobs` not yet in `log_folder/episodes.jsonl` (episodes keyed by the policy's resolved folder and
    `episode(job or row)`), appends each as it ends, and returns every wanted row with the `policy_id` of each
    policy (`{policy id: folder}`) that played it."""
    from peft_ckt.libero.records import open_episode_log
    from peft_ckt.libero.runner import run_episode_jobs

    log_folder.mkdir(parents=True, exist_ok=True)
    recorded, log = open_episode_log(log_folder, config, "auto")

    def job_key(job) -> tuple:
        return (os.path.realpath(job.policy), *episode(job))

    def row_key(row) -> tuple:
        return (os.path.realpath(row["policy"]), *episode(row))

    run = run_episode_jobs(
        jobs, run_one, log=log, recorded=recorded, job_key=job_key, row_key=row_key, num_workers=workers, desc=desc,
        progress=progress, error_row=error_row,
    )  # fmt: skip
    wanted = {job_key(job) for job in jobs}
    rows = [row for row in run.rows if row_key(row) in wanted]
    out = []
    for name, spec in policies.items():
        path = os.path.realpath(spec)
        out += [{**row, "policy_id": name} for row in rows if os.path.realpath(row["policy"]) == path]
    return out


def _field(data, name):
    return getattr(data, name) if not isinstance(data, dict) else data[name]


def rollouts(values, policies: dict[str, str], log_folder: Path, workers: int, progress: bool = True) -> list[dict]:
    """Every policy (`{row id: folder}`) on every test episode, resumable through `episodes.jsonl`; each row gets
    its `policy_id`. An episode that raises is recorded as an error row."""
    from peft_ckt.libero.evaluation import EpisodeJob

    from .plan import test_conditions

    rollout = values["rollouts"]
    test = values["data"]["test"]
    config = {
        "suite": values["suite"], "severity": test["severity"], "seed": rollout["episode_seed"],
        "image_size": values["image_size"], "max_steps": rollout["max_steps"],
        "n_action_steps": rollout["n_action_steps"],
    }  # fmt: skip
    jobs = [
        EpisodeJob(
            suite=values["suite"],
            task_id=task,
            init_index=init,
            perturbation=kind,
            severity=test["severity"],
            policy=str(spec),
            image_size=values["image_size"],
            seed=rollout["episode_seed"],
            max_steps=rollout["max_steps"],
            video_dir=None,
            n_action_steps=rollout["n_action_steps"],
        )  # fmt: skip
        for spec in dict.fromkeys(str(s) for s in policies.values())
        for task, kind, init in test_conditions(values)
    ]

    def episode(data) -> tuple:
        return tuple(_field(data, name) for name in ("task_id", "perturbation", "init_index"))

    return _play(policies, jobs, _episode_row, _error_row, config, log_folder, episode, workers, "rollouts", progress)


def official_sample(values) -> list[str]:
    """The untouched test: a seeded sample of the official LIBERO-Plus tasks of the evaluated base tasks, in the
    registered dimensions that run offline, drawn once (`official_liberoplus.sample_seed`), in benchmark order."""
    import random

    from peft_ckt.libero.liberoplus import configure_liberoplus, is_runnable, list_official_tasks
    from peft_ckt.libero.suites import get_task

    spec = values["official_liberoplus"]
    paths = configure_liberoplus(None)
    bases = [get_task(values["suite"], t).name for t in spec["base_tasks"]]
    candidates = [
        task
        for task in list_official_tasks(values["suite"])
        if task.dimension in spec["dimensions"]
        and any(task.name == base or task.name.startswith(base + "_") for base in bases)
        and is_runnable(task, paths.assets)
    ]
    if len(candidates) < spec["sample"]:
        raise ValueError(f"only {len(candidates)} runnable official tasks to sample {spec['sample']} from")
    chosen = random.Random(spec["sample_seed"]).sample(candidates, spec["sample"])
    return [task.name for task in sorted(chosen, key=lambda t: t.index)]


def official_rollouts(
    values, policies: dict[str, str], tasks: list[str], log_folder: Path, workers: int, progress=True
):
    """Every policy on the sampled official tasks (one episode each, init state 0, the benchmark's seed), at the
    image size the policies were trained at; resumable. An episode that raises is recorded as an error row."""
    from peft_ckt.libero.liberoplus import OFFICIAL_SEED
    from peft_ckt.libero.liberoplus_eval import OfficialEpisodeJob

    rollout = values["rollouts"]
    config = {
        "suite": values["suite"], "seed": OFFICIAL_SEED, "image_size": values["image_size"],
        "max_steps": rollout["max_steps"], "n_action_steps": rollout["n_action_steps"],
    }  # fmt: skip
    jobs = [
        OfficialEpisodeJob(
            suite=values["suite"],
            task=task,
            init_index=0,
            policy=str(spec),
            image_size=values["image_size"],
            seed=OFFICIAL_SEED,
            max_steps=rollout["max_steps"],
            assets=None,
            video_dir=None,
            n_action_steps=rollout["n_action_steps"],
        )  # fmt: skip
        for spec in dict.fromkeys(str(s) for s in policies.values())
        for task in tasks
    ]

    def episode(data) -> tuple:
        return (_field(data, "task"),)

    desc = "official LIBERO-Plus sample"
    return _play(
        policies, jobs, _official_row, _official_error_row, config, log_folder, episode, workers, desc, progress
    )


def _error_row(job, error) -> dict[str, Any]:
    # An episode that raised is recorded (neither success nor failure) and the run goes on; the analysis counts it.
    from peft_ckt.libero.evaluation import episode_error_row

    return {**episode_error_row(job, error), "policy": job.policy}


def _official_error_row(job, error) -> dict[str, Any]:
    from peft_ckt.libero.liberoplus_eval import official_error_row

    return {**official_error_row(job, error), "policy": job.policy}


def _official_row(job) -> dict[str, Any]:
    from peft_ckt.libero.liberoplus_eval import run_official_episode_row

    return {**run_official_episode_row(job), "policy": job.policy}


@torch.no_grad()
def inference_seconds(policies: dict[str, str], observation: dict[str, Any], rounds: int = 200) -> dict[str, Any]:
    """Seconds per predicted action chunk of each policy (`{name: folder}`, the first the reference), one thread, on
    one observation: for CKT, the teacher to its layer and the bank once per chunk, then the student's denoising steps.

    The policies take turns, one chunk each per round, so that a slower spell of the machine falls on all of them
    alike (timed one policy after the other, 50 chunks each, two reports of the same folders gave CKT 1.30x and
    1.44x). Returns each policy's median seconds, and the median and quartiles of its per-round ratio to the first."""
    import statistics
    import time

    import numpy as np

    from peft_ckt.libero.policies import load_policy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loaded = {name: load_policy(spec) for name, spec in policies.items()}
        for policy in loaded.values():
            policy.reset()
            policy.predict_action_chunk(observation)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in loaded}
        for _ in range(rounds):
            for name, policy in loaded.items():
                start = time.perf_counter()
                policy.predict_action_chunk(observation)
                times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    reference = np.asarray(times[next(iter(times))])
    ratios = {name: np.asarray(t) / reference for name, t in times.items()}
    return {
        "seconds_per_chunk": {name: statistics.median(t) for name, t in times.items()},
        "ratio_to_student": {name: float(np.median(r)) for name, r in ratios.items()},
        "ratio_quartiles": {name: [float(q) for q in np.quantile(r, [0.25, 0.75])] for name, r in ratios.items()},
        "rounds": rounds,
    }


def _episode_row(job) -> dict[str, Any]:
    from dataclasses import asdict

    from peft_ckt.libero.evaluation import run_episode

    return {**asdict(run_episode(job)), "policy": job.policy}


__all__ = [
    "KV",
    "LORA_TARGETS",
    "ckt_budget",
    "ckt_config",
    "collect",
    "inference_seconds",
    "official_rollouts",
    "official_sample",
    "demos",
    "lora_config",
    "lora_rank_budget",
    "pretrain",
    "rollouts",
    "train_adapter",
    "tune",
    "validation_action_mse",
]
