"""The report of `evaluate_libero`: success by task, by perturbation and in the LIBERO-Plus columns; markdown and
a bar chart."""

from __future__ import annotations

import os
from typing import Any

from ...atomic import atomic_path
from ..episode import ImageSize
from ..metrics import percent, success_rate
from ..perturbations import LIBERO_PLUS_COLUMNS, PERTURBATIONS
from ..runner import episode_errors, is_error

__all__ = ["bar_chart", "error_lines", "errors_paragraph", "image_size_text", "markdown_report", "summarize"]


def _error_entry(row: dict[str, Any], *names: str) -> dict[str, Any]:
    return {**{name: row.get(name) for name in names}, **row["error"]}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rates overall, by task, by perturbation, and in the LIBERO-Plus columns.

    Episodes that raised (error rows) are neither successes nor failures: they are left out of every rate and
    counted apart (`num_errors`, `errors`, and `errors` per task and perturbation).
    """
    errors = episode_errors(rows)
    episodes = [e for e in rows if not is_error(e)]
    by_task: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(e["task"] for e in rows):
        subset = [e for e in episodes if e["task"] == name]
        by_task[name] = {
            "task_id": next(e["task_id"] for e in rows if e["task"] == name),
            "success_rate": success_rate(subset),
            "episodes": len(subset),
            "errors": sum(e["task"] == name for e in errors),
        }
    by_perturbation: dict[str, dict[str, Any]] = {}
    for kind in ["none", *PERTURBATIONS]:
        subset = [e for e in episodes if e["perturbation"] == kind]
        failed = sum(e["perturbation"] == kind for e in errors)
        if subset or failed:
            by_perturbation[kind] = {"success_rate": success_rate(subset), "episodes": len(subset), "errors": failed}
    perturbed = [e for e in episodes if e["perturbation"] != "none"]
    libero_plus: dict[str, float | None] = {"Original": by_perturbation.get("none", {}).get("success_rate")}
    for kind, column in LIBERO_PLUS_COLUMNS.items():
        libero_plus[column] = by_perturbation.get(kind, {}).get("success_rate")
    # LIBERO-Plus "Total" is over the perturbed episodes; with no perturbation evaluated it is the plain rate.
    libero_plus["Total"] = success_rate(perturbed) if perturbed else success_rate(episodes)
    return {
        "success_rate": success_rate(episodes),
        "num_episodes": len(episodes),
        "num_successes": int(sum(e["success"] for e in episodes)),
        "num_errors": len(errors),
        "errors": [
            _error_entry(e, "suite", "task_id", "task", "init_index", "perturbation", "severity") for e in errors
        ],
        "by_task": by_task,
        "by_perturbation": by_perturbation,
        "libero_plus": libero_plus,
    }


def error_lines(errors: list[dict[str, Any]]) -> list[str]:
    """One line per episode that raised: which episode, then `Type: message` (its message on one line)."""
    lines = []
    for error in errors:
        if "task_id" in error:
            episode = f"task {error['task_id']} ({error['task']}), init {error['init_index']}, {error['perturbation']}"
        else:
            episode = f"task {error['task_index']} ({error['task']}), init {error['init_index']}"
        message = " ".join(str(error["message"]).split())
        lines.append(f"{episode}: {error['type']}: {message[:500]}" + ("..." if len(message) > 500 else ""))
    return lines


def errors_paragraph(summary: dict[str, Any]) -> list[str]:
    """The report's lines on episodes that raised (none when none did)."""
    if not summary.get("num_errors"):
        return []
    return [
        "",
        f"{summary['num_errors']} episode(s) ended in an error: not counted as failures nor in any success rate "
        "(`--resume --retry-errors` runs them again):",
        "",
        *(f"- {line}" for line in error_lines(summary["errors"])),
    ]


def markdown_report(results: dict[str, Any]) -> str:
    """LIBERO-Plus style table (success %, one row per policy) plus a per-task table."""
    summary, config = results["summary"], results["config"]
    columns = list(summary["libero_plus"])
    if summary["libero_plus"]["Original"] is None:
        columns.remove("Original")
    with_errors = bool(summary.get("num_errors"))
    lines = [
        f"# LIBERO evaluation: {config['suite']}",
        "",
        f"Policy `{config['policy']}`, {summary['num_episodes']} episodes, {image_size_text(results)}, "
        f"severity {config['severity']}, seed {config['seed']}. Success rate in %.",
        "",
        "| Policy | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
        f"| {config['policy_name']} | " + " | ".join(percent(summary["libero_plus"][c]) for c in columns) + " |",
        "",
        "| Task | Episodes | Success |" + (" Errors |" if with_errors else ""),
        "|---|---:|---:|" + ("---:|" if with_errors else ""),
    ]
    for name, row in summary["by_task"].items():
        lines.append(
            f"| {row['task_id']}: {name} | {row['episodes']} | {percent(row['success_rate'])} |"
            + (f" {row.get('errors', 0)} |" if with_errors else "")
        )
    lines += errors_paragraph(summary)
    speed = results.get("speed", {})
    if speed.get("steps_per_second") and speed.get("episode_steps_per_second"):
        lines += [
            "",
            f"{speed['env_steps']} environment steps in {speed['wall_seconds']:.1f} s with {speed['workers']} "
            f"worker(s): {speed['steps_per_second']:.1f} steps/s overall, "
            f"{speed['episode_steps_per_second']:.1f} steps/s per worker inside episodes.",
        ]
    if speed.get("episodes_resumed"):
        lines += ["", f"{speed['episodes_resumed']} episode(s) resumed from an interrupted run's episodes.jsonl."]
    return "\n".join(lines) + "\n"


def image_size_text(results: dict[str, Any]) -> str:
    """`32 px (the policy's own)` from the summary, or the configured size of a report written before it said why."""
    chosen = results["summary"].get("image_size")
    if chosen is None:
        return f"{results['config']['image_size']} px"
    return ImageSize(chosen["pixels"], chosen["source"], chosen.get("policy_pixels")).describe()


def bar_chart(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Success rate by perturbation (LIBERO-Plus columns) and by task, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    plus = {k: v for k, v in summary["libero_plus"].items() if v is not None}
    tasks = summary["by_task"]
    fig, axes = plt.subplots(
        1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [max(len(plus), 2), max(len(tasks), 2)]}
    )
    for ax, labels, values, title in (
        (axes[0], list(plus), [100 * v for v in plus.values()], "By perturbation (LIBERO-Plus)"),
        (
            axes[1],
            [str(r["task_id"]) for r in tasks.values()],
            [100 * (r["success_rate"] or 0.0) for r in tasks.values()],  # None: only errors ran
            "By task",
        ),
    ):
        bars = ax.bar(labels, values, color="#4C72B0")
        ax.set_ylim(0, 105)
        ax.set_ylabel("success (%)")
        ax.set_title(title)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.tick_params(axis="x", labelrotation=30)
    axes[1].set_xlabel("task id")
    fig.suptitle(f"{results['config']['suite']}: {results['config']['policy_name']}")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
