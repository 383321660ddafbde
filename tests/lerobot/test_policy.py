"""The `ckt` and `ckt_wam` LeRobot policy types, end to end with LeRobot's own commands, offline:
collect-libero -> lerobot-train (teacher WAM, student WAM, CKT between them) -> lerobot-eval on LIBERO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lerobot_commands import TRAIN, dataset_args, lerobot_eval_on_libero, run_command, train_wam

pytest.importorskip("libero")


@pytest.fixture(scope="module")
def trained(demos, wam_teacher, lerobot_root) -> dict[str, Path]:
    """A student (Cosmos) `ckt_wam` and a `ckt` adapter between it and the (Wan) teacher, both by lerobot-train."""
    out = {"demos": demos, "teacher": wam_teacher, "root": lerobot_root}
    out["student"] = train_wam(demos, "cosmos", lerobot_root / "student")
    log = run_command([*TRAIN, *dataset_args(demos), "--policy.type=ckt", f"--policy.student_path={out['student']}",
                       f"--policy.teacher_path={wam_teacher}", "--policy.teacher_layer=backbone.blocks.1",
                       "--steps=3", "--save_freq=3", f"--output_dir={lerobot_root / 'ckt'}"], lerobot_root)  # fmt: skip
    assert "step:3" in log
    out["ckt"] = lerobot_root / "ckt" / "checkpoints" / "last" / "pretrained_model"
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


def test_lerobot_eval_runs_the_ckt_policy_on_libero_with_the_teachers_context(trained):
    log, probe = lerobot_eval_on_libero(trained["ckt"], trained["root"] / "eval", trained["root"])
    assert "'n_episodes': 1" in log and "End of eval" in log
    # 12 steps, 8 actions per chunk: two chunks, the teacher once per chunk, each chunk changed by the context.
    assert probe == {"chunks": 2, "teacher_calls": 2, "changed": 2}
