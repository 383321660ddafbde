"""The report of `evaluate_liberoplus`: the published table's seven columns over what ran, what did not run and what
is complete; markdown and a bar chart."""

from __future__ import annotations

import os
from typing import Any

from ...atomic import atomic_path
from ..liberoplus import DIMENSIONS
from ..metrics import percent, success_rate
from ..runner import episode_errors, is_error
from .libero import errors_paragraph, image_size_text

__all__ = ["TOTAL_OVER_SUBSET", "bar_chart_official", "markdown_report_official", "summarize_official"]

TOTAL_OVER_SUBSET = "Total (runnable subset)"


def summarize_official(
    rows: list[dict[str, Any]],
    selected: dict[str, int],
    not_runnable: dict[str, int],
    official: dict[str, int],
    levels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The published table's columns over the episodes that ran, with what did not run and what is complete.

    `selected` / `not_runnable` / `official`: per column, the tasks chosen, those of them not runnable offline, and
    the suite's official task count. A column is complete when every official task of it ran.
    Episodes that raised (error rows) are in no rate and no task count: `errors` per column, `num_errors`, `errors`.
    """
    errors = episode_errors(rows)
    episodes = [e for e in rows if not is_error(e)]
    columns: dict[str, float | None] = {}
    detail: dict[str, dict[str, Any]] = {}
    for dimension, column in DIMENSIONS.items():
        ran = [e for e in episodes if e["dimension"] == dimension]
        columns[column] = success_rate(ran)
        ran_tasks = len({e["task"] for e in ran})
        detail[column] = {
            "success_rate": columns[column],
            "episodes": len(ran),
            "errors": sum(e["dimension"] == dimension for e in errors),
            "tasks_selected": selected.get(column, 0),
            "tasks_run": ran_tasks,
            "not_runnable": not_runnable.get(column, 0),
            "official_tasks": official.get(column, 0),
            "complete": ran_tasks == official.get(column, 0) and ran_tasks > 0,
        }
    complete = all(d["complete"] for d in detail.values())
    total = success_rate(episodes)
    summary: dict[str, Any] = {
        **columns,
        "Total": total,
        "total_label": "Total" if complete else TOTAL_OVER_SUBSET,
        "complete": complete,
        "not_runnable": {c: d["not_runnable"] for c, d in detail.items()},
        "columns": detail,
        "num_episodes": len(episodes),
        "num_successes": int(sum(e["success"] for e in episodes)),
        "num_not_runnable": int(sum(not_runnable.values())),
        "num_errors": len(errors),
        "errors": [
            {**{k: e.get(k) for k in ("suite", "task_index", "task", "dimension", "init_index")}, **e["error"]}
            for e in errors
        ],
    }
    if levels is not None:
        by_level: dict[str, dict[str, Any]] = {}
        for level in sorted({levels[e["task"]] for e in episodes if e["task"] in levels}):
            of_level = [e for e in episodes if levels.get(e["task"]) == level]
            by_level[level] = {
                DIMENSIONS[d]: success_rate([e for e in of_level if e["dimension"] == d]) for d in DIMENSIONS
            } | {
                "Total": success_rate(of_level),
                "episodes": len(of_level),
            }
        summary["by_level"] = by_level
        summary["unclassified_episodes"] = sum(e["task"] not in levels for e in episodes)
    return summary


def markdown_report_official(results: dict[str, Any]) -> str:
    summary, config = results["summary"], results["config"]
    columns = list(DIMENSIONS.values())
    total_label = summary["total_label"]
    with_errors = bool(summary.get("num_errors"))
    lines = [
        f"# Official LIBERO-Plus tasks: {config['suite']}",
        "",
        f"Policy `{config['policy']}`, {summary['num_episodes']} episodes ({config['episodes_per_task']} per task), "
        f"{image_size_text(results)}, seed {config['seed']}, {config['settle_steps']} settle steps, "
        f"{config['max_steps']} steps at most. Success rate in %.",
        "",
        "| Policy | " + " | ".join(columns) + f" | {total_label} |",
        "|---|" + "---:|" * (len(columns) + 1),
        f"| {config['policy_name']} | "
        + " | ".join(percent(summary[c]) for c in columns)
        + f" | {percent(summary['Total'])} |",
        "",
        "| Column | Tasks run | Not runnable offline | Official tasks | Complete |"
        + (" Errors |" if with_errors else ""),
        "|---|---:|---:|---:|---|" + ("---:|" if with_errors else ""),
    ]
    for column, row in summary["columns"].items():
        lines.append(
            f"| {column} | {row['tasks_run']} | {row['not_runnable']} | {row['official_tasks']} | "
            f"{'yes' if row['complete'] else 'no'} |" + (f" {row.get('errors', 0)} |" if with_errors else "")
        )
    if not summary["complete"]:
        lines += [
            "",
            f"{total_label}: pooled over the episodes that ran; the published Total is over all "
            f"{sum(r['official_tasks'] for r in summary['columns'].values())} official tasks of the suite. "
            f"{summary['num_not_runnable']} selected task(s) need files that are not installed (the benchmark's "
            "assets: --assets PATH).",
        ]
    lines += errors_paragraph(summary)
    if "by_level" in summary:
        lines += ["", "| Level | " + " | ".join(columns) + " | Total | Episodes |", "|---|" + "---:|" * 9]
        for level, row in summary["by_level"].items():
            lines.append(
                f"| {level} | "
                + " | ".join(percent(row[c]) for c in columns)
                + f" | {percent(row['Total'])} | {row['episodes']} |"
            )
    speed = results.get("speed", {})
    if speed.get("episodes_resumed"):
        lines += ["", f"{speed['episodes_resumed']} episode(s) resumed from an interrupted run's episodes.jsonl."]
    return "\n".join(lines) + "\n"


def bar_chart_official(results: dict[str, Any], path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    labels = [*DIMENSIONS.values(), "Total"]
    values = [100 * summary[c] if summary[c] is not None else 0.0 for c in labels]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(labels, values, color=["#4C72B0"] * 7 + ["#DD8452"])
    for bar, label in zip(bars, labels):
        if summary[label] is None:
            bar.set_alpha(0.25)
    ax.bar_label(bars, labels=[percent(summary[c]) for c in labels], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("success (%)")
    ax.set_title(f"Official LIBERO-Plus {results['config']['suite']}: {results['config']['policy_name']}")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
