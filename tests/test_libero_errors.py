"""An episode that raises does not end an evaluation: it is recorded as an error row, the others run, the reports
count it apart from failures, the CLI exits 1 naming it, and `--resume` keeps it unless `--retry-errors`.

The failing episodes are real: a saved CNN policy whose embedding of one task is NaN plays NaN actions on that task
only, which `LiberoEnv.step` refuses (`ValueError: Action has NaN/inf values`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_ckt.libero.liberoplus import liberoplus_import_error
from peft_ckt.libero.runtime import libero_import_error

pytestmark = [
    pytest.mark.libero,
    pytest.mark.skipif(libero_import_error() is not None, reason=f"libero extra: {libero_import_error()}"),
]
needs_liberoplus = pytest.mark.skipif(
    liberoplus_import_error() is not None, reason=f"official LIBERO-Plus not installed: {liberoplus_import_error()}"
)


def _cnn_policy(folder: Path, instructions: list[str], broken: list[int]) -> Path:
    """A 32 px CNN policy for `instructions` whose task embeddings `broken` are NaN (NaN actions on those tasks)."""
    import torch

    from peft_ckt.libero.policies.cnn import CNNPolicy

    torch.manual_seed(0)
    policy = CNNPolicy(instructions, image_size=32, chunk_size=4, n_action_steps=4, feature_dim=16, hidden_dim=32)
    with torch.no_grad():
        for index in broken:
            policy.task_embedding.weight[index] = float("nan")
    policy.save_pretrained(folder)
    return folder


def _object_instructions(count: int) -> list[str]:
    from peft_ckt.libero import list_tasks

    return [task.language for task in list_tasks("libero_object")[:count]]


def test_eval_libero_records_an_episode_that_raises_and_goes_on(tmp_path, capsys):
    from peft_ckt.commands import main

    instructions = _object_instructions(2)
    policy = _cnn_policy(tmp_path / "policy", instructions, broken=[1])
    out = tmp_path / "eval"
    argv = [
        "eval-libero", "--suite", "libero_object", "--tasks", "0,1", "--episodes", "1", "--policy", str(policy),
        "--max-steps", "3", "--workers", "0", "--no-progress", "--output", str(out),
    ]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    [error_line] = [line for line in captured.err.splitlines() if line.startswith("  ")]
    assert error_line.startswith("  task 1 (") and "init 0, none: ValueError: Action has NaN/inf values" in error_line
    assert "1 episode(s) ended in an error" in captured.err and "--retry-errors" in captured.err

    results = json.loads((out / "results.json").read_text())
    ok, failed = results["episodes"]
    assert ok["task_id"] == 0 and ok["success"] is False and ok["steps"] == 3 and "error" not in ok
    assert failed["task_id"] == 1 and failed["init_index"] == 0 and failed["success"] is None
    assert failed["task"] == "pick_up_the_cream_cheese_and_place_it_in_the_basket"
    assert failed["error"]["type"] == "ValueError" and "NaN" in failed["error"]["message"]
    assert "env.py" in failed["error"]["where"]
    summary = results["summary"]
    # The error is neither a failure nor a success: the rates are over the one episode that ended.
    assert summary["num_episodes"] == 1 and summary["num_errors"] == 1 and summary["success_rate"] == 0.0
    assert summary["by_perturbation"]["none"] == {"success_rate": 0.0, "episodes": 1, "errors": 1}
    assert summary["by_task"][failed["task"]] == {"task_id": 1, "success_rate": None, "episodes": 0, "errors": 1}
    assert summary["errors"][0]["task_id"] == 1 and summary["errors"][0]["type"] == "ValueError"
    assert results["speed"]["episodes_errored"] == 1 and results["speed"]["env_steps"] == 3
    report = (out / "results.md").read_text()
    assert "| Task | Episodes | Success | Errors |" in report and "| 1: pick_up_the_cream_cheese" in report
    assert "1 episode(s) ended in an error: not counted as failures" in report

    # --resume keeps the error row (nothing runs) and still exits 1 naming it.
    assert main([*argv, "--resume"]) == 1
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2
    again = json.loads((out / "results.json").read_text())
    assert again["summary"] == summary and again["speed"]["episodes_resumed"] == 2
    with pytest.raises(SystemExit, match="--retry-errors needs --resume"):
        main([*argv, "--retry-errors"])

    # The policy repaired in place: --retry-errors runs the error row again, and it replaces the error.
    _cnn_policy(policy, instructions, broken=[])
    capsys.readouterr()
    assert main([*argv, "--resume", "--retry-errors"]) == 0
    assert "error" not in capsys.readouterr().err
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 3
    retried = json.loads((out / "results.json").read_text())
    assert [e.get("error") for e in retried["episodes"]] == [None, None]
    assert retried["summary"]["num_episodes"] == 2 and retried["summary"]["num_errors"] == 0
    assert retried["speed"]["episodes_run"] == 1 and retried["speed"]["episodes_resumed"] == 1


@needs_liberoplus
def test_official_benchmark_records_errors_apart(tmp_path, capsys):
    from peft_ckt.commands import main

    policy = _cnn_policy(tmp_path / "policy", _object_instructions(1), broken=[0])
    out = tmp_path / "plus"
    argv = [
        "eval-libero", "--benchmark", "libero-plus", "--suite", "libero_object", "--policy", str(policy),
        "--dimensions", "camera,robot", "--limit-per-dimension", "1", "--max-steps", "2", "--workers", "0",
        "--no-progress", "--output", str(out),
    ]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(lines) == 2 and all("init 0: ValueError: Action has NaN/inf values" in line for line in lines)
    assert "Traceback" not in err
    results = json.loads((out / "results.json").read_text())
    assert sorted(e["dimension"] for e in results["episodes"]) == ["camera", "robot"]
    assert all(e["success"] is None and e["error"]["type"] == "ValueError" for e in results["episodes"])
    summary = results["summary"]
    assert summary["Camera"] is None and summary["Robot"] is None and summary["Total"] is None
    assert summary["num_episodes"] == 0 and summary["num_errors"] == 2
    assert summary["columns"]["Camera"]["errors"] == 1 and summary["columns"]["Camera"]["tasks_run"] == 0
    assert {e["dimension"] for e in summary["errors"]} == {"camera", "robot"}
    report = (out / "results.md").read_text()
    assert "| Complete | Errors |" in report and "| Camera | 0 | 0 | 396 | no | 1 |" in report
    assert "2 episode(s) ended in an error" in report
    # Resumed without --retry-errors: the error rows stay, nothing runs again.
    assert main([*argv, "--resume"]) == 1
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
