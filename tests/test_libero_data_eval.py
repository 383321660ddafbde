"""LeRobot-format datasets (write, collect, load), the policy folder convention and `peft-ckt eval-libero`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from peft_ckt.libero.runtime import libero_import_error

pytestmark = [
    pytest.mark.libero,
    pytest.mark.skipif(
        libero_import_error() is not None, reason=f"libero extra not importable: {libero_import_error()}"
    ),
]


def _episode(rng: np.random.Generator, length: int, size: int = 16):
    images = {
        k: [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(length)]
        for k in ("image", "wrist_image")
    }
    return rng.normal(size=(length, 8)).astype(np.float32), rng.uniform(-1, 1, (length, 7)).astype(np.float32), images


def test_dataset_round_trip(tmp_path):
    import datasets

    from peft_ckt.libero.dataset import LeRobotDatasetWriter, load_lerobot_dataset

    rng = np.random.default_rng(0)
    writer = LeRobotDatasetWriter(tmp_path / "ds", image_size=(16, 16))
    episodes = [_episode(rng, 4), _episode(rng, 3)]
    for i, (states, actions, images) in enumerate(episodes):
        writer.add_episode(states, actions, images, task=f"task {i % 2}", extra={"success": True})
    writer.finalize()
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2 and info["total_frames"] == 7 and info["features"]["action"]["shape"] == [7]
    # LeRobot v3.0: several episodes in one data file, episode and task tables in parquet, stats for every camera.
    assert info["codebase_version"] == "v3.0" and info["data_path"].endswith("file-{file_index:03d}.parquet")
    assert sorted(p.name for p in (tmp_path / "ds" / "data" / "chunk-000").iterdir()) == ["file-000.parquet"]
    meta = tmp_path / "ds" / "meta"
    assert (meta / "tasks.parquet").is_file() and (meta / "episodes" / "chunk-000" / "file-000.parquet").is_file()
    stats = json.loads((meta / "stats.json").read_text())
    assert np.asarray(stats["observation.images.image"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [7]

    # Plain `datasets` reads the parquet files with images decoded.
    raw = datasets.load_dataset("parquet", data_files=str(tmp_path / "ds" / "data" / "*" / "*.parquet"), split="train")
    assert isinstance(raw.features["observation.images.image"], datasets.Image)
    assert {"observation.state", "action", "episode_index", "frame_index", "task_index"} <= set(raw.column_names)
    assert raw[5]["task_index"] == 1

    dataset = load_lerobot_dataset(tmp_path / "ds")
    assert len(dataset) == 7 and dataset.num_episodes == 2
    second = dataset.episode_indices(1)
    item = dataset[second[2]]
    states, actions, images = episodes[1]
    assert item["task"] == "task 1" and item["episode_index"] == 1 and item["frame_index"] == 2
    np.testing.assert_allclose(item["observation.state"], states[2], rtol=1e-6)
    np.testing.assert_allclose(item["action"], actions[2], rtol=1e-6)
    np.testing.assert_array_equal(item["observation.images.wrist_image"], images["wrist_image"][2])  # PNG: lossless
    with pytest.raises(FileExistsError):
        LeRobotDatasetWriter(tmp_path / "ds")
    # The episode metadata (the `success` field) travels in meta/episodes/ and into the arrays of each episode.
    arrays = dataset.episode_arrays()
    assert [e["success"] for e in arrays] == [True, True] and arrays[1]["task"] == "task 1"
    np.testing.assert_array_equal(arrays[1]["image"][2], images["image"][2])
    assert arrays[0]["state"].shape == (4, 8) and arrays[1]["wrist_image"].shape == (3, 16, 16, 3)


def test_dataset_files_take_several_episodes_up_to_their_size(tmp_path):
    from peft_ckt.libero.dataset import LeRobotDatasetWriter, load_lerobot_dataset

    rng = np.random.default_rng(1)
    writer = LeRobotDatasetWriter(tmp_path / "ds", image_size=(16, 16), data_files_size_in_mb=0.004)
    for i in range(3):
        writer.add_episode(*_episode(rng, 3), task="task", extra={"success": i != 1})
    writer.finalize()
    files = sorted(p.name for p in (tmp_path / "ds" / "data" / "chunk-000").iterdir())
    assert len(files) >= 2
    dataset = load_lerobot_dataset(tmp_path / "ds")
    assert [e["data/file_index"] for e in dataset.episodes] == sorted(e["data/file_index"] for e in dataset.episodes)
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in dataset.episodes] == [(0, 3), (3, 6), (6, 9)]
    assert [e["success"] for e in dataset.episode_arrays()] == [True, False, True]


def test_loader_reads_the_v21_folders_written_before(tmp_path):
    """Folders written by earlier versions (v2.1: one parquet per episode, jsonl metadata, a `task` column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from peft_ckt.libero.dataset import encode_png, load_lerobot_dataset
    from peft_ckt.wam.data import read_episodes

    root = tmp_path / "v21"
    rng = np.random.default_rng(2)
    (root / "data" / "chunk-000").mkdir(parents=True)
    for ep, length in enumerate([2, 3]):
        states, actions, images = _episode(rng, length)
        table = {
            "observation.state": states.tolist(),
            **{
                f"observation.images.{k}": [{"bytes": encode_png(f), "path": None} for f in v]
                for k, v in images.items()
            },
            "action": actions.tolist(),
            "timestamp": [t / 20 for t in range(length)],
            "frame_index": list(range(length)),
            "episode_index": [ep] * length,
            "index": list(range(2 * ep, 2 * ep + length)),
            "task_index": [ep] * length,
            "task": [f"task {ep}"] * length,
        }
        pq.write_table(pa.table(table), root / "data" / "chunk-000" / f"episode_{ep:06d}.parquet")
    meta = root / "meta"
    meta.mkdir()
    (meta / "episodes.jsonl").write_text(
        "".join(json.dumps({"episode_index": e, "tasks": [f"task {e}"], "length": n, "success": e == 1}) + "\n"
                for e, n in enumerate([2, 3]))
    )  # fmt: skip
    (meta / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": e, "task": f"task {e}"}) + "\n" for e in (0, 1))
    )
    features = {f"observation.images.{k}": {"dtype": "image", "shape": [16, 16, 3]} for k in ("image", "wrist_image")}
    (meta / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 20, "features": features}))
    dataset = load_lerobot_dataset(root)
    assert dataset.num_episodes == 2 and dataset[3]["task"] == "task 1"
    # Read, yes; appended to in the old layout, no (one line instead of a KeyError deep in the writer).
    from peft_ckt.libero.dataset import LeRobotDatasetWriter

    (meta / "info.json").unlink()
    with pytest.raises(ValueError, match="earlier peft-ckt in the LeRobot v2.1 layout"):
        LeRobotDatasetWriter(root, image_size=(16, 16), resume=True)
    (meta / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 20, "features": features}))
    episodes = read_episodes(root)
    assert [e["success"] for e in episodes] == [False, True] and episodes[1]["image"].shape == (3, 16, 16, 3)


