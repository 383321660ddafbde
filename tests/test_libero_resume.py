"""Interrupted LIBERO runs: `eval-libero` and `collect-libero` killed half-way resume to the same results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from peft_ckt.libero.records import RecordLog, read_records
from peft_ckt.libero.runtime import LiberoConfigError, libero_import_error


def needs_libero(test):
    test = pytest.mark.libero(test)
    reason = f"libero extra not importable: {libero_import_error()}"
    return pytest.mark.skipif(libero_import_error() is not None, reason=reason)(test)


# The real CLI, whose second episode stalls (after the first is recorded) so that the test kills it there.
STALLING_CLI = textwrap.dedent(
    """
    import sys, time
    import peft_ckt.libero.collect as collect
    import peft_ckt.libero.evaluation as evaluation
    from peft_ckt.commands import main

    def stall_at_second(fn):
        calls = []

        def wrapped(job):
            calls.append(job)
            if len(calls) == 2:
                print("stalled", flush=True)
                time.sleep(600)
            return fn(job)

        return wrapped

    evaluation.run_episode = stall_at_second(evaluation.run_episode)
    collect.collect_episode = stall_at_second(collect.collect_episode)
    sys.exit(main(sys.argv[1:]))
    """
)


def _kill_at_second_episode(tmp_path: Path, args: list[str]) -> None:
    """Run the CLI in a subprocess and SIGKILL it while its second episode runs."""
    script = tmp_path / "stalling_cli.py"
    script.write_text(STALLING_CLI)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(script), *args, "--workers", "0", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        line = ""
        while time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
            if line.startswith("stalled"):
                break
        assert line.startswith("stalled"), f"the run did not reach its second episode: {process.stderr.read()}"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()


def _tear_last_line(path: Path) -> None:
    """What a kill in the middle of writing a record leaves: half a line, no newline."""
    with path.open("a") as handle:
        handle.write('{"task_id": 0, "perturbation": "no')


# ----------------------------------------------------------------------------- the record log
def test_record_log_drops_a_torn_last_line_and_cuts_it_before_appending(tmp_path):
    path = tmp_path / "episodes.jsonl"
    log = RecordLog(path)
    assert log.open() == []
    log.append({"a": 1})
    log.close()
    _tear_last_line(path)
    assert read_records(path) == [{"a": 1}]
    with RecordLog(path) as log:
        assert log.open() == [{"a": 1}]
        log.append({"a": 2})
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    # Damage before the last line is not a kill: refused, naming the file and the line.
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(LiberoConfigError, match=r"episodes.jsonl, line 2: not a JSON record"):
        read_records(path)


# ----------------------------------------------------------------------------- episodes independent of the last
@needs_libero
def test_an_episode_does_not_depend_on_the_episode_before_it():
    """A worker reuses its environment: episode k must start as in a fresh one (else a resumed run differs)."""
    import torch

    from peft_ckt.libero.env import LiberoEnv

    torch.set_num_threads(1)
    kwargs = dict(image_size=32, render_images=False, privileged=True, seed=0, max_steps=6)
    reused = LiberoEnv("libero_object", 0, **kwargs)
    reused.reset(0)
    for _ in range(6):  # closes the gripper: robosuite used to carry its command into the next episode
        reused.step(np.full(7, 0.3))
    fresh = LiberoEnv("libero_object", 0, **kwargs)
    try:
        after, first = reused.reset(1), fresh.reset(1)
        np.testing.assert_array_equal(after["observation.state"], first["observation.state"])
        np.testing.assert_array_equal(reused.sim.get_state().flatten(), fresh.sim.get_state().flatten())
    finally:
        reused.close()
        fresh.close()


# ----------------------------------------------------------------------------- eval-libero
EVAL_ARGS = ["eval-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "3", "--max-steps", "40",
             "--image-size", "32"]  # fmt: skip


def _comparable(results: dict) -> dict:
    """results.json without what measures time."""
    episodes = [{k: v for k, v in row.items() if k != "seconds"} for row in results["episodes"]]
    return {"config": results["config"], "episodes": episodes, "summary": results["summary"]}


@needs_libero
def test_eval_killed_half_way_resumes_to_the_same_results(tmp_path):
    from peft_ckt.commands import main

    torn = tmp_path / "torn"
    _kill_at_second_episode(tmp_path, [*EVAL_ARGS, "--output", str(torn)])
    assert len(read_records(torn / "episodes.jsonl")) == 1  # the finished episode was kept
    assert not (torn / "results.json").exists()
    _tear_last_line(torn / "episodes.jsonl")

    # Without --resume the recorded episode is neither overwritten nor mixed with a new run.
    with pytest.raises(SystemExit, match="already holds 1 recorded episode.*--resume"):
        main([*EVAL_ARGS, "--output", str(torn), "--workers", "0", "--no-progress"])
    # A resume with other settings is refused, naming what differs.
    with pytest.raises(SystemExit, match="cannot resume .*max_steps: 40 recorded, 30 now"):
        main([*EVAL_ARGS, "--max-steps", "30", "--output", str(torn), "--workers", "0", "--no-progress", "--resume"])
    assert len(read_records(torn / "episodes.jsonl")) == 1

    assert main([*EVAL_ARGS, "--output", str(torn), "--workers", "0", "--no-progress", "--resume"]) == 0
    resumed = json.loads((torn / "results.json").read_text())
    assert resumed["speed"]["episodes_resumed"] == 1 and resumed["speed"]["episodes_run"] == 2
    assert len(read_records(torn / "episodes.jsonl")) == 3

    straight = tmp_path / "straight"
    assert main([*EVAL_ARGS, "--output", str(straight), "--workers", "0", "--no-progress"]) == 0
    expected = json.loads((straight / "results.json").read_text())
    assert [r["init_index"] for r in expected["episodes"]] == [0, 1, 2]
    assert _comparable(resumed) == _comparable(expected)
    # The first episode's record survived the kill as it was written.
    assert resumed["episodes"][0]["seconds"] == read_records(torn / "episodes.jsonl")[0]["seconds"]


# ----------------------------------------------------------------------------- collect-libero
COLLECT_ARGS = ["collect-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "3", "--max-steps", "6",
                "--keep-failures", "--image-size", "32", "--image-stride", "3"]  # fmt: skip


def _episode_arrays(dataset) -> list[tuple]:
    rows = []
    for episode in dataset.episodes:
        frames = [dataset[i] for i in dataset.episode_indices(episode["episode_index"])]
        rows.append(
            (
                episode["init_index"],
                np.stack([f["observation.state"] for f in frames]),
                np.stack([f["action"] for f in frames]),
                np.stack([f["observation.images.image"] for f in frames]),
            )
        )
    return rows


@needs_libero
def test_collection_killed_half_way_resumes_to_a_complete_dataset(tmp_path):
    from peft_ckt.commands import main
    from peft_ckt.libero.dataset import load_lerobot_dataset

    torn = tmp_path / "torn"
    _kill_at_second_episode(tmp_path, [*COLLECT_ARGS, "--output", str(torn)])
    assert len(read_records(torn / "meta" / "episodes.jsonl")) == 1
    # Leftovers of a kill a moment later: the next episode's frames in the data file without its line, half a line.
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    data_file = torn / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(data_file)
    ghost = table.set_column(
        table.column_names.index("episode_index"), "episode_index", pc.add(table.column("episode_index"), 1)
    )
    pq.write_table(pa.concat_tables([table, ghost]), data_file)
    _tear_last_line(torn / "meta" / "episodes.jsonl")

    # The incomplete folder is reported in one line wherever it is met.
    with pytest.raises(
        FileNotFoundError, match="incomplete dataset: its collection stopped after 1 episode.*--resume"
    ):
        load_lerobot_dataset(torn)
    with pytest.raises(SystemExit, match="holds an interrupted collection .*--resume"):
        main([*COLLECT_ARGS, "--output", str(torn), "--workers", "0", "--no-progress"])
    with pytest.raises(SystemExit, match="cannot resume .*image_size: 32 recorded, 16 now"):
        main([*COLLECT_ARGS, "--image-size", "16", "--output", str(torn), "--workers", "0", "--resume"])

    assert main([*COLLECT_ARGS, "--output", str(torn), "--workers", "0", "--no-progress", "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main([*COLLECT_ARGS, "--output", str(straight), "--workers", "0", "--no-progress"]) == 0

    resumed, expected = load_lerobot_dataset(torn), load_lerobot_dataset(straight)
    assert resumed.num_episodes == expected.num_episodes == 3 and len(resumed) == len(expected) == 18
    assert resumed.hf_dataset["index"] == list(range(18))
    for got, want in zip(_episode_arrays(resumed), _episode_arrays(expected)):
        assert got[0] == want[0]
        for a, b in zip(got[1:], want[1:]):
            np.testing.assert_array_equal(a, b)
    for name in ("info.json", "episodes.jsonl", "stats.json"):
        assert (torn / "meta" / name).read_text() == (straight / "meta" / name).read_text(), name
    assert resumed.tasks == expected.tasks and resumed.episodes == expected.episodes
    # A finished collection resumed again has nothing to do and stays as it is.
    assert main([*COLLECT_ARGS, "--output", str(torn), "--workers", "0", "--no-progress", "--resume"]) == 0
    assert (torn / "meta" / "stats.json").read_text() == (straight / "meta" / "stats.json").read_text()
