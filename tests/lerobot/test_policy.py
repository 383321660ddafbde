"""The `ckt` and `ckt_wam` LeRobot policy types, end to end with LeRobot's own commands, offline:
collect-libero -> lerobot-train (teacher WAM, student WAM, CKT between them) -> lerobot-eval on LIBERO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("libero")

BIN = Path(sys.executable).parent
TRAIN = [str(BIN / "lerobot-train"), "--policy.device=cpu", "--policy.push_to_hub=false", "--num_workers=0",
         "--eval_freq=0", "--log_freq=1", "--wandb.enable=false", "--batch_size=4"]  # fmt: skip
# LeRobot's LIBERO env names the wrist camera `image2`; the collected datasets `wrist_image`.
RENAME = '--rename_map={"observation.images.image2": "observation.images.wrist_image"}'


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_LEROBOT_HOME": str(cwd / "home")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A collected dataset; a teacher (Wan) and a student (Cosmos) `ckt_wam`; a `ckt` adapter between them."""
    root = tmp_path_factory.mktemp("lerobot")
    demos = root / "demos"
    _run([str(BIN / "peft-ckt"), "collect-libero", "--suite", "libero_object", "--tasks", "0,1", "--episodes", "1",
          "--max-steps", "24", "--keep-failures", "--image-size", "32", "--workers", "0", "--output", str(demos),
          "--no-progress"], root)  # fmt: skip
    data = ["--dataset.repo_id=local/demos", f"--dataset.root={demos}"]
    out = {"demos": demos}
    for name, backbone in (("teacher", "wan"), ("student", "cosmos")):
        _run([*TRAIN, *data, "--policy.type=ckt_wam", f"--policy.backbone={backbone}", "--steps=2", "--save_freq=2",
              f"--output_dir={root / name}"], root)  # fmt: skip
        out[name] = root / name / "checkpoints" / "last" / "pretrained_model"
    log = _run([*TRAIN, *data, "--policy.type=ckt", f"--policy.student_path={out['student']}",
                f"--policy.teacher_path={out['teacher']}", "--policy.teacher_layer=backbone.blocks.1", "--steps=3",
                "--save_freq=3", f"--output_dir={root / 'ckt'}"], root)  # fmt: skip
    assert "step:3" in log
    out["ckt"] = root / "ckt" / "checkpoints" / "last" / "pretrained_model"
    out["root"] = root
    return out


def test_saved_ckt_policy_holds_the_adapter_and_the_references(trained):
    folder = trained["ckt"]
    assert {"config.json", "adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "model.safetensors").exists()  # neither student nor teacher weights are copied
    config = json.loads((folder / "config.json").read_text())
    assert config["type"] == "ckt" and config["student_path"] == str(trained["student"])
    assert config["teacher_layer"] == "backbone.blocks.1" and config["num_experts"] == 4
    from safetensors.torch import load_file

    assert all(key.startswith("base_model.model.ckt") for key in load_file(folder / "adapter_model.safetensors"))


def test_reloaded_ckt_policy_computes_the_context_once_per_chunk_and_it_changes_the_actions(trained):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from peft_ckt.integrations.lerobot.modeling_ckt import CKTPolicy

    policy = CKTPolicy.from_pretrained(trained["ckt"])
    item = LeRobotDataset("local/demos", root=trained["demos"])[5]
    batch = {k: (v[None] if isinstance(v, torch.Tensor) else [v]) for k, v in item.items() if k.startswith("obs")}
    batch["task"] = [item["task"]]
    calls = []
    extract = policy.model.base_model.extract_teacher_features
    policy.model.base_model.extract_teacher_features = lambda *a, **k: calls.append(1) or extract(*a, **k)
    torch.manual_seed(0)
    first = policy.select_action(batch)
    for _ in range(policy.config.n_action_steps - 1):
        policy.select_action(batch)
    assert len(calls) == 1  # one chunk: the teacher ran once for all its steps and denoising steps
    policy.select_action(batch)
    assert len(calls) == 2
    torch.manual_seed(0)
    with_ckt = policy.predict_action_chunk(batch)
    torch.manual_seed(0)
    with policy.model.disable_adapter():
        alone = policy.model.predict_action_chunk(batch)
    assert first.shape == (1, 7) and with_ckt.shape == alone.shape == (1, 16, 7)
    assert not torch.allclose(with_ckt, alone)
    # The student's own method reached through peft never runs without the context.
    with pytest.raises(RuntimeError, match="without the teacher's context"):
        policy.model.predict_action_chunk(batch)


def test_lerobot_eval_runs_the_ckt_policy_on_libero(trained):
    log = _run([str(BIN / "lerobot-eval"), f"--policy.path={trained['ckt']}", "--policy.device=cpu",
                "--env.type=libero", "--env.task=libero_object", "--env.task_ids=[0]", "--env.observation_height=32",
                "--env.observation_width=32", "--env.episode_length=12", "--eval.n_episodes=1",
                "--eval.batch_size=1", RENAME, f"--output_dir={trained['root'] / 'eval'}"], trained["root"])  # fmt: skip
    assert "'n_episodes': 1" in log and "End of eval" in log
