"""`eval-libero --backend ray`: a real local Ray instance (2 CPUs) gives the process backend's results."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from peft_ckt.libero.liberoplus import liberoplus_import_error
from peft_ckt.libero.runtime import libero_import_error
from peft_ckt.libero.workers import ray_import_error

_REASON = libero_import_error() or ray_import_error()


def needs_ray(test):
    test = pytest.mark.libero(test)
    return pytest.mark.skipif(_REASON is not None, reason=f"libero or ray extra not installed: {_REASON}")(test)


# Scripted-expert episodes that end differently (successes after different step counts, failures at the limit).
EVAL_ARGS = ["eval-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "1", "--perturbation",
             "none,robot,camera", "--max-steps", "170", "--image-size", "32", "--no-progress"]  # fmt: skip


def _comparable(results: dict) -> dict:
    """results.json without what measures time or names the backend."""
    episodes = [{k: v for k, v in row.items() if k != "seconds"} for row in results["episodes"]]
    return {"config": results["config"], "episodes": episodes, "summary": results["summary"]}


def _ray_processes() -> set[int]:
    """Processes of a Ray instance (raylet, GCS, workers, agents) on this machine."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("ray::") or "/site-packages/ray/" in cmdline:
            pids.add(int(entry.name))
    return pids


@pytest.fixture
def no_ray_leftovers():
    before = _ray_processes()
    yield
    deadline = time.monotonic() + 20
    while (_ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes() - before, "Ray processes outlived the evaluation"


def test_backend_flags_fail_with_one_line(tmp_path):
    from peft_ckt.commands import main

    out = str(tmp_path / "out")
    with pytest.raises(SystemExit, match="--ray-address needs --backend ray"):
        main([*EVAL_ARGS, "--output", out, "--ray-address", "auto"])
    with pytest.raises(SystemExit, match="--ray-gpus-per-worker needs --backend ray"):
        main([*EVAL_ARGS, "--output", out, "--ray-gpus-per-worker", "1"])
    if ray_import_error() is None:
        with pytest.raises(SystemExit, match="--backend ray needs --workers >= 1"):
            main([*EVAL_ARGS, "--output", out, "--backend", "ray", "--workers", "0"])
    assert not Path(out).exists()
    if _REASON is None:  # nobody listens there: one line at once, not Ray's minutes of retries
        with pytest.raises(SystemExit, match="cannot reach the Ray cluster at 127.0.0.1:1"):
            main([*EVAL_ARGS, "--output", out, "--backend", "ray", "--ray-address", "127.0.0.1:1"])


@needs_ray
def test_ray_backend_gives_the_process_backend_results_and_resumes(tmp_path, no_ray_leftovers, monkeypatch):
    from peft_ckt.commands import main
    from peft_ckt.libero.records import read_records

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    process, ray = tmp_path / "process", tmp_path / "ray"
    assert main([*EVAL_ARGS, "--workers", "2", "--output", str(process)]) == 0
    assert main([*EVAL_ARGS, "--workers", "2", "--backend", "ray", "--output", str(ray)]) == 0
    expected = json.loads((process / "results.json").read_text())
    got = json.loads((ray / "results.json").read_text())
    assert _comparable(got) == _comparable(expected)
    assert got["speed"]["backend"] == "ray" and got["speed"]["workers"] == 2
    assert len({(r["success"], r["steps"]) for r in got["episodes"]}) > 1  # the episodes do differ
    assert len(read_records(ray / "episodes.jsonl")) == 3

    # An interrupted run (here: the process backend's first 2 episodes) resumes on Ray to the same results.
    torn = tmp_path / "torn"
    torn.mkdir()
    for name in ("eval_config.json", "episodes.jsonl"):
        (torn / name).write_bytes((process / name).read_bytes())
    lines = (torn / "episodes.jsonl").read_text().splitlines(keepends=True)
    (torn / "episodes.jsonl").write_text("".join(lines[:2]))
    assert main([*EVAL_ARGS, "--workers", "1", "--backend", "ray", "--resume", "--output", str(torn)]) == 0
    resumed = json.loads((torn / "results.json").read_text())
    assert resumed["speed"]["episodes_resumed"] == 2 and resumed["speed"]["episodes_run"] == 1
    assert _comparable(resumed) == _comparable(expected)


@needs_ray
@pytest.mark.skipif(liberoplus_import_error() is not None, reason=f"no LIBERO-Plus: {liberoplus_import_error()}")
def test_ray_backend_official_liberoplus_task(tmp_path, no_ray_leftovers, monkeypatch):
    from peft_ckt.commands import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["eval-libero", "--benchmark", "libero-plus", "--suite", "libero_object", "--dimensions", "camera",
            "--limit-per-dimension", "1", "--max-steps", "3", "--no-progress"]  # fmt: skip
    assert main([*argv, "--workers", "0", "--output", str(tmp_path / "inline")]) == 0
    assert main([*argv, "--workers", "1", "--backend", "ray", "--output", str(tmp_path / "ray")]) == 0
    expected = json.loads((tmp_path / "inline" / "results.json").read_text())
    got = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert _comparable(got) == _comparable(expected)
    assert got["episodes"][0]["steps"] == 3 and got["speed"]["backend"] == "ray"
    assert os.environ.get("RAY_ADDRESS") is None  # a local instance was started and stopped
