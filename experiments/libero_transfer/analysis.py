"""The pre-registered analysis (docs/protocol.md, "Endpoints and analysis") of a question's rollouts.

Rows are episodes with `policy_id` (`"student+ckt@p0a1"`: policy, pretraining seed p, adapter seed a; the teacher
and the student have `@p0` only, the CNN reference `@c0`), `task_id`, `init_index`, `perturbation`, `success`.
An episode that raised (`"error"` in its row, `success: None`) is neither a success nor a failure: it is left out of
every rate and of every pair it would be part of, and counted apart (`errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peft_ckt.libero.metrics import (
    compare_successes,
    match_episodes,
    paired_comparison,
    paired_minimum_detectable_difference,
    success_cell,
    transfer_efficiency,
    transfer_efficiency_interval,
)

KEY = ("training", "task_id", "init_index", "perturbation")
# The rows that are not controls: the primary comparison's policies and the CNN reference.
PRIMARY_ROWS = ("teacher", "student", "student+ckt", "student+lora", "cnn")


def policy_id(policy: str, pretrain_seed: int | None = None, adapter_seed: int | None = None, cnn: int | None = None):
    if cnn is not None:
        return f"{policy}@c{cnn}"
    return f"{policy}@p{pretrain_seed}" + ("" if adapter_seed is None else f"a{adapter_seed}")


def split_id(pid: str) -> tuple[str, str]:
    policy, _, training = pid.rpartition("@")
    return policy, training


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts (with Wilson intervals) perturbed, clean, per kind and per task; episodes that raised apart."""
    errors = [r for r in rows if r.get("error")]
    rows = [r for r in rows if not r.get("error")]

    def cell(subset):
        return success_cell(sum(bool(r["success"]) for r in subset), len(subset))

    perturbed = [r for r in rows if r["perturbation"] != "none"]
    kinds = sorted({r["perturbation"] for r in rows})
    tasks = sorted({r["task_id"] for r in rows})
    return {
        "all": cell(rows),
        "perturbed": cell(perturbed),
        "clean": cell([r for r in rows if r["perturbation"] == "none"]),
        "by_perturbation": {k: cell([r for r in rows if r["perturbation"] == k]) for k in kinds},
        "by_task": {str(t): cell([r for r in rows if r["task_id"] == t]) for t in tasks},
        "errors": len(errors),
    }


