"""peft-ckt's LeRobot v3.0 datasets against LeRobot's own reader and writer (LeRobot 0.4.4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

INSTRUCTIONS = ["put the soup in the basket", "open the top drawer"]


def _write_with_peft_ckt(root, episodes=3, length=6, size=16):
    from peft_ckt.libero.dataset import LeRobotDatasetWriter

    rng = np.random.default_rng(0)
    writer = LeRobotDatasetWriter(root, image_size=(size, size))
    for i in range(episodes):
        images = {
            k: [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(length)]
            for k in ("image", "wrist_image")
        }
        states = rng.normal(size=(length, 8)).astype(np.float32)
        actions = rng.uniform(-1, 1, (length, 7)).astype(np.float32)
        writer.add_episode(states, actions, images, task=INSTRUCTIONS[i % 2], extra={"success": i != 1})
    writer.finalize()
    return root


def test_lerobot_reads_a_dataset_written_by_peft_ckt(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    root = _write_with_peft_ckt(tmp_path / "ds")
    meta = LeRobotDatasetMetadata("local/peft-ckt-demo", root=root)
    assert meta.total_episodes == 3 and meta.total_frames == 18 and meta.fps == 20
    assert meta.camera_keys == ["observation.images.image", "observation.images.wrist_image"]
    assert meta.stats["observation.images.image"]["mean"].shape == (3, 1, 1)
    # An action chunk per frame, as policies train on it (delta_timestamps), padded past the episode's end.
    dataset = LeRobotDataset("local/peft-ckt-demo", root=root, delta_timestamps={"action": [t / 20 for t in range(4)]})
    assert len(dataset) == 18 and dataset.num_episodes == 3
    item = dataset[10]  # episode 1, frame 4
    assert item["task"] == INSTRUCTIONS[1] and int(item["episode_index"]) == 1 and int(item["frame_index"]) == 4
    assert item["observation.images.image"].shape == (3, 16, 16) and item["action"].shape == (4, 7)
    assert item["action_is_pad"].tolist() == [False, False, True, True]
    assert [bool(s) for s in meta.episodes["success"]] == [True, False, True]


def test_lerobot_reads_a_collected_libero_dataset(tmp_path):
    pytest.importorskip("libero")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from peft_ckt.commands import main

    out = tmp_path / "demos"
    args = ["collect-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "2", "--max-steps", "6",
            "--keep-failures", "--image-size", "32", "--workers", "0", "--output", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    dataset = LeRobotDataset("local/collected", root=out)
    assert len(dataset) == 12 and dataset.num_episodes == 2
    item = dataset[7]
    assert "alphabet soup" in item["task"] and item["observation.images.wrist_image"].shape == (3, 32, 32)
    assert json.loads((out / "meta" / "info.json").read_text())["codebase_version"] == "v3.0"
    assert "success" in dataset.meta.episodes.column_names


def test_a_dataset_written_by_lerobot_trains_a_wam(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from peft_ckt.libero.dataset import ACTION_NAMES, STATE_NAMES
    from peft_ckt.wam import WorldActionModel
    from peft_ckt.wam.data import ChunkDataset, read_episodes
    from peft_ckt.wam.tokenizer import build_vocabulary
    from peft_ckt.wam.training import train_wam

    size = 16
    features = {
        "observation.state": {"dtype": "float32", "shape": (8,), "names": STATE_NAMES},
        "observation.images.image": {"dtype": "image", "shape": (size, size, 3), "names": ["height", "width", "channel"]},
        "observation.images.wrist_image": {"dtype": "image", "shape": (size, size, 3), "names": ["height", "width", "channel"]},
        "action": {"dtype": "float32", "shape": (7,), "names": ACTION_NAMES},
    }  # fmt: skip
    dataset = LeRobotDataset.create(
        "local/by-lerobot", fps=20, root=tmp_path / "ds", features=features, use_videos=False
    )
    rng = np.random.default_rng(0)
    for episode in range(2):
        for _ in range(20):
            dataset.add_frame(
                {
                    "observation.state": rng.normal(size=8).astype(np.float32),
                    "observation.images.image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                    "observation.images.wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                    "action": rng.uniform(-1, 1, 7).astype(np.float32),
                    "task": INSTRUCTIONS[episode],
                }
            )
        dataset.save_episode()
    dataset.finalize()

    episodes = read_episodes(tmp_path / "ds")
    assert [e["task"] for e in episodes] == INSTRUCTIONS and episodes[0]["image"].shape == (20, size, size, 3)
    chunks = ChunkDataset(episodes, chunk_size=16)
    wam = WorldActionModel(
        vocabulary=build_vocabulary(INSTRUCTIONS), image_size=size, pixel_block=4, chunk_size=16,
        num_attention_heads=2, attention_head_dim=16, text_dim=16, **chunks.statistics(),
    )  # fmt: skip
    result = train_wam(wam, wam, chunks, steps=3, batch_size=4, progress=False)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert torch.isfinite(next(wam.parameters())).all()
