"""Which image size an evaluation renders at: the policy's own by default on both benchmarks, an explicit one when
given, and the official LIBERO-Plus sensor noise at any size (applied at the benchmark's size, then resized)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from peft_ckt.libero.liberoplus import liberoplus_import_error
from peft_ckt.libero.runtime import libero_import_error

needs_libero = pytest.mark.skipif(libero_import_error() is not None, reason=f"libero extra: {libero_import_error()}")
needs_liberoplus = pytest.mark.skipif(
    libero_import_error() is not None or liberoplus_import_error() is not None,
    reason=f"official LIBERO-Plus not installed: {libero_import_error() or liberoplus_import_error()}",
)


def _noise_task(kind: int):
    """The first official libero_object Noise task of a noise kind (the wheel's `noise // 10`: 3 fog, 4 glass)."""
    from peft_ckt.libero.liberoplus import list_official_tasks

    for task in list_official_tasks("libero_object"):
        if task.dimension == "noise" and (int(task.name.rsplit("_", 1)[1]) - 1) // 10 == kind:
            return task
    raise AssertionError(f"no noise task of kind {kind}")


def test_saved_image_size_reads_policy_and_adapter_folders(tmp_path):
    from peft_ckt.libero.episode import choose_image_size
    from peft_ckt.libero.policies import saved_image_size

    policy, base, adapter, other = (tmp_path / name for name in ("policy", "base", "adapter", "other"))
    for folder, config in ((policy, {"type": "cnn", "image_size": 32}), (base, {"type": "wam", "image_size": 16})):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"type": "state_mlp", "hidden_dim": 8}))
    assert saved_image_size(policy) == 32 and saved_image_size(adapter) == 16
    assert saved_image_size(other) is None and saved_image_size("scripted") is None
    assert choose_image_size(None, str(policy), 128).as_dict() == {
        "pixels": 32,
        "source": "policy",
        "policy_pixels": 32,
    }
    assert (
        choose_image_size(None, str(other), 256).describe()
        == "256 px (the benchmark's default; the policy names no size)"
    )
    assert choose_image_size(64, str(policy), 128).describe() == "64 px (requested; the policy's own is 32 px)"
    with pytest.raises(ValueError, match="image_size must be a positive number of pixels"):
        choose_image_size(0, str(policy), 128)


@pytest.mark.libero
@needs_liberoplus
@pytest.mark.parametrize("size", [32, 128, 256])
def test_official_noise_at_any_image_size(size):
    """Fog (a 256 x 256 map) and glass blur (pixels swapped up to row 223) work at any size, seeded per episode, and
    a recorded frame does not change what the policy sees."""
    from peft_ckt.libero.liberoplus import make_env

    tasks = [_noise_task(3)] + ([_noise_task(4)] if size == 32 else [])  # glass blur costs ~3 s a frame
    for task in tasks:
        env = make_env(task, image_size=size, cameras=("image",), render_images=False)
        try:
            env.reset()
            noisy = env.render("image")
            assert noisy.shape == (size, size, 3) and noisy.dtype == np.uint8
            noise, env._noise = env._noise, 0
            clean = env.render("image")
            env._noise = noise
            assert np.abs(noisy.astype(int) - clean).mean() > 3.0, task.name
            env.reset()
            recorded = env.render("image", for_record=True)
            assert recorded.shape == (size, size, 3)
            assert np.array_equal(env.render("image"), noisy)  # the same episode: the same noise for the policy
        finally:
            env.close()


def _frames(video: str) -> list[np.ndarray]:
    import imageio.v2 as imageio

    with imageio.get_reader(video, format="ffmpeg") as reader:
        return [np.asarray(frame) for frame in reader]


@pytest.mark.libero
@needs_liberoplus
@pytest.mark.parametrize("size", [32, 256])
def test_official_noise_tasks_record_videos(tmp_path, size):
    from peft_ckt.commands import main

    out = tmp_path / "plus"
    argv = [
        "eval-libero", "--benchmark", "libero-plus", "--suite", "libero_object", "--policy", "scripted",
        "--dimensions", "noise", "--limit-per-dimension", "1", "--max-steps", "2", "--image-size", str(size),
        "--video", "--workers", "0", "--no-progress", "--output", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    [episode] = results["episodes"]
    assert "error" not in episode and episode["dimension"] == "noise" and episode["steps"] == 2
    frames = _frames(episode["video"])
    assert len(frames) == 3 and frames[0].shape == (size, size, 3)  # 2 steps and the final frame
    assert results["config"]["image_size"] == size
    assert results["summary"]["image_size"] == {"pixels": size, "source": "requested", "policy_pixels": None}


def _policy_at_32(folder: Path) -> Path:
    import torch

    from peft_ckt.libero import list_tasks
    from peft_ckt.libero.policies.cnn import CNNPolicy

    torch.manual_seed(0)
    instructions = [task.language for task in list_tasks("libero_object")[:2]]
    CNNPolicy(
        instructions, image_size=32, chunk_size=4, n_action_steps=4, feature_dim=16, hidden_dim=32
    ).save_pretrained(folder)
    return folder


@pytest.mark.libero
@needs_libero
def test_both_benchmarks_default_to_the_policys_image_size(tmp_path, capsys):
    from peft_ckt.commands import main

    policy = _policy_at_32(tmp_path / "policy")
    common = ["--policy", str(policy), "--max-steps", "2", "--workers", "0", "--no-progress"]
    out = tmp_path / "eval"
    argv = ["eval-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "1", *common]
    assert main([*argv, "--output", str(out)]) == 0
    assert "32 px (the policy's own)" in capsys.readouterr().out
    assert json.loads((out / "eval_config.json").read_text())["image_size"] == 32
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["image_size"] == {"pixels": 32, "source": "policy", "policy_pixels": 32}

    # An explicit size that differs is honoured (the CNN resizes what it gets) and reported as such.
    assert main([*argv, "--image-size", "48", "--video", "--output", str(tmp_path / "eval48")]) == 0
    assert "48 px (requested; the policy's own is 32 px)" in capsys.readouterr().out
    results = json.loads((tmp_path / "eval48" / "results.json").read_text())
    [episode] = results["episodes"]
    assert results["config"]["image_size"] == 48 and "error" not in episode
    assert _frames(episode["video"])[0].shape == (48, 48, 3)

    if liberoplus_import_error() is None:
        plus = tmp_path / "plus"
        assert (
            main(
                [
                    "eval-libero",
                    "--benchmark",
                    "libero-plus",
                    "--suite",
                    "libero_object",
                    "--dimensions",
                    "noise",
                    "--limit-per-dimension",
                    "1",
                    *common,
                    "--output",
                    str(plus),
                ]
            )  # fmt: skip
            == 0
        )
        assert "32 px (the policy's own)" in capsys.readouterr().out
        results = json.loads((plus / "results.json").read_text())
        assert results["config"]["image_size"] == 32 and "error" not in results["episodes"][0]
        assert results["summary"]["image_size"]["source"] == "policy"