def test_loader_reads_v3_video_layout(tmp_path):
    """The Hub's LeRobot v3.0 layout: several episodes per parquet / MP4 file, episode metadata in parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from peft_ckt.libero.dataset import load_lerobot_dataset
    from peft_ckt.libero.evaluation import write_video

    root = tmp_path / "hub_libero"
    fps, lengths = 10, [3, 4]
    # Flat colours survive H.264: frame t of the file has grey level 20 * t.
    frames = [np.full((16, 16, 3), 20 * t, dtype=np.uint8) for t in range(sum(lengths))]
    (root / "videos" / "observation.images.image" / "chunk-000").mkdir(parents=True)
    write_video(root / "videos" / "observation.images.image" / "chunk-000" / "file-000.mp4", frames, fps=fps)
    rows = {
        "observation.state": [],
        "action": [],
        "timestamp": [],
        "frame_index": [],
        "episode_index": [],
        "index": [],
        "task_index": [],
    }
    for ep, length in enumerate(lengths):
        for t in range(length):
            rows["observation.state"].append([float(ep)] * 8)
            rows["action"].append([float(t)] * 7)
            rows["timestamp"].append(t / fps)
            rows["frame_index"].append(t)
            rows["episode_index"].append(ep)
            rows["index"].append(len(rows["index"]))
            rows["task_index"].append(ep)
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(rows), root / "data" / "chunk-000" / "file-000.parquet")
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    key = "observation.images.image"
    episodes = pa.table(
        {
            "episode_index": [0, 1],
            "length": lengths,
            f"videos/{key}/chunk_index": [0, 0],
            f"videos/{key}/file_index": [0, 0],
            f"videos/{key}/from_timestamp": [0.0, lengths[0] / fps],
        }
    )
    pq.write_table(episodes, root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(
        pa.table({"task_index": [0, 1], "task": ["open the drawer", "close the drawer"]}),
        root / "meta" / "tasks.parquet",
    )
    info = {
        "codebase_version": "v3.0",
        "fps": fps,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            key: {"dtype": "video", "shape": [16, 16, 3]},
            "observation.state": {"dtype": "float32", "shape": [8]},
            "action": {"dtype": "float32", "shape": [7]},
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info))

    dataset = load_lerobot_dataset(root)
    assert len(dataset) == 7 and dataset.num_episodes == 2
    item = dataset[dataset.episode_indices(1)[2]]  # episode 1, frame 2 -> file frame 3 + 2 = 5
    assert item["task"] == "close the drawer"
    assert abs(float(item[key].mean()) - 100) < 6


def test_collect_writes_a_loadable_dataset(tmp_path):
    from peft_ckt.commands import main
    from peft_ckt.libero.dataset import load_lerobot_dataset

    out = tmp_path / "demos"
    code = main(
        ["collect-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "1", "--max-steps", "6",
         "--keep-failures", "--image-size", "32", "--workers", "0", "--output", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    dataset = load_lerobot_dataset(out)
    assert len(dataset) == 6
    item = dataset[5]
    assert item["observation.images.image"].shape == (32, 32, 3) and item["observation.images.image"].std() > 5
    assert "alphabet soup" in item["task"]
    # The recorded actions are the expert's: it moves towards the soup can from the first step.
    assert np.abs(item["action"][:3]).max() > 0.05


def test_collected_episodes_are_written_in_job_order_whatever_order_the_workers_finish(tmp_path):
    from peft_ckt.libero.collect import CollectJob, collect_into
    from peft_ckt.libero.dataset import LeRobotDatasetWriter

    # The first job runs 40 times longer than the second: with two workers the second finishes first.
    jobs = [
        ("demos", CollectJob("libero_object", task, 0, "none", 1, 32, 7, True, steps))
        for task, steps in ((0, 160), (1, 4))
    ]
    writer = LeRobotDatasetWriter(tmp_path / "demos", image_size=(32, 32))
    written = [result["task_id"] for _, result, _ in collect_into(jobs, {"demos": writer}, 2, "collect", False)]
    writer.finalize()
    assert written == [0, 1] and [e["task_id"] for e in writer.episodes] == [0, 1]
    first, second = (e["length"] for e in writer.episodes)
    assert first > 40 and second == 4


def test_policy_folder_round_trip(tmp_path):
    import torch

    from peft_ckt.libero.policies import StateMLPPolicy, load_policy

    torch.manual_seed(0)
    policy = StateMLPPolicy(hidden_dim=16, chunk_size=3, n_action_steps=2)
    policy.save_pretrained(tmp_path / "policy")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "policy").iterdir()}
    loaded = load_policy(tmp_path / "policy")
    assert type(loaded) is StateMLPPolicy and loaded.n_action_steps == 2
    obs = {"observation.state": np.linspace(-1, 1, 8, dtype=np.float32), "task": "x"}
    expected = policy.predict_action_chunk(obs)
    loaded.reset()
    np.testing.assert_allclose(loaded.select_action(obs), expected[0], rtol=1e-5)
    np.testing.assert_allclose(loaded.select_action(obs), expected[1], rtol=1e-5)  # from the queued chunk
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_policy(tmp_path / "missing")


def _check_outputs(out, episodes: int) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert len(results["episodes"]) == episodes
    for row in results["episodes"]:
        assert {"task", "init_index", "perturbation", "success", "steps"} <= set(row)
    summary = results["summary"]
    assert {"success_rate", "by_task", "by_perturbation", "libero_plus"} <= set(summary)
    table = (out / "results.md").read_text()
    assert "| Camera | Robot | Language | Light | Background | Noise | Layout | Total |" in table
    assert (out / "success_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return results


def test_eval_libero_cli_scripted(tmp_path):
    from peft_ckt.commands import main

    out = tmp_path / "eval"
    code = main(
        ["eval-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "1", "--policy", "scripted",
         "--perturbation", "none", "--workers", "0", "--output", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    results = _check_outputs(out, 1)
    episode = results["episodes"][0]
    assert episode["success"] is True and 0 < episode["steps"] < 280 and episode["task_id"] == 0
    assert results["summary"]["success_rate"] == 1.0 and results["summary"]["by_perturbation"]["none"]["episodes"] == 1


def test_eval_libero_cli_policy_folder_under_perturbation(tmp_path):
    from peft_ckt.commands import main
    from peft_ckt.libero.policies import StateMLPPolicy

    StateMLPPolicy(hidden_dim=8).save_pretrained(tmp_path / "policy")
    out = tmp_path / "eval"
    code = main(
        ["eval-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "1", "--policy", str(tmp_path / "policy"),
         "--perturbation", "camera", "--max-steps", "5", "--workers", "0", "--image-size", "32", "--video",
         "--output", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    results = _check_outputs(out, 1)
    assert results["episodes"][0]["steps"] == 5 and results["episodes"][0]["success"] is False
    assert results["summary"]["libero_plus"]["Camera"] == 0.0 and results["summary"]["libero_plus"]["Original"] is None
    videos = list((out / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 500
    import imageio.v2 as imageio

    with imageio.get_reader(str(videos[0]), format="ffmpeg") as reader:
        frames = [f for f in reader]
    assert len(frames) == 6 and frames[0].shape == (32, 32, 3)  # 5 steps + the final frame


def test_eval_libero_n_action_steps_overrides_the_policys_own(tmp_path):
    from dataclasses import replace

    from peft_ckt.commands import main
    from peft_ckt.libero.evaluation import EpisodeJob, run_episode
    from peft_ckt.libero.policies import StateMLPPolicy
    from peft_ckt.libero.workers import state

    StateMLPPolicy(hidden_dim=8, chunk_size=4, n_action_steps=4).save_pretrained(tmp_path / "policy")
    for steps in (None, 1):
        out = tmp_path / f"eval-{steps}"
        flag = [] if steps is None else ["--n-action-steps", str(steps)]
        code = main(
            ["eval-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "1", "--policy",
             str(tmp_path / "policy"), "--max-steps", "3", "--workers", "0", "--output", str(out), "--no-progress",
             *flag]
        )  # fmt: skip
        assert code == 0
        config = json.loads((out / "eval_config.json").read_text())
        assert config.get("n_action_steps") == steps  # part of what a --resume must match
    # The episode's policy plays the override; the same folder without one is the policy's own setting again.
    job = EpisodeJob("libero_object", 0, 0, "none", 3, str(tmp_path / "policy"), 32, 0, 2, None, n_action_steps=1)
    try:
        for override, expected in ((1, 1), (None, 4)):
            assert run_episode(replace(job, n_action_steps=override)).steps == 2
            policy = state._POLICY_CACHE["policy"]
            assert isinstance(policy, StateMLPPolicy) and policy.n_action_steps == expected
    finally:
        state.close_cached()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--perturbation", "fog"], "Unknown perturbation 'fog'"),
        (["--tasks", "12"], "libero_object has tasks 0..9"),
        (["--policy", "no/such/folder"], "policy folder with config.json"),
        (["--init-offset", "49", "--episodes", "2"], "50 init states per task"),
        (["--episodes", "51"], "50 init states per task"),
        (["--n-action-steps", "0"], "--n-action-steps must be >= 1"),
    ],
)
def test_eval_libero_cli_rejects_bad_arguments(tmp_path, args, message):
    from peft_ckt.commands import main

    with pytest.raises(SystemExit, match=message):
        main(["eval-libero", "--suite", "libero_object", "--output", str(tmp_path / "out"), *args])
    assert not (tmp_path / "out").exists()  # nothing written before the arguments are valid


@pytest.mark.parametrize("command", ["eval-libero", "collect-libero"])
def test_output_folder_that_cannot_be_created_is_one_clear_line(tmp_path, command):
    from peft_ckt.commands import main

    (tmp_path / "file").write_text("x")
    for output, reason in ((tmp_path / "file" / "out", "is a file"), ("/proc/out", "not writable")):
        with pytest.raises(SystemExit, match=f"{command}: error: cannot create the output folder .*{reason}"):
            main([command, "--suite", "libero_object", "--output", str(output)])