def policy_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every policy's summary pooled over its trainings, each training's, and the run-to-run spread (the range of
    the trainings' perturbed and clean rates)."""
    by_policy: dict[str, dict[str, list]] = {}
    for row in rows:
        policy, training = split_id(row["policy_id"])
        by_policy.setdefault(policy, {}).setdefault(training, []).append(row)
    out = {}
    for policy, trainings in by_policy.items():
        per = {training: summarize(r) for training, r in sorted(trainings.items())}
        pooled = summarize([r for rs in trainings.values() for r in rs])
        spread = {
            split: [
                min(s[split]["success_rate"] or 0 for s in per.values()),
                max(s[split]["success_rate"] or 0 for s in per.values()),
            ]
            for split in ("perturbed", "clean")
        }
        out[policy] = {"pooled": pooled, "trainings": per, "num_trainings": len(per), "spread": spread}
    return out


def _rows_of(
    rows, policy: str, perturbed_only: bool, trainings: list[str] | None = None, kinds: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """A policy's rows with a `training` field; a pretrained model's rows (`@p0`) repeated for every adapter training
    of that pretraining seed in `trainings`, so that an adapter pairs with its own student. `kinds`: only the
    episodes of these perturbation kinds ("none": clean), in place of `perturbed_only`."""
    out = []
    for row in rows:
        name, training = split_id(row["policy_id"])
        if kinds is not None:
            wanted = row["perturbation"] in kinds
        else:
            wanted = not (perturbed_only and row["perturbation"] == "none")
        if name != policy or not wanted:
            continue
        if trainings is not None and "a" not in training:
            out += [{**row, "training": t} for t in trainings if t.startswith(training + "a")]
        else:
            out.append({**row, "training": training})
    return out


def paired(
    rows, first: str, second: str, perturbed_only: bool, resamples: int, seed: int, kinds: Sequence[str] | None = None
) -> dict[str, Any]:
    """`first` against `second` over their matched episodes (trainings of `first` that `second` also has); `kinds`:
    only those perturbation kinds' episodes."""
    first_rows = _rows_of(rows, first, perturbed_only, kinds=kinds)
    trainings = sorted({r["training"] for r in first_rows})
    second_rows = [r for r in _rows_of(rows, second, perturbed_only, trainings, kinds) if r["training"] in trainings]
    first_rows = [r for r in first_rows if r["training"] in {s["training"] for s in second_rows}]
    if not first_rows:
        return {"first": first, "second": second, "episodes": 0}
    # A pair with an episode that raised on either side is dropped (and counted): it has no outcome to compare.
    errored = {tuple(r[k] for k in KEY) for r in first_rows + second_rows if r.get("error")}
    first_rows = [r for r in first_rows if tuple(r[k] for k in KEY) not in errored]
    second_rows = [r for r in second_rows if tuple(r[k] for k in KEY) not in errored]
    pairs = match_episodes(first_rows, second_rows, KEY)
    result = paired_comparison(pairs, cluster_levels=(0, (1, 2)), num_resamples=resamples, seed=seed)
    result.update(
        first_policy=first,
        second_policy=second,
        trainings=sorted({p[0][0] for p in pairs}),
        pairs_with_errors=len(errored),
    )
    discordance = (result["first_only"] + result["second_only"]) / result["episodes"]
    result["minimum_detectable_difference"] = (
        round(paired_minimum_detectable_difference(result["episodes"], discordance), 4) if discordance > 0 else None
    )
    return result


def efficiency(rows, adapted: str, perturbed_only: bool, resamples: int, seed: int) -> dict[str, Any]:
    """`adapted`'s transfer efficiency over matched episodes: each adapter training's episodes with those of its own
    student and teacher (the same pretraining seed), the bootstrap as in `paired`. Episodes that raised are left out."""
    adapted_rows = _rows_of(rows, adapted, perturbed_only)
    trainings = sorted({r["training"] for r in adapted_rows})
    student = _rows_of(rows, "student", perturbed_only, trainings)
    teacher = _rows_of(rows, "teacher", perturbed_only, trainings)
    common = {r["training"] for r in student} & {r["training"] for r in teacher}
    together = [r for r in adapted_rows + student + teacher if r["training"] in common]
    errored = {tuple(r[k] for k in KEY) for r in together if r.get("error")}

    def kept(subset):
        return [r for r in subset if r["training"] in common and tuple(r[k] for k in KEY) not in errored]

    adapted_rows = kept(adapted_rows)
    if not adapted_rows:
        return {"policy": adapted, "episodes": 0}
    with_student = match_episodes(adapted_rows, kept(student), KEY)
    with_teacher = match_episodes(adapted_rows, kept(teacher), KEY)
    triples = [(key, a, s, t) for (key, a, s), (_, _, t) in zip(with_student, with_teacher)]
    result = transfer_efficiency_interval(triples, cluster_levels=(0, (1, 2)), num_resamples=resamples, seed=seed)
    return {"policy": adapted, **result, "trainings": sorted(common), "episodes_with_errors": len(errored)}


def official_comparisons(rows: list[dict[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    """The official LIBERO-Plus sample (rows with `task` and `dimension`): CKT against LoRA and each adapter against
    the student, by the registered Fisher's exact test on the counts pooled over trainings, and by exact McNemar over
    the episodes matched on training and task with the bootstrap of `paired` (each training replays the same tasks,
    which the pooled test counts as independent)."""
    played = [{**r, "task_id": r["task"], "perturbation": r["dimension"]} for r in rows]
    names = {split_id(r["policy_id"])[0] for r in played}

    def pooled(policy: str) -> dict[str, Any]:
        mine = [r for r in played if split_id(r["policy_id"])[0] == policy and not r.get("error")]
        return success_cell(sum(bool(r["success"]) for r in mine), len(mine))

    out = {}
    for first, second in (("student+ckt", "student+lora"), ("student+ckt", "student"), ("student+lora", "student")):
        if first in names and second in names:
            out[f"{first} vs {second}"] = {
                "fisher": compare_successes(pooled(first), pooled(second)),
                "paired": paired(played, first, second, False, resamples, seed),
            }
    return out


def kind_groups(values: dict[str, Any]) -> dict[str, list[str]]:
    """The test kinds the teacher never trained on (`held-out kinds`), those it did (`teacher's kinds`), and
    `clean`; a group without a kind in the test set is left out."""
    tested = [k for k in values["data"]["test"]["kinds"] if k != "none"]
    taught = set(values["data"].get("teacher", {}).get("kinds", []))
    groups = {
        "held-out kinds": [k for k in tested if k not in taught],
        "teacher's kinds": [k for k in tested if k in taught],
        "clean": ["none"] if "none" in values["data"]["test"]["kinds"] else [],
    }
    return {label: kinds for label, kinds in groups.items() if kinds}


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, monotone)."""
    order = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p_values[name]))
        adjusted[name] = running
    return adjusted


def decide(result: dict[str, Any], alpha: float) -> str:
    if not result.get("episodes"):
        return "not run"
    low, high = result["bootstrap_ci95"]
    if result["mcnemar_p"] < alpha and low > 0:
        return "positive"
    if result["mcnemar_p"] < alpha and high < 0:
        return "negative"
    return "null"


def analyse(values: dict[str, Any], rows: list[dict[str, Any]], resamples: int | None = None) -> dict[str, Any]:
    """Rows, the primary comparison with its decision, the manipulation check (Q1) and the secondary comparisons."""
    primary_spec = values["primary"]
    resamples = resamples or primary_spec["interval"]["resamples"]
    seed = primary_spec["interval"]["seed"]
    perturbed_only = values["question"] == "Q1"
    table = policy_rows(rows)
    primary = paired(rows, primary_spec["first"], primary_spec["second"], perturbed_only, resamples, seed)
    primary["decision"] = decide(primary, primary_spec["alpha"])
    primary["endpoint"] = primary_spec["endpoint"]

    def rate(policy: str, split: str) -> float | None:
        return table[policy]["pooled"][split]["success_rate"] if policy in table else None

    split = "perturbed" if perturbed_only else "all"
    teacher, student, ckt = rate("teacher", split), rate("student", split), rate("student+ckt", split)
    if None not in (teacher, student, ckt):
        primary["transfer_efficiency"] = transfer_efficiency(ckt, student, teacher)
    out: dict[str, Any] = {"rows": table, "primary": primary}
    if "teacher" in table and "student" in table:
        out["transfer_efficiency"] = {
            policy: efficiency(rows, policy, perturbed_only, resamples, seed)
            for policy in ("student+ckt", "student+lora")
            if policy in table
        }
        if "student+ckt" in out["transfer_efficiency"]:
            primary["transfer_efficiency_ci95"] = out["transfer_efficiency"]["student+ckt"].get("ci95")
    check = values.get("manipulation_check")
    if check:
        lead = None if None in (teacher, student) else 100 * (teacher - student)
        cnn_clean = rate("cnn", "clean")
        adapted = {p: rate(p, "clean") for p in ("student+ckt", "student+lora")}
        ratios = {p: (None if not cnn_clean or v is None else v / cnn_clean) for p, v in adapted.items()}
        # Each criterion passes, fails, or cannot be judged yet (a row not played: the CNN runs in a later phase).
        # One failed criterion fails the check; otherwise one unjudged criterion leaves it open (None).
        criteria = [None if lead is None else lead >= check["teacher_minus_student_points"]]
        criteria += [None if r is None else r >= check["adapted_clean_vs_cnn_ratio"] for r in ratios.values()]
        passed = False if False in criteria else (None if None in criteria else True)
        out["manipulation_check"] = {
            "teacher_minus_student_points": lead,
            "adapted_clean_vs_cnn": ratios,
            "passed": passed,
        }
        if out["manipulation_check"]["passed"] is False:
            primary["decision"] = f"inconclusive (no headroom); the comparison alone: {primary['decision']}"
    secondary = {}
    for first, second in (("student+ckt", "student"), ("student+lora", "student")):
        if first in table and second in table:
            secondary[f"{first} vs {second}"] = paired(rows, first, second, perturbed_only, resamples, seed)
    # The primary pair on the kinds the teacher never trained on, on the teacher's own kinds, and clean (registered
    # secondaries: a teacher's robustness that transfers should show on its own kinds first).
    if "student+ckt" in table and "student+lora" in table:
        for label, kinds in kind_groups(values).items():
            secondary[f"student+ckt vs student+lora, {label}"] = {
                **paired(rows, "student+ckt", "student+lora", perturbed_only, resamples, seed, kinds),
                "kinds": kinds,
            }
    for control in table:
        if control not in PRIMARY_ROWS:
            secondary[f"{control} vs student+ckt"] = paired(
                rows, control, "student+ckt", perturbed_only, resamples, seed
            )
    adjusted = holm({name: r["mcnemar_p"] for name, r in secondary.items() if r.get("episodes")})
    for name, p in adjusted.items():
        secondary[name]["holm_p"] = p
    out["secondary"] = secondary
    return out


__all__ = [
    "PRIMARY_ROWS",
    "analyse",
    "decide",
    "efficiency",
    "holm",
    "kind_groups",
    "official_comparisons",
    "paired",
    "policy_id",
    "policy_rows",
    "split_id",
    "summarize",
]
