"""The experiment's report: success and training plots, the student-vs-CKT GIF and `report.md`."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from peft_ckt.atomic import atomic_path
from peft_ckt.libero.metrics import comparison_lines

from .settings import PERTURBATION_KINDS, TransferSettings


def plot_success(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["none", *PERTURBATION_KINDS, "total"]
    fig, ax = plt.subplots(figsize=(12, 4.2))
    names = list(report["policies"])
    width = 0.8 / len(names)
    colours = {"teacher": "#999999", "student": "#DD8452", "student+lora": "#55A868", "student+ckt": "#4C72B0"}
    extra = itertools.cycle(["#8172B3", "#64B5CD", "#CCB974", "#C44E52", *plt.get_cmap("tab20").colors])
    for i, name in enumerate(names):
        row = report["policies"][name]
        cells = [row["by_perturbation"][c] for c in columns[:-1]] + [row["perturbed"]]
        values, low, high = _bars(cells)
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
    # Pooled rows differ in size (an adapter has a row per training): name the range, not the student's count.
    counts = sorted({cell["episodes"] for p in report["policies"].values() for cell in p["by_perturbation"].values()})
    counts = [c for c in counts if c] or [0]
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
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


def plot_rows(result: dict[str, Any], question: str, primary: tuple[str, ...], path: Path) -> bool:
    """Every row of a question (`analysis.analyse`'s `rows`), perturbed and clean, pooled over its trainings, with 95%
    Wilson intervals: how student+CKT fares beside its controls (zeroed or wrong teacher context, the ablations).
    Nothing is drawn (False) while every row is one of `primary`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["rows"])
    if all(name in primary for name in names):
        return False
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 1.2))
    y = np.arange(len(names))[::-1]
    for offset, split, colour in ((0.2, "perturbed", "#4C72B0"), (-0.2, "clean", "#BBBBBB")):
        cells = [result["rows"][name]["pooled"][split] for name in names]
        values, low, high = _bars(cells)
        ax.barh(y + offset, values, 0.4, xerr=[low, high], color=colour, label=split, capsize=2,
                error_kw={"elinewidth": 0.8, "alpha": 0.6})  # fmt: skip
    labels = [f"{name} ({result['rows'][name]['num_trainings']})" for name in names]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("success (%), pooled over trainings (their number in brackets)")
    ckt = result["rows"].get("student+ckt", {}).get("pooled", {}).get("perturbed", {}).get("success_rate")
    if ckt is not None:
        ax.axvline(100 * ckt, color="#4C72B0", linestyle=":", linewidth=1, label="student+ckt, perturbed")
    ax.set_title(f"{question}: every row, perturbed and clean (95% Wilson)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    return True


def _bars(cells: list[dict[str, Any]]) -> tuple[list[float], list[float], list[float]]:
    """Success cells as bar heights in percent and the distances to their Wilson bounds; a cell with no episode gets
    no bar (not a 0% bar with a 0-100% interval)."""
    values = [100 * c["success_rate"] if c["episodes"] else np.nan for c in cells]
    low = [v - 100 * c["ci95"][0] if c["episodes"] else 0 for v, c in zip(values, cells)]
    high = [100 * c["ci95"][1] - v if c["episodes"] else 0 for v, c in zip(values, cells)]
    return values, low, high


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def record_gif(settings: TransferSettings, policies: dict[str, str], rows: list[dict[str, Any]], out: Path) -> dict:
    """One episode of the student and of student+CKT under the same perturbation, side by side, as a GIF."""
    import imageio.v2 as imageio

    from peft_ckt.libero.evaluation import EpisodeJob, run_episode
    from peft_ckt.libero.workers import close_cached

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


__all__ = ["markdown_report", "plot_experts", "plot_rows", "plot_success", "plot_training", "record_gif"]
